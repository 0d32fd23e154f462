"""Run records: find run folders, read each one's files, apply the outcome rule.

Also reads the resolved `sweep.yaml` a sweep folder holds beside its runs. Any unusable file
raises `ReportError` naming it. The outcome rule (`outcome`) is the one every analysis applies,
to a run folder's summary.json here and to a sweep trial's recorded summary in adaptive rounds.
"""
from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Collection, Mapping, Sequence

import yaml

from ..errors import SegsweepError
from ..schema import COUNTED_STATUSES, STATUSES
from ..spec import arm_hash, flatten, set_dotted, spec_from_dict

METRICS_COLUMNS = ("epoch", "val/dice")  # the metrics.csv columns a report needs


class ReportError(SegsweepError):
    """Run records cannot be found or read, or the report was asked for something they lack."""


@dataclass(frozen=True)
class RunRecord:
    """One run folder as read from disk, with the outcome rule applied.

    A diverged run is an outcome of its arm: it counts with the test Dice the trainer recorded
    (its best-on-val checkpoint) when that is finite, else with 0 on every test image (a model
    that outputs NaN segments nothing). `imputed` marks the second case.
    """

    run_dir: Path
    config: dict[str, Any]  # flattened resolved spec
    summary: dict[str, Any]
    curve: dict[str, tuple[float, ...]]  # metrics.csv column -> values per epoch row
    per_image: dict[str, float] | None  # image_id -> Dice, from test_per_image.csv
    seed: int
    status: str
    test_dice: float  # outcome rule applied; nan for runs that are not counted
    test_dice_global: float
    val_dice: float
    imputed: bool

    @property
    def counted(self) -> bool:
        return self.status in COUNTED_STATUSES

    def number(self, key: str) -> float:
        value = self.summary.get(key)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def find_run_dirs(paths: Sequence[str | Path]) -> list[Path]:
    """Every folder holding a `summary.json` below `paths` (recursive), sorted, deduplicated."""
    found: dict[Path, Path] = {}
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise ReportError(f"{path}: no such file or folder")
        if path.is_file():
            if path.name != "summary.json":
                raise ReportError(f"{path}: expected a sweep or run folder (or a summary.json)")
            candidates = [path]
        else:
            candidates = sorted(path.rglob("summary.json"))
        for summary in candidates:
            found.setdefault(summary.parent.resolve(), summary.parent)
    if not found:
        where = ", ".join(str(p) for p in paths)
        raise ReportError(f"{where}: no runs found (no summary.json in or below these folders)")
    return [found[key] for key in sorted(found)]


def _float(text: str, where: str) -> float:
    try:
        return float(text) if text.strip() else math.nan
    except ValueError:
        raise ReportError(f"{where}: {text!r} is not a number") from None


def _read_csv(path: Path, required: Sequence[str]) -> tuple[list[dict[str, str]], list[str]]:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            columns = reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ReportError(f"{path}: unreadable CSV: {exc}") from None
    missing = [c for c in required if c not in columns]
    if missing:
        raise ReportError(f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(columns) or 'none'}")
    return rows, list(columns)


def _read_curve(path: Path) -> dict[str, tuple[float, ...]]:
    if not path.is_file():
        return {}
    rows, columns = _read_csv(path, METRICS_COLUMNS)
    return {
        col: tuple(_float(row.get(col) or "", f"{path}: line {i + 2}: {col}") for i, row in enumerate(rows))
        for col in columns
    }


def _read_per_image(path: Path) -> dict[str, float] | None:
    if not path.is_file():
        return None
    per_image: dict[str, float] = {}
    for i, row in enumerate(_read_csv(path, ("image_id", "dice"))[0]):
        image = row["image_id"]
        if image in per_image:
            raise ReportError(f"{path}: line {i + 2}: image_id {image!r} appears twice")
        per_image[image] = _float(row["dice"], f"{path}: line {i + 2}: dice")
    return per_image


def load_run(run_dir: str | Path) -> RunRecord:
    """Read one run folder; any unusable file raises `ReportError` naming it."""
    run_dir = Path(run_dir)
    summary_path = run_dir / "summary.json"
    summary = _read_summary(summary_path)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise ReportError(f"{config_path}: missing; every run folder needs its resolved spec")
    config = flatten(_read_yaml_mapping(config_path, "config", "expected a mapping of sections"))
    seed = config.get("seed", summary.get("seed"))
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ReportError(f"{config_path}: seed: expected an integer, got {seed!r}")

    record = RunRecord(
        run_dir=run_dir, config=config, summary=summary,
        curve=_read_curve(run_dir / "metrics.csv"),
        per_image=_read_per_image(run_dir / "test_per_image.csv"),
        seed=seed, status=summary["status"], test_dice=math.nan, test_dice_global=math.nan,
        val_dice=math.nan, imputed=False,
    )
    return _apply_outcome_rule(record, summary_path)


def _read_summary(summary_path: Path) -> dict[str, Any]:
    """summary.json, checked: a known status and numbers (or null) where numbers belong."""
    summary = _read_mapping(summary_path, "summary", json.loads, json.JSONDecodeError,
                            lambda data: f"expected a JSON object, got {type(data).__name__}")
    status = summary.get("status")
    if status not in STATUSES:
        raise ReportError(f"{summary_path}: status {status!r} is not one of {', '.join(sorted(STATUSES))}")
    for key in ("test/dice", "test/dice_global", "val/dice", "best_epoch", "epochs_run", "wall_s"):
        value = summary.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ReportError(f"{summary_path}: {key}: expected a number or null, got {value!r}")
    return summary


def _read_yaml_mapping(path: Path, what: str, expected: str) -> dict[str, Any]:
    return _read_mapping(path, what, yaml.safe_load, yaml.YAMLError, lambda _: expected)


def _read_mapping(path: Path, what: str, load: Callable[[str], Any], error: type[Exception],
                  expected: Callable[[Any], str]) -> dict[str, Any]:
    """The mapping `load` parses from `path`; anything else is a `ReportError` saying `what` it was."""
    try:
        data = load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, error) as exc:
        raise ReportError(f"{path}: unparseable {what}: {(str(exc).splitlines() or [''])[0]}") from None
    if not isinstance(data, dict):
        raise ReportError(f"{path}: unparseable {what}: {expected(data)}")
    return data


OUTCOME_RULE = (
    "a completed run counts with its test Dice (a run whose checkpoint.floor kept no epoch counts with its last "
    "epoch's, which it tested); a diverged run counts with the test Dice of its best-on-validation checkpoint "
    "when it has one, else 0 (a model that outputs NaN segments nothing); failed, interrupted and pruned runs do "
    "not count (a sweep runs them again)")


def outcome(status: str, test_dice: Any) -> tuple[float | None, bool]:
    """The outcome rule every analysis applies: (the value a run counts with, or None when it does
    not count; whether the value was imputed). See `OUTCOME_RULE`."""
    value = float(test_dice) if isinstance(test_dice, (int, float)) and not isinstance(test_dice, bool) else math.nan
    if status == "completed":
        return (value if math.isfinite(value) else None), False
    if status == "diverged":
        return (value, False) if math.isfinite(value) else (0.0, True)
    return None, False


def _apply_outcome_rule(run: RunRecord, summary_path: Path) -> RunRecord:
    glob, val = run.number("test/dice_global"), run.number("val/dice")
    value, imputed = outcome(run.status, run.summary.get("test/dice"))
    if run.status == "completed":
        if value is None:
            raise ReportError(f"{summary_path}: status completed but test/dice is {run.summary.get('test/dice')!r}")
        return replace(run, test_dice=value, test_dice_global=glob, val_dice=val)
    if run.status == "diverged":
        return replace(
            run,
            test_dice=value,
            test_dice_global=0.0 if imputed or not math.isfinite(glob) else glob,
            val_dice=val if math.isfinite(val) else 0.0,
            imputed=imputed,
        )
    return run


def run_arm_hash(run: RunRecord) -> str | None:
    """The arm hash a run recorded (summary.json), else the one its config.yaml gives."""
    recorded = run.summary.get("arm_hash")
    if isinstance(recorded, str):
        return recorded
    tree: dict[str, Any] = {}
    for key, value in run.config.items():
        set_dotted(tree, key, list(value) if isinstance(value, tuple) else value)
    try:
        return arm_hash(spec_from_dict(tree, str(run.run_dir / "config.yaml")))
    except SegsweepError:
        return None


def load_runs(paths: Sequence[str | Path]) -> list[RunRecord]:
    """All run records below `paths`, in sorted folder order."""
    return [load_run(d) for d in find_run_dirs(paths)]


def read_sweep_spec(sweep_dir: Path) -> dict[str, Any]:
    """The resolved `sweep.yaml` in `sweep_dir`, or {} when there is none."""
    path = sweep_dir / "sweep.yaml"
    if not path.is_file():
        return {}
    return _read_yaml_mapping(path, "sweep spec", "expected a mapping")


# --------------------------------------------------------------------------- which data the runs were scored on

# What decides the images a run is tested (and validated) on: the dataset, where it lives, and
# how its splits are drawn (folder fractions and names, synthetic sizes, the mask target).
# `data.limit_train` only thins the training split, so it may be a factor of a study.
DATA_KEYS = ("data.name", "data.root", "data.val_every", "data.mask")
DATA_PREFIXES = ("data.folder.", "data.synthetic.")


def data_identity(run: RunRecord) -> dict[str, Any]:
    """The config values that define the run's dataset and its splits (paths normalised)."""
    out = {k: v for k, v in run.config.items() if k in DATA_KEYS or k.startswith(DATA_PREFIXES)}
    if isinstance(out.get("data.root"), str):
        out["data.root"] = os.path.normpath(os.path.expanduser(out["data.root"]))
    return out


def check_same_data(runs: Sequence[RunRecord], allow_mixed: bool = False,
                    declared: Collection[str] = ()) -> str | None:
    """None when every run was scored on the same data and splits; else a `ReportError` naming
    the first difference, or with `allow_mixed` that sentence, for the report to carry. Keys in
    `declared` (a sweep's claims marked `target_changes`) may differ: the report compares no Dice
    across them."""
    if not runs:
        return None
    first, reference = runs[0], data_identity(runs[0])
    compared = set(reference) - set(declared)
    for run in runs[1:]:
        other = data_identity(run)
        # A key only one record has is a field added since: its default, not a difference.
        key = next((k for k in sorted(compared & set(other)) if reference[k] != other[k]), None)
        if key is None:
            continue
        note = (f"runs were scored on different data: {key} is {reference.get(key)!r} in {first.run_dir} "
                f"but {other.get(key)!r} in {run.run_dir}, so their test Dice are not comparable")
        if not allow_mixed:
            raise ReportError(f"{note}; report them separately, or pass --allow-mixed-data to compare anyway")
        return note
    return None


def base_experiment(sweep: Mapping[str, Any]) -> dict[str, Any]:
    """The flattened resolved spec of the sweep's base experiment (`experiment_spec` in
    sweep.yaml), or {} for run folders without one."""
    spec = sweep.get("experiment_spec")
    return flatten(spec) if isinstance(spec, Mapping) else {}
