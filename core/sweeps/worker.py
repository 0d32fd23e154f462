"""A sweep's worker, whichever launcher started it: in the command's own process, as one of
`--workers N` processes on this machine, or as a SLURM array task's process. It claims trials
from the storage and trains them until the sweep is settled.
"""
from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import time
from dataclasses import replace

import optuna
from optuna.storages import fail_stale_trials
from optuna.trial import TrialState

from ..errors import SegsweepError, SweepError
from ..logs import install_log_handler
from .contract import Echo, WorkerPlan, real_fit
from .outputs import SweepProgress, hide_terminal, write_trials_csv
from .prepare import speed_choices
from .running import claim_waiting
from .storage import open_storage, quiet_optuna
from .study import budget_used, make_pruner, make_sampler
from .trial import run_trial

log = logging.getLogger(__name__)


def run_worker(plan: WorkerPlan) -> bool:
    """One worker: fail stale trials, claim a trial, train it; until the sweep has nothing left.

    A worker with nothing to claim waits while other trials run (they may go stale and be
    re-queued), so the command returns only when the whole study is settled. Returns True when
    a signal (Ctrl-C, SIGTERM) stopped it.
    """
    quiet_optuna()
    if plan.threads:
        import torch

        torch.set_num_threads(plan.threads)
    sweep = plan.sweep
    storage = open_storage(plan.storage, sweep.spec.optuna)
    study = optuna.load_study(study_name=sweep.name, storage=storage, sampler=make_sampler(sweep),
                              pruner=make_pruner(sweep))
    if plan.fit_fn is None:  # a SLURM task decides on its own node, before training; the first to decide wins
        from ..train.speed import install_sweep_choices

        choices = plan.speed_choices
        install_sweep_choices(speed_choices(study, sweep, plan.threads, plan.sweep_dir) if choices is None else choices)
    study_id = storage.get_study_id_from_name(sweep.name)
    fit_fn = plan.fit_fn or real_fit()
    poll = min(sweep.spec.optuna.heartbeat_interval, 5)
    try:
        while True:
            fail_stale_trials(study)
            trial = claim_waiting(study, storage, study_id)
            if trial is None and sweep.method != "grid":
                if len(budget_used(storage.get_all_trials(study_id, deepcopy=False))) < (sweep.spec.run_cap or 0):
                    trial = study.ask()
            if trial is None:
                if not storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
                    return False
                time.sleep(poll)
                continue
            if run_trial(study, storage, study_id, trial, plan, fit_fn) == "signal":
                return True
    except KeyboardInterrupt:  # between trials (during a trial, fit finishes the step and returns)
        return True
    finally:
        write_trials_csv(storage, study_id, sweep, plan.sweep_dir)


def worker_entry(plan: WorkerPlan) -> None:
    """Process target: a SegsweepError is one line on stderr and exit code 2, like the command."""
    if plan.show_logs:  # a spawned process starts without the command's log handler
        install_log_handler()
    if not plan.progress_bars:
        hide_terminal()
    try:
        interrupted = run_worker(plan)
    except SegsweepError as exc:
        log.error(f"error: worker {plan.worker}: {exc}")
        raise SystemExit(2) from None
    if interrupted:
        raise SystemExit(130)


def start_workers(plan: WorkerPlan, workers: int) -> list[multiprocessing.process.BaseProcess]:
    """`workers` spawned processes running `run_worker`, the CPU cores divided among them."""
    ctx = multiprocessing.get_context("spawn")
    processes = []
    for index in range(workers):
        process = ctx.Process(target=worker_entry, args=(replace(plan, worker=index),), name=f"sweep-worker-{index}")
        process.start()
        processes.append(process)
    return processes


def run_workers(plan: WorkerPlan, workers: int, echo: Echo, progress: SweepProgress) -> bool:
    """Start the worker processes and wait for them, updating the sweep's one progress bar;
    True when a signal interrupted the sweep."""
    interrupted = False
    processes = start_workers(plan, workers)
    poll = min(plan.sweep.spec.optuna.heartbeat_interval, 2)
    try:
        while processes:
            try:
                while any(p.is_alive() for p in processes):
                    multiprocessing.connection.wait([p.sentinel for p in processes if p.is_alive()], poll)
                    progress.update()
                break
            except KeyboardInterrupt:
                interrupted = True
                echo("interrupted: workers finish their current step, save and stop")
    finally:
        progress.close()
    interrupted = interrupted or any(p.exitcode == 130 for p in processes)
    for index, process in enumerate(processes):
        if process.exitcode == 2:
            raise SweepError(f"worker {index} stopped with an error (see above)")
        if process.exitcode and process.exitcode < 0:
            name = signal.Signals(-process.exitcode).name
            echo(f"worker {index} (pid {process.pid}) was killed by {name}; its trial is retried once its heartbeat "
                 f"is {plan.sweep.spec.optuna.grace_period} s old (by another worker, or by rerunning this command)")
    return interrupted


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
