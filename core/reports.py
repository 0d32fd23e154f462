"""Ablation reports: which choices change test Dice, by how much, and how sure we are.

Reads run records (`config.yaml`, `summary.json`, `metrics.csv`, `test_per_image.csv`) found
below one or more folders, groups them into arms (config without seed), compares each factor
level with its baseline at the seed level and the test-image level, and writes `report.md`
with PNG figures. Everything is deterministic: the same records give byte-identical output.
"""
from __future__ import annotations

import csv
import itertools
import json
import math
import os
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import yaml

from core import stats
from core.errors import SegsweepError
from core.spec import flatten, parse_override

STATUSES = ("completed", "diverged", "failed", "interrupted", "pruned")
# Outcomes of an arm: they enter the means and comparisons. The other statuses are accidents
# of the infrastructure (crash, kill, sweep pruning) and are only counted.
COUNTED_STATUSES = ("completed", "diverged")
# Config keys that never change what is trained or how it is scored: not factors, not arms.
IGNORED_KEYS = (
    "name", "seed", "data.cache", "data.cache_dir", "data.num_workers", "data.download",
    "train.threads", "train.eval_batch_size", "train.predictions_every",
    "checkpoint.keep_best", "checkpoint.save_last",
)
IGNORED_PREFIXES = ("tracking.",)
METRICS_COLUMNS = ("epoch", "val/dice")
MAX_CURVE_LEVELS = 8  # more levels than this (e.g. a continuous random-search factor): no curves


class ReportError(SegsweepError):
    """Run records cannot be found or read, or the report was asked for something they lack."""


# --------------------------------------------------------------------------- run records


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
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportError(f"{summary_path}: unparseable summary: {exc}") from None
    if not isinstance(summary, dict):
        raise ReportError(f"{summary_path}: unparseable summary: expected a JSON object, got {type(summary).__name__}")
    status = summary.get("status")
    if status not in STATUSES:
        raise ReportError(f"{summary_path}: status {status!r} is not one of {', '.join(STATUSES)}")
    for key in ("test/dice", "test/dice_global", "val/dice", "best_epoch", "epochs_run", "wall_s"):
        value = summary.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ReportError(f"{summary_path}: {key}: expected a number or null, got {value!r}")

    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise ReportError(f"{config_path}: missing; every run folder needs its resolved spec")
    try:
        tree = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ReportError(f"{config_path}: unparseable config: {str(exc).splitlines()[0]}") from None
    if not isinstance(tree, dict):
        raise ReportError(f"{config_path}: unparseable config: expected a mapping of sections")
    config = flatten(tree)
    seed = config.get("seed", summary.get("seed"))
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ReportError(f"{config_path}: seed: expected an integer, got {seed!r}")

    record = RunRecord(
        run_dir=run_dir, config=config, summary=summary,
        curve=_read_curve(run_dir / "metrics.csv"),
        per_image=_read_per_image(run_dir / "test_per_image.csv"),
        seed=seed, status=status, test_dice=math.nan, test_dice_global=math.nan,
        val_dice=math.nan, imputed=False,
    )
    return _apply_outcome_rule(record, summary_path)


def _apply_outcome_rule(run: RunRecord, summary_path: Path) -> RunRecord:
    test, glob, val = run.number("test/dice"), run.number("test/dice_global"), run.number("val/dice")
    if run.status == "completed":
        if not math.isfinite(test):
            raise ReportError(f"{summary_path}: status completed but test/dice is {run.summary.get('test/dice')!r}")
        return replace(run, test_dice=test, test_dice_global=glob, val_dice=val)
    if run.status == "diverged":
        imputed = not math.isfinite(test)
        return replace(
            run,
            test_dice=0.0 if imputed else test,
            test_dice_global=0.0 if imputed or not math.isfinite(glob) else glob,
            val_dice=val if math.isfinite(val) else 0.0,
            imputed=imputed,
        )
    return run


def load_runs(paths: Sequence[str | Path]) -> list[RunRecord]:
    """All run records below `paths`, in sorted folder order."""
    return [load_run(d) for d in find_run_dirs(paths)]


# --------------------------------------------------------------------------- arms and factors


def _ignored(key: str) -> bool:
    return key in IGNORED_KEYS or key.startswith(IGNORED_PREFIXES)


def _freeze(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


def level_key(value: Any) -> tuple:
    """Sort key for factor levels of mixed types: null, booleans, numbers, strings, others."""
    if value is None:
        return (0, 0.0, "")
    if isinstance(value, bool):
        return (1, float(value), "")
    if isinstance(value, int | float):
        return (2, float(value), "")
    if isinstance(value, str):
        return (3, 0.0, value)
    return (4, 0.0, json.dumps(value, default=str))


def format_level(value: Any) -> str:
    """A level as YAML would write it: true/false, null, 0.0001, he_normal."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return "[" + ", ".join(format_level(v) for v in value) + "]"
    return str(value)


def _same_level(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)
    return a == b


@dataclass(frozen=True)
class Arm:
    """Runs that share a config apart from seed (and the ignored keys)."""

    id: str  # "A1", "A2", ... in sorted order of factor levels
    levels: dict[str, Any]  # factor -> level
    config: dict[str, Any]  # relevant flattened config
    runs: tuple[RunRecord, ...]  # every run of the arm, sorted by seed then folder
    by_seed: dict[int, RunRecord]  # the counted run per seed (latest folder if repeated)

    def label(self) -> str:
        return ", ".join(f"{k}={format_level(v)}" for k, v in self.levels.items()) or "(single arm)"


@dataclass(frozen=True)
class Factor:
    key: str
    levels: tuple[Any, ...]  # sorted with `level_key`
    baseline: Any
    chosen_by: str  # "--baseline" or "most arms"


@dataclass(frozen=True)
class Study:
    runs: tuple[RunRecord, ...]
    arms: tuple[Arm, ...]
    factors: tuple[Factor, ...]
    design: str  # "single arm" | "one factor" | "one-factor-at-a-time" | "full factorial" | "other"
    baseline_arm: Arm | None
    common: dict[str, Any]  # relevant config keys equal in every arm
    duplicates: tuple[RunRecord, ...]  # counted runs superseded by a later run of the same arm and seed

    def factor(self, key: str) -> Factor:
        return next(f for f in self.factors if f.key == key)


def parse_baseline(texts: Iterable[str]) -> dict[str, Any]:
    """['model.init=pytorch', ...] -> {'model.init': 'pytorch'} with YAML-typed values."""
    out: dict[str, Any] = {}
    for text in texts:
        try:
            key, value = parse_override(text)
        except SegsweepError as exc:
            raise ReportError(f"--baseline: {exc}") from None
        out[key] = _freeze(value)
    return out


def group_arms(runs: Sequence[RunRecord], baseline: Mapping[str, Any] | None = None) -> Study:
    """Group runs into arms, find the factors, their baselines and the design."""
    if not runs:
        raise ReportError("no runs to group into arms")
    baseline = dict(baseline or {})
    groups: dict[str, list[RunRecord]] = defaultdict(list)
    configs: dict[str, dict[str, Any]] = {}
    for run in runs:
        relevant = {k: _freeze(v) for k, v in run.config.items() if not _ignored(k)}
        key = json.dumps(relevant, sort_keys=True, default=str)
        groups[key].append(run)
        configs[key] = relevant
    all_keys = sorted(set().union(*(c.keys() for c in configs.values())))
    varying = [k for k in all_keys if len({json.dumps(c.get(k), default=str) for c in configs.values()}) > 1]

    factors: list[Factor] = []
    for key in varying:
        per_arm = [c.get(key) for c in configs.values()]
        levels: list[Any] = []
        for value in sorted(per_arm, key=level_key):
            if not any(_same_level(value, seen) for seen in levels):
                levels.append(value)
        counts = [sum(_same_level(v, level) for v in per_arm) for level in levels]
        if key in baseline:
            match = [lv for lv in levels if _same_level(lv, baseline[key])]
            if not match:
                raise ReportError(
                    f"--baseline {key}={format_level(baseline[key])}: not a level of {key}; "
                    f"levels: {', '.join(format_level(v) for v in levels)}"
                )
            factors.append(Factor(key, tuple(levels), match[0], "--baseline"))
        else:
            factors.append(Factor(key, tuple(levels), levels[counts.index(max(counts))], "most arms"))
    unknown = sorted(set(baseline) - set(varying))
    if unknown:
        raise ReportError(
            f"--baseline {unknown[0]}: not a factor of these runs; factors: {', '.join(varying) or 'none (one arm)'}"
        )

    def canonical(value: Any, factor: Factor) -> Any:
        return next(lv for lv in factor.levels if _same_level(lv, value))

    order = sorted(
        groups,
        key=lambda k: tuple(level_key(canonical(configs[k].get(f.key), f)) for f in factors),
    )
    arms: list[Arm] = []
    duplicates: list[RunRecord] = []
    for i, key in enumerate(order):
        members = tuple(sorted(groups[key], key=lambda r: (r.seed, r.run_dir.name, str(r.run_dir))))
        by_seed: dict[int, RunRecord] = {}
        for run in members:
            if run.counted:
                if run.seed in by_seed:
                    duplicates.append(by_seed[run.seed])
                by_seed[run.seed] = run
        levels = {f.key: canonical(configs[key].get(f.key), f) for f in factors}
        arms.append(Arm(f"A{i + 1}", levels, configs[key], members, by_seed))

    base_levels = {f.key: f.baseline for f in factors}
    baseline_arm = next((a for a in arms if _differs(a.levels, base_levels) == []), None)
    n_cells = math.prod(len(f.levels) for f in factors)
    if not factors:
        design = "single arm"
    elif len(factors) == 1:
        design = "one factor"
    elif len(arms) == n_cells:
        design = "full factorial"
    elif baseline_arm is not None and all(len(_differs(a.levels, base_levels)) <= 1 for a in arms):
        design = "one-factor-at-a-time"
    else:
        design = "other"
    common = {k: v for k, v in configs[order[0]].items() if k not in varying}
    return Study(tuple(runs), tuple(arms), tuple(factors), design, baseline_arm, common, tuple(duplicates))


def _differs(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    return [k for k in a if not _same_level(a[k], b[k])]


def _slices(study: Study, keys: Sequence[str]) -> dict[tuple, dict[tuple, Arm]]:
    """Arms grouped by the levels of every factor not in `keys`: other-levels -> {keys-levels: arm}."""
    out: dict[tuple, dict[tuple, Arm]] = defaultdict(dict)
    for arm in study.arms:
        rest = tuple((k, arm.levels[k]) for k in arm.levels if k not in keys)
        out[rest][tuple(arm.levels[k] for k in keys)] = arm
    return dict(out)


def matched_pairs(study: Study, factor: str, level: Any) -> list[tuple[Arm, Arm]]:
    """(arm at `level`, arm at the baseline level) for every pair of arms differing only in
    `factor`. Full factorial: one pair per combination of the other factors (a marginal
    effect); one-factor-at-a-time: the single pair with the baseline arm."""
    base = study.factor(factor).baseline
    pairs = []
    for _, cells in sorted(_slices(study, [factor]).items(), key=lambda kv: _slice_key(kv[0])):
        treated = next((a for lv, a in cells.items() if _same_level(lv[0], level)), None)
        control = next((a for lv, a in cells.items() if _same_level(lv[0], base)), None)
        if treated is not None and control is not None:
            pairs.append((treated, control))
    return pairs


def _slice_key(rest: tuple) -> tuple:
    return tuple((k, level_key(v)) for k, v in rest)


# --------------------------------------------------------------------------- contrasts


@dataclass(frozen=True)
class Contrast:
    """A weighted sum of arms evaluated on the seeds every arm has (and images every run has)."""

    seeds: tuple[int, ...]
    seed_values: tuple[float, ...]  # contrast of test/dice per seed
    global_values: tuple[float, ...]  # contrast of test/dice_global per seed
    image_ids: tuple[str, ...]
    image_values: tuple[float, ...]  # per image, contrast averaged over seeds; () if unavailable


def contrast(terms: Sequence[tuple[float, Arm]]) -> Contrast:
    """Evaluate sum(weight * arm) per seed and per (seed, image), pairing by seed and image."""
    seeds = sorted(set.intersection(*(set(arm.by_seed) for _, arm in terms)))
    seed_values = [sum(w * arm.by_seed[s].test_dice for w, arm in terms) for s in seeds]
    global_values = [sum(w * arm.by_seed[s].test_dice_global for w, arm in terms) for s in seeds]
    runs = [(w, arm.by_seed[s]) for s in seeds for w, arm in terms]
    recorded = [r.per_image for _, r in runs if r.per_image is not None]
    usable = seeds and recorded and all(r.per_image is not None or r.imputed for _, r in runs)
    image_ids: list[str] = sorted(set.intersection(*(set(p) for p in recorded))) if usable else []
    image_values: list[float] = []
    if image_ids:
        matrix = np.zeros((len(seeds), len(image_ids)))  # (seeds, images)
        for row, s in enumerate(seeds):
            for w, arm in terms:
                run = arm.by_seed[s]
                if run.per_image is not None:
                    matrix[row] += w * np.array([run.per_image[i] for i in image_ids])
                # an imputed diverged run scores 0 on every image: adds nothing
        image_values = matrix.mean(axis=0).tolist()
    return Contrast(tuple(seeds), tuple(seed_values), tuple(global_values), tuple(image_ids), tuple(image_values))


@dataclass(frozen=True)
class Evidence:
    """Inference on one contrast at one level of replication."""

    unit: str  # "seeds" (t CI, paired t) or "images" (bootstrap CI, Wilcoxon)
    n: int
    mean: float
    ci: tuple[float, float]  # 95%
    p: float  # two-sided test of no difference
    p_tost: float  # equivalence within +-margin (paired t TOST)
    p_holm: float = math.nan
    p_tost_holm: float = math.nan


def seed_evidence(values: Sequence[float], margin: float) -> Evidence:
    """Training seeds as the replicates: paired t (exact for normal differences at any n;
    Wilcoxon cannot reach p < 0.05 with fewer than 6 seeds), t interval, t TOST."""
    test = stats.paired_t(values)
    return Evidence("seeds", test.n, test.mean, stats.t_interval(values), test.p, stats.tost_t(values, margin))


def image_evidence(values: Sequence[float], margin: float, resamples: int, seed: int) -> Evidence:
    """Test images as the replicates (models held fixed): each value is one image's
    difference averaged over seeds. Bootstrap over images, Wilcoxon signed-rank, t TOST."""
    mean = float(np.mean(values)) if len(values) else math.nan
    ci = stats.bootstrap_ci(values, resamples=resamples, seed=seed)
    return Evidence("images", len(values), mean, ci, stats.wilcoxon(values), stats.tost_t(values, margin))


@dataclass(frozen=True)
class Effect:
    """One factor level against the factor's baseline level."""

    factor: str
    level: Any
    baseline: Any
    pairs: int  # matched arm pairs averaged over
    contrast: Contrast
    by_seed: Evidence
    by_image: Evidence | None
    verdict: str = ""

    @property
    def label(self) -> str:
        return f"{self.factor}: {format_level(self.level)} vs {format_level(self.baseline)}"


def verdict(by_seed: Evidence, by_image: Evidence | None, alpha: float, margin: float) -> str:
    """"equivalent" when every available level's Holm-adjusted TOST p < alpha (it wins: a
    detectable difference inside the margin does not matter); "better"/"worse" when every
    level's Holm-adjusted p < alpha with its CI excluding 0 on the same side; else
    "inconclusive". Fewer than 2 seeds is always inconclusive (seed luck cannot be ruled out)."""
    if by_seed.n < 2:
        return "inconclusive"
    levels = [by_seed] + ([by_image] if by_image is not None and by_image.n >= 2 else [])
    if all(e.p_tost_holm < alpha for e in levels):
        return f"equivalent (within ±{margin:g})"
    if all(e.p_holm < alpha and e.ci[0] > 0 for e in levels):
        return "better"
    if all(e.p_holm < alpha and e.ci[1] < 0 for e in levels):
        return "worse"
    return "inconclusive"


def compute_effects(
    study: Study, margin: float = 0.005, alpha: float = 0.05, resamples: int = 10_000, seed: int = 0
) -> tuple[list[Effect], list[str]]:
    """Every non-baseline level of every factor against its baseline, with Holm-adjusted p
    (one family per test: seed t, image Wilcoxon, seed TOST, image TOST, over all comparisons).
    Also returns the comparisons that could not be made, with the reason."""
    effects: list[Effect] = []
    skipped: list[str] = []
    for factor in study.factors:
        others = [lv for lv in factor.levels if not _same_level(lv, factor.baseline)]
        if not any(matched_pairs(study, factor.key, lv) for lv in others):
            skipped.append(f"{factor.key} ({len(factor.levels)} levels): no two arms differ only in this factor")
            continue
        for level in others:
            name = f"{factor.key}: {format_level(level)} vs {format_level(factor.baseline)}"
            pairs = matched_pairs(study, factor.key, level)
            if not pairs:
                skipped.append(f"{name}: no two arms differ only in {factor.key}")
                continue
            k = len(pairs)
            terms = [(w / k, arm) for treated, control in pairs for w, arm in ((1.0, treated), (-1.0, control))]
            c = contrast(terms)
            if not c.seeds:
                skipped.append(f"{name}: no seed has a counted run in every arm involved")
                continue
            by_image = image_evidence(c.image_values, margin, resamples, seed) if c.image_values else None
            by_seed = seed_evidence(c.seed_values, margin)
            effects.append(Effect(factor.key, level, factor.baseline, k, c, by_seed, by_image))

    def adjust(get: str, set_: str, unit: str) -> None:
        owners = [(i, getattr(e, unit)) for i, e in enumerate(effects) if getattr(e, unit) is not None]
        adjusted = stats.holm([getattr(ev, get) for _, ev in owners])
        for (i, ev), p in zip(owners, adjusted):
            effects[i] = replace(effects[i], **{unit: replace(ev, **{set_: p})})

    for unit in ("by_seed", "by_image"):
        adjust("p", "p_holm", unit)
        adjust("p_tost", "p_tost_holm", unit)
    effects = [replace(e, verdict=verdict(e.by_seed, e.by_image, alpha, margin)) for e in effects]
    return effects, skipped


# --------------------------------------------------------------------------- interactions


@dataclass(frozen=True)
class Interaction:
    """Difference of differences for two factors at non-baseline levels (l, m):
    (y[l, m] - y[b, m]) - (y[l, b'] - y[b, b']), averaged over the crossed slices."""

    factors: tuple[str, str]
    levels: tuple[Any, Any]
    baselines: tuple[Any, Any]
    slices: int
    contrast: Contrast
    by_seed: Evidence
    by_image: Evidence | None


@dataclass(frozen=True)
class TwoWay:
    """Mean test Dice for every level pair of two factors, over the crossed slices."""

    factors: tuple[str, str]
    levels: tuple[tuple[Any, ...], tuple[Any, ...]]
    means: dict[tuple[Any, Any], float]
    slices: int
    interactions: tuple[Interaction, ...] = field(default=())


def compute_interactions(
    study: Study, margin: float = 0.005, resamples: int = 10_000, seed: int = 0
) -> list[TwoWay]:
    """For each pair of factors crossed in full in at least one slice of the other factors
    (every slice, in a full factorial): the two-way table and each interaction estimate."""
    tables: list[TwoWay] = []
    for fa, fb in itertools.combinations(study.factors, 2):
        full = [
            cells for rest, cells in sorted(_slices(study, [fa.key, fb.key]).items(), key=lambda kv: _slice_key(kv[0]))
            if len(cells) == len(fa.levels) * len(fb.levels)
        ]
        if not full:
            continue

        def arm_at(cells: dict[tuple, Arm], la: Any, lb: Any) -> Arm:
            return next(a for lv, a in cells.items() if _same_level(lv[0], la) and _same_level(lv[1], lb))

        means = {}
        for la, lb in itertools.product(fa.levels, fb.levels):
            values = [np.mean([r.test_dice for r in arm_at(c, la, lb).by_seed.values()] or [math.nan]) for c in full]
            means[(la, lb)] = float(np.mean(values))
        k = len(full)
        found = []
        for la, lb in itertools.product(fa.levels, fb.levels):
            if _same_level(la, fa.baseline) or _same_level(lb, fb.baseline):
                continue
            terms = []
            for cells in full:
                terms += [
                    (1 / k, arm_at(cells, la, lb)), (-1 / k, arm_at(cells, fa.baseline, lb)),
                    (-1 / k, arm_at(cells, la, fb.baseline)), (1 / k, arm_at(cells, fa.baseline, fb.baseline)),
                ]
            c = contrast(terms)
            if not c.seeds:
                continue
            by_image = image_evidence(c.image_values, margin, resamples, seed) if c.image_values else None
            found.append(Interaction((fa.key, fb.key), (la, lb), (fa.baseline, fb.baseline), k, c,
                                     seed_evidence(c.seed_values, margin), by_image))
        tables.append(TwoWay((fa.key, fb.key), (fa.levels, fb.levels), means, k, tuple(found)))
    return tables


# --------------------------------------------------------------------------- arms table


@dataclass(frozen=True)
class ArmSummary:
    arm: Arm
    n: int  # counted seeds
    val: tuple[float, float]  # mean, sd
    test: tuple[float, float]
    test_ci: tuple[float, float]  # 95% t interval
    test_global: float
    best_epoch: float
    epochs_run: float
    wall_s: float
    diverged: int
    imputed: int
    excluded: dict[str, int]  # status -> count of runs not counted


def summarize_arm(arm: Arm) -> ArmSummary:
    counted = [arm.by_seed[s] for s in sorted(arm.by_seed)]
    tests = [r.test_dice for r in counted]
    excluded = Counter(r.status for r in arm.runs if not r.counted)

    def mean_of(values: Iterable[float]) -> float:
        finite = [v for v in values if math.isfinite(v)]
        return float(np.mean(finite)) if finite else math.nan

    return ArmSummary(
        arm=arm, n=len(counted),
        val=stats.mean_sd([r.val_dice for r in counted]),
        test=stats.mean_sd(tests), test_ci=stats.t_interval(tests),
        test_global=mean_of(r.test_dice_global for r in counted),
        best_epoch=mean_of(r.number("best_epoch") for r in counted),
        epochs_run=mean_of(r.number("epochs_run") for r in counted),
        wall_s=mean_of(r.number("wall_s") for r in counted),
        diverged=sum(r.status == "diverged" for r in counted),
        imputed=sum(r.imputed for r in counted),
        excluded=dict(sorted(excluded.items())),
    )


# --------------------------------------------------------------------------- figures


def _save(fig: Any, path: Path) -> None:
    # No "Software" text chunk: the PNG bytes depend only on the pixels.
    fig.savefig(path, dpi=100, metadata={"Software": None})


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)  # Agg without pyplot: no global backend switch
    return fig


def _default_style() -> Any:
    """matplotlib's default rcParams for the duration (restored afterwards), so figures do not
    depend on a user's matplotlibrc or on styles set by earlier plots (Optuna sets ggplot)."""
    import matplotlib.style

    return matplotlib.style.context("default")


def plot_test_dice(summaries: Sequence[ArmSummary], path: Path, baseline_arm: Arm | None) -> None:
    """Box plot of test Dice per arm with every counted run as a point (x = diverged)."""
    fig = _new_figure(max(5.0, 0.7 * len(summaries) + 2), 4.0)
    ax = fig.subplots()
    positions = list(range(1, len(summaries) + 1))
    data = [[s.arm.by_seed[k].test_dice for k in sorted(s.arm.by_seed)] or [math.nan] for s in summaries]
    ax.boxplot(data, positions=positions, widths=0.5, showfliers=False)
    for pos, s in zip(positions, summaries):
        runs = [s.arm.by_seed[k] for k in sorted(s.arm.by_seed)]
        offsets = np.linspace(-0.15, 0.15, len(runs)) if len(runs) > 1 else [0.0]
        for off, run in zip(offsets, runs):
            diverged = run.status == "diverged"
            ax.scatter(pos + off, run.test_dice, s=28, marker="x" if diverged else "o",
                       color="tab:red" if diverged else "tab:blue", zorder=3)
    labels = [s.arm.id + (" (base)" if baseline_arm is not None and s.arm is baseline_arm else "") for s in summaries]
    ax.set_xticks(positions, labels, rotation=45 if len(summaries) > 8 else 0)
    ax.set_ylabel("test Dice (mean per image)")
    ax.set_title("Test Dice per arm (points: seeds; x: diverged)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


def level_curves(study: Study, factor: Factor) -> dict[Any, tuple[np.ndarray, np.ndarray, np.ndarray, int]]:
    """level -> (epochs, mean, sd, n seeds) of val/dice over the arms in this factor's
    comparisons: per seed the curve is averaged over those arms, then mean and sd across seeds."""
    involved: dict[str, Arm] = {}
    for level in factor.levels:
        if _same_level(level, factor.baseline):
            continue
        for treated, control in matched_pairs(study, factor.key, level):
            involved[treated.id], involved[control.id] = treated, control
    out = {}
    for level in factor.levels:
        arms = [a for a in involved.values() if _same_level(a.levels[factor.key], level)]
        per_seed: dict[int, list[dict[int, float]]] = defaultdict(list)
        for arm in arms:
            for s, run in arm.by_seed.items():
                if run.curve.get("epoch"):
                    per_seed[s].append(dict(zip((int(e) for e in run.curve["epoch"]), run.curve["val/dice"])))
        if not per_seed:
            continue
        epochs = np.array(sorted(set().union(*(c.keys() for cs in per_seed.values() for c in cs))))
        seed_rows = []
        for s in sorted(per_seed):
            grid = np.array([[c.get(int(e), math.nan) for e in epochs] for c in per_seed[s]])  # (arms, epochs)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                seed_rows.append(np.nanmean(grid, axis=0))
        rows = np.array(seed_rows)  # (seeds, epochs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(rows, axis=0)
            sd = np.nanstd(rows, axis=0, ddof=1) if len(rows) > 1 else np.zeros_like(mean)
        out[level] = (epochs, mean, np.nan_to_num(sd), len(rows))
    return out


def plot_curves(study: Study, factor: Factor, path: Path) -> bool:
    """val/dice against epoch per level of `factor` (mean line, band = +-1 sd across seeds)."""
    curves = level_curves(study, factor)
    if not curves:
        return False
    fig = _new_figure(6.0, 4.0)
    ax = fig.subplots()
    for i, (level, (epochs, mean, sd, n)) in enumerate(curves.items()):
        color = f"C{i % 10}"
        base = " (baseline)" if _same_level(level, factor.baseline) else ""
        ax.plot(epochs, mean, color=color, label=f"{format_level(level)}{base}, {n} seeds")
        ax.fill_between(epochs, mean - sd, mean + sd, color=color, alpha=0.2, linewidth=0)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("val/dice")
    ax.set_title(f"val/dice by {factor.key} (band: ±1 sd across seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    return True


def load_optuna_study(sweep_dir: Path, sweep: Mapping[str, Any]) -> tuple[Any, str]:
    """The sweep's Optuna study (journal.log in the sweep folder, or sweep.yaml optuna.storage),
    or (None, why not)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    opt = sweep.get("optuna") if isinstance(sweep.get("optuna"), Mapping) else {}
    setting = opt.get("storage") if isinstance(opt.get("storage"), str) else None
    journal = sweep_dir / "journal.log"
    if journal.is_file():
        storage: Any = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
        where = "journal.log"
    elif setting and "://" in setting:
        from core.sweeps import resolve_rdb_url

        storage, where = resolve_rdb_url(setting), setting
    elif setting and (Path(setting).is_file() or (sweep_dir / setting).is_file()):
        path = Path(setting) if Path(setting).is_file() else sweep_dir / setting  # as given, or beside sweep.yaml
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
        where = setting
    else:
        return None, "no Optuna storage found (no journal.log in the sweep folder, no optuna.storage in sweep.yaml)"
    try:
        names = sorted(optuna.get_all_study_names(storage))
    except Exception as exc:  # any storage problem is a note in the report, not a failure
        return None, f"Optuna storage {where} could not be opened: {type(exc).__name__}: {exc}"
    if not names:
        return None, f"Optuna storage {where} holds no study"
    wanted = [opt.get("study_name"), sweep.get("name"), sweep_dir.name]
    name = next((n for n in wanted if n in names), names[0])
    return optuna.load_study(study_name=name, storage=storage), f"study {name!r} in {where}"


def completed_trials(study: Any) -> list[Any]:
    import optuna

    return [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]


def importance_evaluator() -> tuple[Any, str]:
    """(Optuna importance evaluator, its description): Optuna's default, fANOVA, needs
    scikit-learn; PED-ANOVA needs nothing extra."""
    import optuna

    try:
        import sklearn  # noqa: F401
    except ImportError:
        return optuna.importance.PedAnovaImportanceEvaluator(), "PED-ANOVA (scikit-learn is not installed, so not fANOVA)"
    return optuna.importance.FanovaImportanceEvaluator(seed=0), "fANOVA (seed 0)"


def plot_optuna(study: Any, out: Path) -> tuple[list[str], list[str]]:
    """Parameter importances (fANOVA with seed 0, or PED-ANOVA without scikit-learn) and
    parallel coordinates of the completed trials; returns (files written, notes)."""
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    files, notes = [], []
    complete = completed_trials(study)
    if len(complete) < 2:
        return files, [f"Optuna study has {len(complete)} completed trial(s); need 2 for importances"]
    evaluator, how = importance_evaluator()
    notes.append(f"Parameter importances by {how}, over {len(complete)} completed trials.")
    plots = (
        ("optuna_importances.png", lambda: ovm.plot_param_importances(study, evaluator=evaluator)),
        ("optuna_parallel_coordinate.png", lambda: ovm.plot_parallel_coordinate(study)),
    )
    for filename, draw in plots:
        before = set(plt.get_fignums())
        with warnings.catch_warnings(), _default_style():
            warnings.simplefilter("ignore")
            try:
                ax = draw()
                fig = (ax.flat[0] if isinstance(ax, np.ndarray) else ax).figure
                fig.set_size_inches(7, 4.5)
                fig.tight_layout()
                _save(fig, out / filename)
                files.append(filename)
            except Exception as exc:  # e.g. a single parameter, or all values equal
                notes.append(f"{filename}: Optuna could not draw it: {type(exc).__name__}: {exc}")
            finally:
                for number in set(plt.get_fignums()) - before:
                    plt.close(number)
    return files, notes


# --------------------------------------------------------------------------- markdown


def _f(x: float, digits: int = 4) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _d(x: float) -> str:
    return "—" if not math.isfinite(x) else f"{x:+.4f}"


def _pm(mean_sd: tuple[float, float]) -> str:
    mean, sd = mean_sd
    return _f(mean) if not math.isfinite(sd) else f"{_f(mean)} ± {_f(sd)}"


def _ci(ci: tuple[float, float]) -> str:
    return "—" if not all(math.isfinite(v) for v in ci) else f"[{ci[0]:+.4f}, {ci[1]:+.4f}]"


def _p(p: float) -> str:
    if not math.isfinite(p):
        return "—"
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def _levels_text(levels: Sequence[Any]) -> str:
    if len(levels) > MAX_CURVE_LEVELS:
        return f"{len(levels)} levels, {format_level(levels[0])} … {format_level(levels[-1])}"
    return ", ".join(format_level(v) for v in levels)


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(esc, row)) + " |" for row in rows]
    return lines + [""]


def _rel(path: Path, start: Path) -> str:
    try:
        return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()
    except ValueError:  # another drive on Windows
        return path.as_posix()


def _distinct(values: Iterable[Any]) -> list[str]:
    return sorted({str(v) for v in values if v not in (None, "")})


@dataclass(frozen=True)
class ReportOptions:
    margin: float = 0.005  # equivalence margin in Dice
    alpha: float = 0.05
    resamples: int = 10_000  # bootstrap resamples
    seed: int = 0  # bootstrap seed


def honesty_lines(study: Study, summaries: Sequence[ArmSummary], sweep: Mapping[str, Any]) -> list[str]:
    """Checks on the records that the claims in the report rest on."""
    counted = [r for a in study.arms for r in a.by_seed.values()]
    lines = ["## Honesty and method", ""]

    # Checkpoint selection on validation; test evaluated once, on that checkpoint.
    mismatched, peeked, no_curve = [], [], 0
    for run in counted:
        epochs, val = run.curve.get("epoch", ()), np.array(run.curve.get("val/dice", ()), dtype=float)
        if any(col.startswith("test/") for col in run.curve):
            peeked.append(run)
        if not len(val) or not np.isfinite(val).any():
            no_curve += 1
            continue
        best = int(epochs[int(np.nanargmax(val))])
        if run.number("best_epoch") != best:
            recorded = format_level(run.summary.get("best_epoch"))
            mismatched.append(f"{run.run_dir.name} (best_epoch {recorded}, val/dice peaks at {best})")
    if mismatched:
        check = f"**{len(mismatched)} run(s) whose `best_epoch` is not the val/dice peak**: {', '.join(mismatched)}"
    else:
        check = (f"in all {len(counted) - no_curve} runs with a val curve, `best_epoch` is the epoch of the "
                 "highest val/dice")
    lines.append(
        "- **Model selection on validation only.** Each run's checkpoint was chosen by val/dice and the test "
        f"split was evaluated once, on that checkpoint (trainer contract); check: {check}."
    )
    lines.append(
        "- **Test split not used per epoch:** " + (
            "no `metrics.csv` has a `test/*` column." if not peeked
            else f"**{len(peeked)} run(s) log test metrics per epoch** ({', '.join(r.run_dir.name for r in peeked)}): "
                 "if those were used to choose anything, the test numbers are optimistic."
        )
    )

    # Budgets.
    budget_rows = []
    for s in summaries:
        cfg = s.arm.config
        budget_rows.append((
            s.arm.id, format_level(cfg.get("train.epochs")), format_level(cfg.get("train.time_budget_s")),
            format_level(cfg.get("train.early_stopping_patience")), _f(s.epochs_run, 1), _f(s.wall_s, 1),
        ))
    notes = []
    for col, what in ((1, "configured epochs"), (2, "time budgets"), (3, "early-stopping patience"), (4, "epochs run")):
        distinct = sorted({row[col] for row in budget_rows})
        if len(distinct) > 1:
            notes.append(f"{what} differ across arms ({', '.join(distinct)})")
    walls = [s.wall_s for s in summaries if math.isfinite(s.wall_s)]
    ratio = ""
    if walls and min(walls) > 0:
        ratio = f"; mean wall time ranges {min(walls):.1f}–{max(walls):.1f} s (max/min {max(walls) / min(walls):.2f})"
    lines.append(
        "- **Budgets:** " + ("equal across arms (same configured epochs, time budget, early stopping and epochs run)"
                             if not notes else "**not equal**: " + "; ".join(notes)) + ratio + "."
    )
    if notes:
        header = ["arm", "train.epochs", "train.time_budget_s", "early stopping", "epochs run (mean)", "wall s (mean)"]
        lines += [""] + _table(header, budget_rows)

    # Seeds.
    expected = sweep.get("seeds") if isinstance(sweep.get("seeds"), list) else None
    all_seeds = sorted(set(expected or []) | {s for a in study.arms for s in a.by_seed})
    short = [f"{a.id} lacks seed(s) {', '.join(map(str, sorted(set(all_seeds) - set(a.by_seed))))}"
             for a in study.arms if set(a.by_seed) != set(all_seeds)]
    lines.append(
        f"- **Seeds:** {', '.join(map(str, all_seeds))}" + (" in every arm" if not short else "; " + "; ".join(short) +
        " (comparisons use only seeds present in every arm involved)") + "."
    )

    # Dice definition and its consistency with the per-image file.
    inconsistent = []
    for run in counted:
        if run.per_image and not run.imputed:
            mean = float(np.mean(list(run.per_image.values())))
            if abs(mean - run.test_dice) > 1e-4:
                inconsistent.append(f"{run.run_dir.name} ({mean:.4f} vs {run.test_dice:.4f})")
    lines.append(
        "- **Dice:** `test/dice` is the mean over test images of per-image Dice at threshold 0.5 (an image with "
        "empty mask and empty prediction scores 1; ignored pixels skipped); `test/dice_global` (Dice of the pixel "
        "counts pooled over the test set) is shown beside it in the arms table. "
        + ("Per-image files agree with `test/dice` in every run that has one." if not inconsistent
           else f"**Per-image files disagree with `test/dice`** in {', '.join(inconsistent)}.")
    )
    lines.append(
        "- **Diverged and failed runs:** a diverged run (NaN) is an outcome of its arm: it counts in every mean and "
        "comparison with the test Dice the trainer recorded for its best-on-validation checkpoint, or 0 on every "
        "test image when none was recorded. Failed, interrupted and pruned runs are not outcomes of the arm "
        "(crash, kill, sweep pruning): they are shown in the counts and left out of means and comparisons."
        + (f" {len(study.duplicates)} counted run(s) were repeated for the same arm and seed; "
           "the latest folder is used."
           if study.duplicates else "")
    )

    # Provenance.
    prov = []
    for key, label in (("git_sha", "git"), ("device", "device"), ("precision", "precision")):
        values = _distinct(r.summary.get(key) for r in counted)
        if values:
            prov.append(f"{label} {', '.join(values)}" + (" (**mixed**)" if len(values) > 1 else ""))
    versions = [r.summary.get("versions") for r in counted]
    torch_versions = _distinct(v.get("torch") for v in versions if isinstance(v, dict))
    if torch_versions:
        prov.append(f"torch {', '.join(torch_versions)}" + (" (**mixed**)" if len(torch_versions) > 1 else ""))
    if prov:
        lines.append(f"- **Provenance:** {'; '.join(prov)}.")
    return lines + [""]


def render_report(
    study: Study,
    effects: Sequence[Effect],
    skipped: Sequence[str],
    tables: Sequence[TwoWay],
    summaries: Sequence[ArmSummary],
    figures: Mapping[str, Any],
    sweep: Mapping[str, Any],
    sources: Sequence[str],
    options: ReportOptions,
    title: str = "",
) -> str:
    """The whole report.md as text (figures are referenced by file name, beside it)."""
    title = sweep.get("name") if isinstance(sweep.get("name"), str) else title
    n_excluded = sum(not r.counted for r in study.runs)
    lines = [f"# Ablation report: {title}", ""]
    metric = sweep.get("metric") if isinstance(sweep.get("metric"), Mapping) else {}
    lines += [
        f"- Sources: {', '.join(f'`{s}`' for s in sources)}",
        f"- Runs: {len(study.runs)} ({len(study.runs) - n_excluded} counted, {n_excluded} not counted) in "
        f"{len(study.arms)} arm(s); design: **{study.design}**"
        + (f"; sweep method `{sweep['method']}`" if sweep.get("method") else "")
        + (f", sweep metric `{metric.get('name')}` ({metric.get('goal', 'maximize')})" if metric.get("name") else ""),
        f"- Outcome: test Dice (mean per-image Dice at 0.5) of each run's best-on-validation checkpoint. "
        f"Equivalence margin ±{options.margin:g} Dice, α = {options.alpha:g}, "
        f"bootstrap {options.resamples} resamples (seed {options.seed}).",
        "",
    ]

    if effects:
        lines += ["## Findings", ""]
        for e in effects:
            image = f", images {_ci(e.by_image.ci)}" if e.by_image else ""
            lines.append(f"- **{e.label}** → **{e.verdict}**: Δ test Dice {_d(e.by_seed.mean)} "
                         f"(95% CI seeds {_ci(e.by_seed.ci)}{image}; {e.by_seed.n} seeds)")
        lines.append("")

    if study.factors:
        lines += ["## Factors", ""]
        lines += _table(
            ["factor", "levels", "baseline", "baseline chosen by"],
            [(f.key, _levels_text(f.levels), format_level(f.baseline),
              "`--baseline`" if f.chosen_by == "--baseline" else "most arms (ties: first in sorted order)")
             for f in study.factors],
        )
        if study.baseline_arm is None:
            lines += ["No arm has every factor at its baseline level.", ""]

    lines += ["## Arms", ""]
    header = ["arm", *[f.key for f in study.factors], "n", "val/dice", "test/dice", "test 95% CI (t)",
              "test/dice_global", "best epoch", "diverged", "not counted", "wall s"]
    rows = []
    for s in summaries:
        mark = " (base)" if s.arm is study.baseline_arm else ""
        not_counted = ", ".join(f"{n} {st}" for st, n in s.excluded.items()) or "0"
        div = str(s.diverged) + (f" ({s.imputed} scored 0)" if s.imputed else "")
        ci = "—" if not all(math.isfinite(v) for v in s.test_ci) else f"[{s.test_ci[0]:.4f}, {s.test_ci[1]:.4f}]"
        rows.append((
            s.arm.id + mark, *[format_level(s.arm.levels[f.key]) for f in study.factors], str(s.n), _pm(s.val),
            _pm(s.test), ci, _f(s.test_global), _f(s.best_epoch, 1), div, not_counted, _f(s.wall_s, 1),
        ))
    lines += _table(header, rows)
    lines += ["val/dice is each run's best validation Dice; ± is the sd across seeds; n counts seeds with a completed "
              "or diverged run.", ""]
    if "test_dice" in figures:
        lines += [f"![Test Dice per arm]({figures['test_dice']})", ""]

    if study.factors and not effects:
        lines += ["## Effects against the baseline", "", "No comparison could be made:", ""]
        lines += [f"- {s}" for s in skipped] + [""]
    elif study.factors:
        lines += ["## Effects against the baseline", ""]
        lines += [
            "Each comparison is the change in test Dice from the baseline level, averaged over every pair of arms "
            "that differ only in that factor (the *pairs* column: in a full factorial this is the marginal effect "
            "over the other factors; one-factor-at-a-time: the single pair with the baseline arm), paired by seed "
            "and by test image. *seeds up* counts the seeds where the level beat the baseline.",
            "",
            "- **Seed level** (replicates: training runs; test set held fixed): the per-seed differences, 95% CI "
            "from the t distribution, paired t-test. A bootstrap over 3–5 seeds can take only 10–126 distinct "
            "values and is too narrow; a Wilcoxon test cannot reach p < 0.05 with fewer than 6 seeds.",
            "- **Image level** (replicates: test images; trained models held fixed): per image, the difference "
            "averaged over seeds (so no image counts more than once), 95% percentile bootstrap CI resampling "
            f"test images ({options.resamples} resamples, seed {options.seed}), Wilcoxon signed-rank test "
            "(Pratt's zero handling).",
            f"- **Equivalence:** two one-sided paired t-tests (TOST) at each level against ±{options.margin:g}.",
            "- **Holm:** p-values are Holm-adjusted over all comparisons in this table, separately for each of the "
            "four tests.",
            f"- **Verdict:** *equivalent* when TOST is significant (adjusted p < {options.alpha:g}) at every level "
            "available (it takes precedence: a difference smaller than the margin is declared not to matter); "
            "*better* / *worse* when the difference test is significant at every level and each CI excludes 0 on "
            "that side; otherwise *inconclusive*. A claim must therefore hold across training seeds and across test "
            "images; one seed is always inconclusive. The CIs shown are not adjusted, so a comparison whose CI "
            "excludes 0 can still be inconclusive after Holm.",
            "",
        ]
        rows = []
        for e in effects:
            img = e.by_image
            rows.append((
                e.label, str(e.pairs), str(e.by_seed.n),
                f"{sum(v > 0 for v in e.contrast.seed_values)}/{len(e.contrast.seed_values)}",
                _d(e.by_seed.mean), _ci(e.by_seed.ci), _p(e.by_seed.p_holm),
                str(img.n) if img else "—", _d(img.mean) if img else "—", _ci(img.ci) if img else "—",
                _p(img.p_holm) if img else "—",
                _p(e.by_seed.p_tost_holm) + (f" / {_p(img.p_tost_holm)}" if img else ""),
                _d(float(np.mean(e.contrast.global_values))), e.verdict,
            ))
        lines += _table(
            ["comparison", "pairs", "seeds", "seeds up", "Δ test Dice", "95% CI (t, seeds)", "p t (Holm)",
             "images", "Δ per image", "95% CI (bootstrap, images)", "p Wilcoxon (Holm)",
             "TOST p (Holm) seeds / images", "Δ test/dice_global", "verdict"],
            rows,
        )
        if skipped:
            lines += ["Not compared:", ""] + [f"- {s}" for s in skipped] + [""]

    if tables:
        lines += ["## Interactions", ""]
        lines += ["For each pair of factors crossed in full (in every slice of the other factors, for a full "
                  "factorial), the mean test Dice per level pair over those slices, and the interaction "
                  "(Δ of the first factor at the second factor's level) − (Δ of the first factor at the second "
                  "factor's baseline), with the same two levels of inference as the effects (no Holm, no verdict).", ""]
        for t in tables:
            fa, fb = t.factors
            lines += [f"### {fa} × {fb}", "", f"Mean test Dice over {t.slices} slice(s):", ""]
            header = [f"{fa} \\ {fb}", *[format_level(v) for v in t.levels[1]]]
            cells = [(format_level(la), *[_f(t.means[(la, lb)]) for lb in t.levels[1]]) for la in t.levels[0]]
            lines += _table(header, cells)
            rows = [(f"{fa}={format_level(i.levels[0])} × {fb}={format_level(i.levels[1])}", str(i.by_seed.n),
                     _d(i.by_seed.mean), _ci(i.by_seed.ci),
                     _ci(i.by_image.ci) if i.by_image else "—") for i in t.interactions]
            if rows:
                lines += _table(["interaction (vs baselines)", "seeds", "estimate", "95% CI (t, seeds)",
                                 "95% CI (bootstrap, images)"], rows)

    if study.factors:
        lines += ["## Validation curves", ""]
        for f in study.factors:
            name = figures.get("curves", {}).get(f.key)
            if name:
                lines += [f"![val/dice by {f.key}]({name})", ""]
            else:
                why = figures.get("curve_notes", {}).get(f.key, "no curves")
                lines += [f"- {f.key}: {why}", ""]

    method = sweep.get("method")
    if method and method != "grid":
        lines += ["## Optuna study", ""]
        if figures.get("optuna_note"):
            lines += [figures["optuna_note"], ""]
        for name in figures.get("optuna", []):
            lines += [f"![{name}]({name})", ""]
        lines += [f"- {n}" for n in figures.get("optuna_notes", [])] + ([""] if figures.get("optuna_notes") else [])

    lines += honesty_lines(study, summaries, sweep)

    lines += ["## Runs", "", "<details><summary>Every run folder</summary>", ""]
    run_rows = []
    for a in study.arms:
        for r in a.runs:
            used = "counted" if a.by_seed.get(r.seed) is r else ("superseded" if r.counted else "not counted")
            run_rows.append((
                a.id, str(r.seed), r.status, used, _f(r.test_dice), format_level(r.summary.get("epochs_run")),
                f"`{r.run_dir.parent.name}/{r.run_dir.name}`", str(r.summary.get("error") or "")[:80],
            ))
    lines += _table(["arm", "seed", "status", "used", "test/dice", "epochs", "run", "error"], run_rows)
    lines += ["</details>", "", "<details><summary>Settings shared by every arm</summary>", "", "```yaml"]
    lines += [f"{k}: {json.dumps(v, default=str)}" for k, v in sorted(study.common.items())]
    lines += ["```", "", "</details>", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- entry point


def read_sweep_spec(sweep_dir: Path) -> dict[str, Any]:
    """The resolved `sweep.yaml` in `sweep_dir`, or {} when there is none."""
    path = sweep_dir / "sweep.yaml"
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ReportError(f"{path}: unparseable sweep spec: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ReportError(f"{path}: unparseable sweep spec: expected a mapping")
    return data


def write_report(
    paths: Sequence[str | Path],
    out: str | Path | None = None,
    baseline: Mapping[str, Any] | Sequence[str] = (),
    options: ReportOptions = ReportOptions(),
) -> Path:
    """Analyse the runs below `paths` and write `report.md` plus PNGs into `out`
    (default: the first path). Returns the report's path. Everything is read and analysed
    before anything is written."""
    if not paths:
        raise ReportError("no sweep or run folder given")
    first = Path(paths[0])
    out_dir = Path(out) if out is not None else (first if first.is_dir() else first.parent)
    if not (isinstance(options.margin, float | int) and options.margin > 0):
        raise ReportError(f"--margin: expected a positive Dice difference, got {options.margin!r}")
    base = dict(baseline) if isinstance(baseline, Mapping) else parse_baseline(baseline)
    runs = load_runs(paths)
    sweep = read_sweep_spec(first) if first.is_dir() else {}
    study = group_arms(runs, base)
    effects, skipped = compute_effects(study, options.margin, options.alpha, options.resamples, options.seed)
    tables = compute_interactions(study, options.margin, options.resamples, options.seed)
    summaries = [summarize_arm(a) for a in study.arms]

    out_dir.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Any] = {"curves": {}, "curve_notes": {}}
    with _default_style():
        plot_test_dice(summaries, out_dir / "test_dice_by_arm.png", study.baseline_arm)
        figures["test_dice"] = "test_dice_by_arm.png"
        for f in study.factors:
            if len(f.levels) > MAX_CURVE_LEVELS:
                figures["curve_notes"][f.key] = f"{len(f.levels)} levels: too many for curves (see the Optuna plots)"
            elif plot_curves(study, f, out_dir / f"curves_{f.key}.png"):
                figures["curves"][f.key] = f"curves_{f.key}.png"
            else:
                figures["curve_notes"][f.key] = "no comparison uses this factor, or no run has a metrics.csv"
    method = sweep.get("method")
    if method and method != "grid" and first.is_dir():
        optuna_study, note = load_optuna_study(first, sweep)
        figures["optuna_note"] = f"Source: {note}." if optuna_study is not None else f"Skipped: {note}."
        if optuna_study is not None:
            figures["optuna"], figures["optuna_notes"] = plot_optuna(optuna_study, out_dir)

    sources = [_rel(Path(p), out_dir) for p in paths]
    title = Path(paths[0]).resolve().name
    text = render_report(study, effects, skipped, tables, summaries, figures, sweep, sources, options, title)
    report = out_dir / "report.md"
    tmp = out_dir / ".report.md.tmp"
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(report)
    return report
