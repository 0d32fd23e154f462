"""The Optuna engine: one storage (a journal file or an RDB) that any number of worker processes,
here and on other machines, claim trials from; grid cells x seeds each run exactly once, and
rerunning the command resumes. This module drives the workers; `trial` runs one trial.
"""
from __future__ import annotations

import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

import optuna
import yaml
from optuna.exceptions import ExperimentalWarning
from optuna.storages import BaseStorage, fail_stale_trials
from optuna.trial import TrialState

from ..errors import SegsweepError, SweepError
from ..record import atomic_write_text, check_writable
from .adaptive import run_rounds
from .cells import Sweep
from .engines import Echo, FitFn, SweepOutcome, real_fit
from .outputs import SweepProgress, closing_lines, hide_terminal, write_trials_csv
from .storage import check_storage_for_workers, claim_waiting, is_rdb_url, masked_url, open_storage
from .study import budget_used, enqueue_grid, make_pruner, make_sampler, open_study, pending_trials
from .trial import WorkerPlan, run_trial

log = logging.getLogger(__name__)


def run_optuna_sweep(sweep: Sweep, *, workers: int, storage: str | None, results: Path, sweep_id: str | None,
                     fit_fn: FitFn | None, echo: Echo) -> SweepOutcome:
    """Queue the sweep's trials in its storage and run them on `workers` processes of this machine."""
    if sweep_id is not None:
        raise SweepError("--sweep-id joins a W&B sweep: use it with --engine wandb")
    sweep_dir = results / "sweeps" / sweep.name
    location = storage or sweep.spec.optuna.storage or str(sweep_dir / "journal.log")
    check_storage_for_workers(location, workers)
    check_writable(sweep_dir)
    quiet_optuna()
    store = _open_before_any_work(sweep, sweep_dir, location, prepare_data=fit_fn is None)
    study = open_study(sweep, store)
    study_id = store.get_study_id_from_name(sweep.name)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    where = _write_sweep_yaml(sweep, sweep_dir, location)
    adaptive = sweep.rounds
    if not adaptive:
        echo(_queue(study, sweep, where))

    plan = WorkerPlan(sweep=sweep, sweep_dir=sweep_dir, storage=location, fit_fn=fit_fn,
                      threads=max(1, _cores() // workers) if workers > 1 else None,
                      show_logs=bool(logging.getLogger("segsweep").handlers), progress_bars=workers == 1)

    def run_round() -> bool:
        return run_worker(plan) if workers == 1 else _run_workers(plan, workers, echo, SweepProgress(
            store, study_id, sweep, enabled=sys.stderr.isatty()))

    if adaptive:  # rounds (of seeds, or of a fraction), each analysed before the next is queued
        interrupted, pending = run_rounds(study, store, study_id, sweep, sweep_dir, run_round, echo, where)
    else:
        interrupted = run_round()
        pending = pending_trials(store.get_all_trials(study_id, deepcopy=False), sweep)

    rows = write_trials_csv(store, study_id, sweep, sweep_dir)
    for line in closing_lines(rows, sweep, sweep_dir, pending):
        echo(line)
    code = 130 if interrupted else (1 if pending else 0)
    return SweepOutcome(sweep_dir=sweep_dir, rows=rows, pending=pending, exit_code=code)


def _open_before_any_work(sweep: Sweep, sweep_dir: Path, location: str, prepare_data: bool) -> BaseStorage:
    """Open the storage (an unreachable database fails here) and prepare the data; a data
    problem leaves nothing behind (not even the journal file the storage just created)."""
    created = next((p for p in reversed((sweep_dir, *sweep_dir.parents)) if not p.exists()), None)
    store = open_storage(location, sweep.spec.optuna)
    if prepare_data:
        try:
            _prepare_data(sweep)
        except SegsweepError:
            if created is not None:
                shutil.rmtree(created, ignore_errors=True)
            raise
    return store


def _prepare_data(sweep: Sweep) -> None:
    """Generate/cache each distinct dataset once here, so workers do not all do it at once.

    It also turns a data problem (missing root, corrupt file) into one error before any trial.
    """
    from ..data import build_data
    from ..spec import override_spec, spec_to_dict

    specs = [override_spec(sweep.base, cell.overrides) for cell in sweep.cells] or [sweep.base]
    seen: set[str] = set()
    for spec in specs:
        key = json.dumps(spec_to_dict(spec)["data"], sort_keys=True)
        if key not in seen:
            seen.add(key)
            build_data(spec)


def _write_sweep_yaml(sweep: Sweep, sweep_dir: Path, location: str) -> str:
    """Record the resolved sweep in sweep.yaml; returns where the storage is, for the console."""
    if is_rdb_url(location):
        where = recorded = masked_url(location)
    else:  # the default journal is recorded relative to the sweep folder, so the folder can move
        where = location
        default = Path(location).resolve() == (sweep_dir / "journal.log").resolve()
        recorded = "journal.log" if default else str(Path(location).resolve())
    atomic_write_text(sweep_dir / "sweep.yaml", yaml.safe_dump(sweep.resolved(recorded), sort_keys=False))
    return where


def _queue(study: optuna.Study, sweep: Sweep, where: str) -> str:
    """Queue a grid's missing cells x seeds; returns the line that says what the sweep runs."""
    if sweep.method == "grid":
        queued = enqueue_grid(study, sweep)
        total = len(sweep.cells) * len(sweep.seeds)
        return (f"sweep {sweep.name}: {len(sweep.cells)} cells x {len(sweep.seeds)} seeds = {total} trials; "
                f"{queued} queued now, {total - queued} already held; storage {where}")
    return (f"sweep {sweep.name}: {sweep.method} search, run_cap {sweep.spec.run_cap}, pruner {sweep.spec.pruner}, "
            f"sampler seed {sweep.spec.optuna.sampler_seed}; storage {where}")


def quiet_optuna() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")


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


def _worker_entry(plan: WorkerPlan) -> None:
    """Process target: a SegsweepError is one line on stderr and exit code 2, like the command."""
    if plan.show_logs:  # a spawned process starts without the command's log handler
        from ..cli import install_log_handler

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
        process = ctx.Process(target=_worker_entry, args=(replace(plan, worker=index),), name=f"sweep-worker-{index}")
        process.start()
        processes.append(process)
    return processes


def _run_workers(plan: WorkerPlan, workers: int, echo: Echo, progress: SweepProgress) -> bool:
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


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
