"""What every sweep engine and launcher shares: the training function a trial calls, the echo of
the command's lines, the outcome a sweep returns, and the tracker and factor levels of a trial.
Engines (`engines.py`), launchers (`launchers.py`), the worker (`worker.py`) and a trial
(`trial.py`) import this module; it imports none of them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .cells import Sweep

FitFn = Callable[..., Any]  # segsweep.train.fit's signature: (spec, run_dir, tracker=, on_epoch_end=) -> RunResult
Echo = Callable[[str], None]


@dataclass(frozen=True)
class SweepOutcome:
    sweep_dir: Path
    rows: list[dict[str, Any]]
    pending: int  # grid cells x seeds not yet held by a trial (a rerun runs them); 0 when done
    exit_code: int  # 0 done, 1 some cells need a rerun, 130 interrupted


def real_fit() -> FitFn:
    """`segsweep.train.fit`, imported when a trial first needs it (it brings torch)."""
    from ..train import fit

    return fit


def trial_tracker(spec: Any, run_dir: Path, sweep: Sweep | None = None) -> Any:
    """The trial's tracker, or None when nothing is tracked (fit then skips prediction grids)."""
    from ..tracking import Tracker, build_tracker

    tracker = build_tracker(spec, run_dir, factor_levels(sweep) if sweep is not None else None)
    return None if type(tracker) is Tracker else tracker


def factor_levels(sweep: Sweep) -> dict[str, list[Any]]:
    """The sweep's factors and their levels, by dotted key: every categorical parameter, every key
    a grid cell sets (the base value where a cell leaves it), the arm (each cell's label, as the
    trial's W&B job_type and TensorBoard HParam `arm`) and the seed."""
    from .cells import base_values, job_type

    levels = {k: list(p.values or ()) for k, p in sweep.searched.items() if p.kind == "categorical"}
    base = base_values(sweep)
    for key in dict.fromkeys(k for cell in sweep.cells for k in cell.overrides):
        bucket = levels.setdefault(key, [])
        for cell in sweep.cells:
            value = cell.overrides.get(key, base.get(key))
            if value not in bucket:
                bucket.append(value)
    if sweep.cells:
        levels["arm"] = [job_type(cell.label) for cell in sweep.cells]
    levels["seed"] = list(sweep.seeds) if sweep.design is None or not sweep.rounds else sorted(
        {r.seed for r in sweep.design.runs_through(sweep.design.rounds_max)})  # bounded: at most 100 rounds
    return levels


@dataclass(frozen=True)
class WorkerPlan:
    """Everything one worker process needs (picklable: workers are started with `spawn`)."""

    sweep: Sweep
    sweep_dir: Path
    storage: str  # RDB URL or journal file path
    fit_fn: FitFn | None = None  # None: segsweep.train.fit
    threads: int | None = None  # torch intra-op threads for this worker; None: torch's default
    worker: int = 0
    show_logs: bool = False  # the driver shows segsweep's log lines (the command): a worker does too
    progress_bars: bool = True  # False: one of several workers, drawing no bars (the driver draws the sweep's)
    resume_interrupted: bool = False  # a signalled trial is queued to resume from its last.pt in its folder
    speed_choices: dict | None = None  # the sweep's `auto` speed settings (optuna_engine.speed_choices)
