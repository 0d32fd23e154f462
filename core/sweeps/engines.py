"""Sweep engines, found by name in `SWEEP_ENGINES`, and `run_sweep`, which loads a sweep file and
hands it to one.

An engine is a function `(sweep, *, workers, storage, results, sweep_id, fit_fn, echo) ->
SweepOutcome`; adding one is a module with that function plus its registration:

    @SWEEP_ENGINES.register("mine")
    def run_mine(sweep, *, workers, storage, results, sweep_id, fit_fn, echo): ...

The built-in engines import their module (and Optuna or W&B) only when they run, so listing the
names (`segsweep sweep --help`) stays light.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..errors import SweepError
from ..registry import Registry
from .cells import Sweep
from .spec import load_sweep

log = logging.getLogger(__name__)

FitFn = Callable[..., Any]  # segsweep.train.fit's signature: (spec, run_dir, tracker=, on_epoch_end=) -> RunResult
Echo = Callable[[str], None]

SWEEP_ENGINES = Registry("sweep engine")


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


@SWEEP_ENGINES.register("optuna")
def run_with_optuna(sweep: Sweep, **options: Any) -> SweepOutcome:
    """Optuna (the default): offline, N worker processes, many machines on one storage."""
    from .optuna_engine import run_optuna_sweep

    return run_optuna_sweep(sweep, **options)


@SWEEP_ENGINES.register("wandb")
def run_with_wandb(sweep: Sweep, **options: Any) -> SweepOutcome:
    """W&B's sweep server and agent (needs network and credentials)."""
    from .wandb_engine import run_wandb_sweep

    return run_wandb_sweep(sweep, **options)


def run_sweep(
    path: str | Path,
    overrides: Sequence[str] | Mapping[str, Any] = (),
    *,
    workers: int = 1,
    storage: str | None = None,
    results: str | Path = "results",
    engine: str = "optuna",
    sweep_id: str | None = None,
    fit_fn: FitFn | None = None,
    echo: Echo | None = None,
    launcher: str = "local",
    slurm: Sequence[str] = (),
) -> SweepOutcome:
    """Run (or join, or resume) the sweep in `path` with the engine named `engine`; see
    `segsweep sweep --help` for the command line.

    `fit_fn` replaces `segsweep.train.fit` (tests); it must be picklable when `workers > 1`.
    `echo` receives the lines the command prints (default: logged at INFO). `launcher="slurm"`
    submits the workers as a SLURM job array instead and returns at once (`slurm` holds the
    `--slurm key=value` pairs; see `segsweep.sweeps.slurm`).
    """
    if workers < 1:
        raise SweepError(f"--workers {workers}: expected at least 1")
    if engine not in SWEEP_ENGINES:
        raise SweepError(f"--engine {engine}: expected {' or '.join(SWEEP_ENGINES.names())}")
    if launcher not in ("local", "slurm"):
        raise SweepError(f"--launcher {launcher}: expected local or slurm")
    if launcher == "slurm" and engine != "optuna":
        raise SweepError(f"--launcher slurm runs Optuna workers; --engine {engine} cannot be combined with it")
    sweep = load_sweep(path, overrides)
    if launcher == "slurm":
        from .slurm import submit_slurm_sweep

        return submit_slurm_sweep(sweep, workers=workers, storage=storage, results=Path(results), pairs=slurm,
                                  echo=echo or log.info)
    return SWEEP_ENGINES.get(engine)(sweep, workers=workers, storage=storage, results=Path(results),
                                     sweep_id=sweep_id, fit_fn=fit_fn, echo=echo or log.info)
