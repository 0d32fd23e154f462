"""Sweep engines, found by name in `SWEEP_ENGINES`, and `run_sweep`, which loads a sweep file and
hands it to one.

An engine is a function `(sweep, *, workers, storage, results, sweep_id, fit_fn, echo, launcher,
pairs) -> SweepOutcome` (`contract.py` holds the types); adding one is a module with that
function plus its registration:

    @SWEEP_ENGINES.register("mine")
    def run_mine(sweep, *, workers, storage, results, sweep_id, fit_fn, echo, launcher, pairs): ...

Where the Optuna engine's workers run is a launcher (`launchers.LAUNCHERS`: local, slurm); the
W&B engine runs its agent here. The built-in engines import their module (and Optuna or W&B)
only when they run, so listing the names (`segsweep sweep --help`) stays light.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import SweepError
from ..names import names
from ..registry import Registry
from .cells import Sweep
from .contract import (  # noqa: F401  (re-exported: they lived here before contract.py)
    Echo, FitFn, SweepOutcome, factor_levels, real_fit, trial_tracker,
)
from .spec import load_sweep

log = logging.getLogger(__name__)

SWEEP_ENGINES = Registry("sweep engine")


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
    if launcher not in names("launcher"):
        raise SweepError(f"--launcher {launcher}: expected {' or '.join(names('launcher'))}")
    if launcher != "local" and engine != "optuna":
        raise SweepError(f"--launcher {launcher} runs Optuna workers; --engine {engine} cannot be combined with it")
    sweep = load_sweep(path, overrides)
    options: dict[str, Any] = dict(workers=workers, storage=storage, results=Path(results), sweep_id=sweep_id,
                                   fit_fn=fit_fn, echo=echo or log.info)
    if launcher != "local":  # only the Optuna engine takes another launcher (checked above)
        options.update(launcher=launcher, pairs=tuple(slurm))
    return SWEEP_ENGINES.get(engine)(sweep, **options)
