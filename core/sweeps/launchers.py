"""Launchers, found by name in `LAUNCHERS`: where a sweep's workers run. Each checks what it
needs, runs the `prepare` step every launcher shares (storage, data, study, sweep.yaml), queues
the trials and starts `worker.run_worker` processes:

    local   the command's own process (--workers 1) or N processes on this machine; waits
    slurm   a SLURM job array through submitit (`slurm.py`); returns at once

A launcher is a function `(sweep, *, workers, storage, results, fit_fn, pairs, echo) ->
SweepOutcome` (`pairs`: the `--slurm key=value` options, for the launchers that take any).
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from ..errors import SweepError
from ..record import check_writable
from ..registry import Registry
from .adaptive import run_rounds
from .cells import Sweep
from .contract import Echo, FitFn, SweepOutcome, WorkerPlan
from .outputs import SweepProgress, closing_lines, write_trials_csv
from .prepare import prepare, queue_line
from .storage import check_storage_for_workers
from .study import pending_trials
from .worker import cores, run_worker, run_workers

LAUNCHERS = Registry("launcher")


@LAUNCHERS.register("local")
def launch_local(sweep: Sweep, *, workers: int, storage: str | None, results: Path, fit_fn: FitFn | None,
                 pairs: Sequence[str], echo: Echo) -> SweepOutcome:
    """This machine: the command's own process, or --workers N processes; waits for the sweep."""
    if pairs:
        raise SweepError(f"--slurm {pairs[0]}: --slurm options go with --launcher slurm")
    sweep_dir = results / "sweeps" / sweep.name
    location = storage or sweep.spec.optuna.storage or str(sweep_dir / "journal.log")
    check_storage_for_workers(location, workers)
    check_writable(sweep_dir)
    threads = max(1, cores() // workers) if workers > 1 else None
    ready = prepare(sweep, sweep_dir, location, prepare_data=fit_fn is None, decide_speed=fit_fn is None,
                    threads=threads)  # `auto` speed settings: decided here, before any worker starts
    if not sweep.rounds:
        echo(queue_line(ready))
    # A trial stopped by Ctrl-C or SIGTERM is queued to continue from its last.pt in its own folder
    # when the command is run again, as a SLURM requeue does: it keeps its epochs and its identity.
    plan = WorkerPlan(sweep=sweep, sweep_dir=sweep_dir, storage=location, fit_fn=fit_fn, threads=threads,
                      show_logs=bool(logging.getLogger("segsweep").handlers), progress_bars=workers == 1,
                      resume_interrupted=True, speed_choices=ready.speed_choices or {})

    def run_round() -> bool:
        return run_worker(plan) if workers == 1 else run_workers(plan, workers, echo, SweepProgress(
            ready.store, ready.study_id, sweep, enabled=sys.stderr.isatty()))

    if sweep.rounds:  # rounds (of seeds, or of a fraction), each analysed before the next is queued
        interrupted, pending = run_rounds(ready.study, ready.store, ready.study_id, sweep, sweep_dir, run_round,
                                          echo, ready.where)
    else:
        interrupted = run_round()
        pending = pending_trials(ready.store.get_all_trials(ready.study_id, deepcopy=False), sweep)
    rows = write_trials_csv(ready.store, ready.study_id, sweep, sweep_dir)
    for line in closing_lines(rows, sweep, sweep_dir, pending):
        echo(line)
    code = 130 if interrupted else (1 if pending else 0)
    return SweepOutcome(sweep_dir=sweep_dir, rows=rows, pending=pending, exit_code=code)


@LAUNCHERS.register("slurm")
def launch_on_slurm(sweep: Sweep, **options: Any) -> SweepOutcome:
    """A SLURM job array through submitit; returns once it is submitted."""
    from .slurm import submit_slurm_sweep

    return submit_slurm_sweep(sweep, **options)
