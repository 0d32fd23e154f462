"""What a sweep leaves and shows: trials.csv rebuilt from the storage, the ranked console summary,
the one progress bar of several workers, the disk its trial runs use, and the closing lines."""
from __future__ import annotations

import importlib.util
import logging
import math
import os
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence, TextIO

from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from ..record import atomic_write_text, csv_text
from .cells import Sweep, base_values
from .study import planned_cells, trials_done

log = logging.getLogger(__name__)

TRIAL_COLUMNS = ("seed", "cell", "state", "status", "value", "val/dice", "test/dice", "epochs", "wall_s",
                 "config_hash", "host", "run_dir")


def trial_rows(trials: Sequence[FrozenTrial], sweep: Sweep) -> tuple[list[str], list[dict[str, Any]]]:
    """(columns, rows) of trials.csv: one row per trial, params filled from the base experiment."""
    params: list[str] = []
    for key in [*(k for c in sweep.cells for k in c.overrides), *sweep.searched]:
        if key not in params:
            params.append(key)
    for trial in trials:
        for key in trial.user_attrs.get("overrides") or {}:
            if key not in params:
                params.append(key)
    base = base_values(sweep)
    rows = []
    for t in sorted(trials, key=lambda t: t.number):
        a = t.user_attrs
        overrides = a.get("overrides") or {}
        status = a.get("status")
        if t.state == TrialState.FAIL and status in (None, "running"):
            status = "stale"  # its worker died; a retry (or the next run of the command) takes the cell
        elif t.state in (TrialState.WAITING, TrialState.RUNNING):
            status = t.state.name.lower()
        rows.append({
            "number": t.number, **{k: overrides.get(k, t.params.get(k, base.get(k))) for k in params},
            "seed": a.get("seed"), "cell": a.get("cell"), "state": t.state.name, "status": status,
            "value": t.value if t.state == TrialState.COMPLETE else None, "val/dice": a.get("val/dice"),
            "test/dice": a.get("test/dice"), "epochs": a.get("epochs"), "wall_s": a.get("wall_s"),
            "config_hash": a.get("config_hash"), "host": a.get("host"), "run_dir": a.get("run_dir"),
        })
    return ["number", *params, *TRIAL_COLUMNS], rows


def write_trials_csv(storage: BaseStorage, study_id: int, sweep: Sweep, sweep_dir: Path) -> list[dict[str, Any]]:
    """Rebuild `trials.csv` from the storage (atomically: readers never see half a file)."""
    columns, rows = trial_rows(storage.get_all_trials(study_id, deepcopy=False), sweep)
    text = csv_text(columns, [{k: ("" if v is None else v) for k, v in row.items()} for row in rows])
    atomic_write_text(sweep_dir / "trials.csv", text)
    return rows


def summarize(rows: Sequence[Mapping[str, Any]], sweep: Sweep, top: int = 20) -> list[str]:
    """Console summary: cells ranked by mean val/dice +- std across seeds (completed trials)."""
    cells: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row["cell"] is None or row["status"] == "duplicate":
            continue
        cell = cells.setdefault(row["cell"], {"val": [], "test": [], "other": {}})
        if row["state"] == "COMPLETE" and row["val/dice"] is not None:
            cell["val"].append(float(row["val/dice"]))
            if row["test/dice"] is not None:
                cell["test"].append(float(row["test/dice"]))
        elif row["state"] != "COMPLETE":
            cell["other"][row["status"]] = cell["other"].get(row["status"], 0) + 1
    ranked = sorted(cells.items(), key=lambda kv: -statistics.fmean(kv[1]["val"]) if kv[1]["val"] else math.inf)
    if not ranked:
        return ["no trials yet"]
    width = min(60, max(len(label) for label in cells))
    planned = planned_cells(sweep, {row["config_hash"] for row in rows}) if sweep.method == "grid" else None
    lines = [f"{'':>3} {'cell':<{width}}  val/dice (mean ± std, n)   test/dice"]
    for rank, (label, c) in enumerate(ranked[:top], 1):
        if c["val"]:
            std = statistics.stdev(c["val"]) if len(c["val"]) > 1 else 0.0
            test = f"{statistics.fmean(c['test']):.4f}" if c["test"] else "-"
            seeds = 1 if planned is None else len(planned.get(label, ()))  # adaptive: the seeds queued so far
            score = f"{statistics.fmean(c['val']):.4f} ± {std:.4f}  n={len(c['val'])}/{seeds}"
        else:
            score, test = f"{'-':<24}", "-"
        notes = ", ".join(f"{n} {s}" for s, n in sorted(c["other"].items()))
        lines.append(f"{rank:>3} {label[:width]:<{width}}  {score}   {test}" + (f"   ({notes})" if notes else ""))
    if len(ranked) > top:
        lines.append(f"    ... {len(ranked) - top} more cells in trials.csv")
    return lines


def disk_usage(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total


def human_size(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{size:.1f} GB"


def closing_lines(rows: Sequence[Mapping[str, Any]], sweep: Sweep, sweep_dir: Path, pending: int) -> list[str]:
    """What the command prints when the Optuna engine is done: summary, disk, trials.csv, what is left."""
    lines = summarize(rows, sweep)
    runs = sweep_dir / "runs"
    kept = "kept" if sweep.spec.keep_last else "deleted after each trial"
    lines.append(f"disk used by trial runs: {human_size(disk_usage(runs))} in {runs} (best.pt kept for every trial; "
                 f"last.pt {kept})")
    lines.append(f"trials: {sweep_dir / 'trials.csv'}")
    extra = "" if importlib.util.find_spec("optuna_dashboard") else "  (first: pip install 'segsweep[dashboard]')"
    lines.append(f"dashboard: segsweep dashboard {shlex.quote(str(sweep_dir))}{extra}")
    if pending:
        what = "cell x seed trial(s)" if sweep.method == "grid" else "trial(s) of run_cap"
        lines.append(f"{pending} {what} not done (waiting, failed, interrupted or stale): rerun the same command to "
                     "run them")
    return lines


# --------------------------------------------------------------------------- progress of several workers


class SweepProgress:
    """The one progress bar of a sweep run by several worker processes: trials done of the
    sweep's total, read from the storage (so trials finished by other machines count too).
    Drawn only on a terminal, like every segsweep bar; the workers draw none (`NotATerminal`)."""

    def __init__(self, storage: BaseStorage, study_id: int, sweep: Sweep, enabled: bool) -> None:
        self.storage, self.study_id, self.sweep = storage, study_id, sweep
        self.bar: Any = None
        if enabled:
            from tqdm.auto import tqdm

            done, total = self._counts()
            self.bar = tqdm(total=total, initial=done, desc=f"sweep {sweep.name}", unit="trial", dynamic_ncols=True)

    def _counts(self) -> tuple[int, int]:
        return trials_done(self.storage.get_all_trials(self.study_id, deepcopy=False), self.sweep)

    def update(self) -> None:
        if self.bar is None:
            return
        try:
            self.bar.n = self._counts()[0]
        except Exception as exc:  # a storage hiccup must not stop the driver waiting for its workers
            log.debug(f"progress: cannot read the storage ({exc})")
            return
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.update()
            self.bar.close()


class NotATerminal:
    """A worker's stderr: what it writes still reaches the terminal, but `isatty()` is False, so
    the bars of `fit` and the data cache (drawn only on a terminal) stay off in that process."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def hide_terminal() -> None:
    """Make this process's bars stay off (a worker of several: the driver draws the one bar)."""
    if not isinstance(sys.stderr, NotATerminal):
        sys.stderr = NotATerminal(sys.stderr)  # type: ignore[assignment]
