"""The Optuna engine: one storage (a journal file or an RDB) that any number of worker processes,
here and on other machines, claim trials from; grid cells x seeds each run exactly once, and
rerunning the command resumes. Where the workers run is the launcher's business
(`launchers.py`: local, slurm); what they do is `worker.py`, one trial `trial.py`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..errors import SweepError
from .cells import Sweep
from .contract import Echo, FitFn, SweepOutcome
from .prepare import open_before_any_work as _open_before_any_work  # noqa: F401  (re-exported for one release)
from .prepare import speed_choices  # noqa: F401  (re-exported for one release)
from .storage import quiet_optuna  # noqa: F401  (re-exported for one release)
from .worker import run_worker, start_workers  # noqa: F401  (re-exported for one release)
from .worker import worker_entry as _worker_entry  # noqa: F401  (re-exported for one release)


def run_optuna_sweep(sweep: Sweep, *, workers: int, storage: str | None, results: Path, sweep_id: str | None,
                     fit_fn: FitFn | None, echo: Echo, launcher: str = "local",
                     pairs: Sequence[str] = ()) -> SweepOutcome:
    """Queue the sweep's trials in its storage and run them where `launcher` says."""
    from .launchers import LAUNCHERS

    if sweep_id is not None:
        raise SweepError("--sweep-id joins a W&B sweep: use it with --engine wandb")
    return LAUNCHERS.get(launcher)(sweep, workers=workers, storage=storage, results=results, fit_fn=fit_fn,
                                   pairs=tuple(pairs), echo=echo)
