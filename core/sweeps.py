"""Run a sweep with Optuna (default: offline, N worker processes, many machines on one storage;
grid cells x seeds each run exactly once) or with W&B's agent. Each trial is a normal run folder
trained by `fit`; the objective is a thin adapter around it (see `run_trial`).
"""
from __future__ import annotations

import math
import multiprocessing
import os
import shutil
import signal
import socket
import statistics
import sys
import threading
import time
import traceback
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import optuna
import yaml
from optuna.exceptions import DuplicatedStudyError, ExperimentalWarning, UpdateFinishedTrialError
from optuna.storages import (
    BaseStorage, JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback, _CachedStorage, fail_stale_trials,
)
from optuna.storages._heartbeat import BaseHeartbeat  # Optuna's extension point for storages with heartbeats
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from core.errors import SegsweepError, SweepError
from core.record import atomic_write_text, check_writable, csv_text, new_run_dir
from core.spec import arm_hash, config_hash
from core.sweep_spec import (
    OptunaSpec, Sweep, arm_choices, base_values, cell_config_hash, cell_label, load_sweep, to_wandb_config,
    wandb_overrides,
)

FitFn = Callable[..., Any]  # core.trainer.fit's signature: (spec, run_dir, tracker=, on_epoch_end=) -> RunResult
HEARTBEAT_ATTR = "segsweep:heartbeat"  # system attr: last heartbeat (epoch seconds) of a journal trial
OCCUPYING = (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)
SETTLED_FAILURES = ("diverged",)  # a FAIL with this status is the cell's outcome: never re-run
TRIAL_COLUMNS = ("seed", "cell", "state", "status", "value", "val/dice", "test/dice", "epochs", "wall_s",
                 "config_hash", "host", "run_dir")


# --------------------------------------------------------------------------- storage


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """Optuna's JournalStorage with the heartbeat Optuna 5 gives only to RDBStorage.

    A running trial's worker stamps `HEARTBEAT_ATTR` into the trial's system attrs every
    `heartbeat_interval` seconds (one journal line each); a RUNNING trial whose last stamp (or
    start, whichever is later) is older than `grace_period` is stale, and Optuna's own
    `fail_stale_trials` fails it and calls the retry callback, exactly as with an RDB.
    """

    def __init__(self, backend: JournalFileBackend, heartbeat_interval: int, grace_period: int,
                 stale_callback: Callable[[optuna.Study, FrozenTrial], None] | None) -> None:
        super().__init__(backend)
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        self._stale_callback = stale_callback

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())
        except (UpdateFinishedTrialError, KeyError):
            pass  # the trial finished (or was failed as stale) meanwhile

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        stale = []
        for trial in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            # A retried trial inherits its predecessor's stamp: its own start counts too.
            started = trial.datetime_start.timestamp() if trial.datetime_start else now
            last = max(float(trial.system_attrs.get(HEARTBEAT_ATTR, 0.0)), started)
            if now - last > self.grace_period:
                stale.append(trial._trial_id)
        return stale

    def get_heartbeat_interval(self) -> int:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        return self._stale_callback


def is_rdb_url(location: str) -> bool:
    return "://" in location or location.startswith("sqlite:")


def _masked(url: str) -> str:
    """The URL without its password, for messages."""
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}" if ":" in creds else url


def resolve_rdb_url(url: str) -> str:
    """`postgresql://` means psycopg 3 to SQLAlchemy >= 2.1; use psycopg2 (our `postgres` extra) when only it is here."""
    import importlib.util

    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url


def check_storage_for_workers(location: str, workers: int) -> None:
    if location.startswith("sqlite") and workers > 1:
        raise SweepError(
            f"--storage {location} with --workers {workers}: SQLite locks the whole database file on every write, "
            "so parallel workers fail with 'database is locked'; omit --storage (a journal file in the sweep "
            "folder serves any number of workers on one machine) or use PostgreSQL/MySQL, e.g. "
            "--storage postgresql://user@host/db (pip install 'segsweep[postgres]')")


def open_storage(location: str, spec: OptunaSpec) -> BaseStorage:
    """An RDB URL (sqlite:, postgresql:, mysql:) or a journal file path, with heartbeats and retries."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        retry = RetryHeartbeatStaleTrialCallback(max_retry=spec.max_retry)
        if not is_rdb_url(location):
            path = Path(location)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                backend = JournalFileBackend(str(path))
            except OSError as exc:
                raise SweepError(f"storage {path}: cannot open the journal file ({exc.strerror or exc})") from None
            return HeartbeatJournalStorage(backend, spec.heartbeat_interval, spec.grace_period, retry)
        engine_kwargs: dict[str, Any] = {}
        if location.startswith(("postgresql", "mysql")):
            engine_kwargs["connect_args"] = {"connect_timeout": 10}
        url = resolve_rdb_url(location)
        try:
            rdb = RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=spec.heartbeat_interval,
                             grace_period=spec.grace_period, heartbeat_stale_trial_callback=retry)
        except ImportError:
            raise SweepError(f"storage {_masked(location)}: its database driver is not installed; "
                             "for PostgreSQL: pip install 'segsweep[postgres]'") from None
        except Exception as exc:  # sqlalchemy's errors: bad URL, server down, wrong credentials
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise SweepError(f"storage {_masked(location)}: cannot open ({reason}); check the URL and that the "
                             "database server is running and reachable") from None
        # What Optuna itself wraps every RDB study in; one object for the study and our claims.
        return _CachedStorage(rdb)


# --------------------------------------------------------------------------- study


def make_sampler(sweep: Sweep, trial_number: int = 0) -> optuna.samplers.BaseSampler:
    """RandomSampler / TPESampler seeded from (optuna.sampler_seed, trial number).

    Seeding per trial number keeps workers on several machines from drawing the same sequence
    and makes a one-worker study reproducible; grids need no sampler (every param is fixed).
    """
    seed = (sweep.spec.optuna.sampler_seed * 1_000_003 + trial_number) % (2**31 - 1)
    if sweep.method == "bayes":
        extra = {} if sweep.spec.optuna.n_startup_trials is None else {"n_startup_trials": sweep.spec.optuna.n_startup_trials}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=seed, **extra)
    return optuna.samplers.RandomSampler(seed=seed)


def make_pruner(sweep: Sweep) -> optuna.pruners.BasePruner:
    name = sweep.spec.pruner
    if name == "none" or (sweep.method == "grid" and not sweep.spec.optuna.prune_grid):
        return optuna.pruners.NopPruner()
    et = sweep.spec.early_terminate
    min_iter, eta = (et.min_iter, et.eta) if et is not None else (1, 3)
    if name == "median":
        startup = sweep.spec.optuna.n_startup_trials
        return optuna.pruners.MedianPruner(n_startup_trials=5 if startup is None else startup, n_warmup_steps=min_iter - 1)
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=min_iter, reduction_factor=eta)
    max_iter = (et.max_iter if et is not None else None) or sweep.base.train.epochs
    return optuna.pruners.HyperbandPruner(min_resource=min_iter, max_resource=max_iter, reduction_factor=eta)


def open_study(sweep: Sweep, storage: BaseStorage, wait_s: float = 30.0) -> optuna.Study:
    """Create the study (named after the sweep) or join it; refuse one made from a different spec.

    Creation is atomic in every storage (one creator wins, the others get DuplicatedStudyError),
    and the creator records `sweep_hash` at once; a joiner waits up to `wait_s` for it.
    """
    common = dict(study_name=sweep.name, storage=storage, sampler=make_sampler(sweep), pruner=make_pruner(sweep))
    try:
        study = optuna.create_study(direction=sweep.spec.metric.goal, **common)
    except DuplicatedStudyError:
        study = optuna.load_study(**common)
    else:
        study.set_user_attr("sweep_hash", sweep.hash)
        for key, value in {"sweep_file": str(sweep.path), "method": sweep.method, "metric": sweep.spec.metric.name,
                           "seeds": list(sweep.seeds), "sampler_seed": sweep.spec.optuna.sampler_seed,
                           "pruner": sweep.spec.pruner, "overrides": list(sweep.overrides)}.items():
            study.set_user_attr(key, value)
        return study
    deadline = time.monotonic() + wait_s
    theirs = study.user_attrs.get("sweep_hash")
    while theirs is None and time.monotonic() < deadline:
        time.sleep(0.5)
        theirs = study.user_attrs.get("sweep_hash")
    if theirs is None:  # its creator died before recording the hash: adopt the study
        study.set_user_attr("sweep_hash", sweep.hash)
    elif theirs != sweep.hash:
        raise SweepError(
            f"sweep {sweep.name!r}: the storage already holds a study of that name made from a different spec "
            f"(sweep hash {theirs}, this one {sweep.hash}; file {study.user_attrs.get('sweep_file')}, overrides "
            f"{study.user_attrs.get('overrides')}); nothing was run: give this sweep another `name:`, another "
            "--results/--storage, or rerun with the original spec and overrides")
    return study


def _holds(trial: FrozenTrial) -> bool:
    """Whether `trial` holds its cell: queued, running, done, or failed in a way a rerun would repeat."""
    if trial.state in OCCUPYING:
        return True
    return trial.state == TrialState.FAIL and trial.user_attrs.get("status") in SETTLED_FAILURES


def enqueue_grid(study: optuna.Study, sweep: Sweep) -> int:
    """Queue every cell x seed whose config hash no trial holds yet (idempotent across reruns).

    Seed-major order: all cells of the first seed finish first, so a partial sweep still compares
    every arm. Two drivers enqueueing at the same moment may both queue a cell; the claim rule in
    `_duplicate_of` lets only the lower-numbered copy run.
    """
    held = {t.user_attrs.get("config_hash") for t in study.get_trials(deepcopy=False) if _holds(t)}
    queued = 0
    for seed in sweep.seeds:
        for cell in sweep.cells:
            chash, ahash = cell_config_hash(sweep, cell, seed)
            if chash in held:
                continue
            study.enqueue_trial({**cell.params, "seed": seed}, user_attrs={
                "config_hash": chash, "arm_hash": ahash, "seed": seed, "cell": cell.label, "overrides": cell.overrides,
            })
            held.add(chash)
            queued += 1
    return queued


def _claim_waiting(study: optuna.Study, storage: BaseStorage, study_id: int) -> optuna.Trial | None:
    """Take one WAITING trial: the storage's WAITING -> RUNNING update succeeds for one caller only.

    RDBStorage does it under SELECT ... FOR UPDATE and returns False when the row is no longer
    WAITING; JournalStorage appends the update to the log and replays it in log order, so only
    the first RUNNING record of a WAITING trial takes effect. This is what `Study.ask` does,
    without its fallback of creating a fresh trial when the queue is empty.
    """
    for frozen in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.WAITING,)):
        try:
            if storage.set_trial_state_values(frozen._trial_id, state=TrialState.RUNNING):
                return optuna.Trial(study, frozen._trial_id)
        except UpdateFinishedTrialError:
            continue
    return None


def _duplicate_of(trials: Sequence[FrozenTrial], me: FrozenTrial) -> FrozenTrial | None:
    """A trial that holds `me`'s cell before it: then `me` must not run.

    Trial numbers are dense and assigned in storage order (the journal's log order; RDBStorage
    locks the study row while numbering), so a reader that sees `me` sees every lower number.
    Claim: two trials a < b of one hash never both run concurrently, and never both COMPLETE.
    b runs only if its check, made after b existed and hence seeing a, found a not holding, i.e.
    FAIL (a FAIL other than `diverged`). FAIL is final: a's claim (WAITING -> RUNNING) came before
    it, so if a ran, it had finished failing before b started (b is its retry), or it was failed
    as stale while its worker was merely slow: that copy then stops at its next epoch (the hook
    sees the trial is no longer RUNNING) and its `tell` is refused, so only b can COMPLETE.
    A COMPLETE trial of the hash, whatever its number, also makes `me` a duplicate.
    """
    chash = me.user_attrs.get("config_hash")
    for other in trials:
        if other.number == me.number or other.user_attrs.get("config_hash") != chash:
            continue
        if other.state == TrialState.COMPLETE or (other.number < me.number and _holds(other)):
            return other
    return None


class _Heartbeat:
    """Stamp a running trial's heartbeat now and every `interval` seconds, until exit."""

    def __init__(self, storage: BaseStorage, trial_id: int) -> None:
        self.storage, self.trial_id = storage, trial_id
        self.interval = storage.get_heartbeat_interval() if isinstance(storage, BaseHeartbeat) else None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "_Heartbeat":
        if self.interval:
            self.storage.record_heartbeat(self.trial_id)  # type: ignore[attr-defined]
            self._thread = threading.Thread(target=self._beat, name="segsweep-heartbeat", daemon=True)
            self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.storage.record_heartbeat(self.trial_id)  # type: ignore[attr-defined]
            except Exception as exc:  # a storage hiccup: the next beat may succeed; grace covers a few misses
                print(f"warning: heartbeat of trial {self.trial_id} failed: {exc}", file=sys.stderr, flush=True)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


# --------------------------------------------------------------------------- one trial


@dataclass(frozen=True)
class WorkerPlan:
    """Everything one worker process needs (picklable: workers are started with `spawn`)."""

    sweep: Sweep
    sweep_dir: Path
    storage: str  # RDB URL or journal file path
    fit_fn: FitFn | None = None  # None: core.trainer.fit
    threads: int | None = None  # torch intra-op threads for this worker; None: torch's default
    worker: int = 0


def _suggest(trial: optuna.Trial, sweep: Sweep) -> dict[str, Any]:
    """Sample the searched parameters (a retried trial gets its stored values back)."""
    values: dict[str, Any] = {}
    for key, p in sweep.searched.items():
        if p.kind == "categorical":
            values[key] = trial.suggest_categorical(key, list(p.values or ()))
        elif p.kind == "int_uniform":
            values[key] = trial.suggest_int(key, int(p.min), int(p.max))  # type: ignore[arg-type]
        elif p.kind == "uniform":
            values[key] = trial.suggest_float(key, p.min, p.max)  # type: ignore[arg-type]
        elif p.kind == "q_uniform":
            values[key] = trial.suggest_float(key, p.min, p.max, step=p.q or 1)  # type: ignore[arg-type]
        else:  # log_uniform_values, log_uniform
            low, high = p.bounds()
            values[key] = trial.suggest_float(key, low, high, log=True)
    return values


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _real_fit() -> FitFn:
    from core.trainer import fit

    return fit


def _tracker(spec: Any, run_dir: Path) -> Any:
    """The trial's tracker, or None when nothing is tracked (fit then skips prediction grids)."""
    from core.tracking import Tracker, build_tracker

    tracker = build_tracker(spec, run_dir)
    return None if type(tracker) is Tracker else tracker


def run_trial(study: optuna.Study, storage: BaseStorage, study_id: int, trial: optuna.Trial,
              plan: WorkerPlan, fit_fn: FitFn) -> str:
    """Train one claimed trial and record its outcome; returns the run's status.

    Outcomes: completed -> COMPLETE with the best reported metric; pruned -> PRUNED; diverged ->
    FAIL with status=diverged (the arm's result: kept, never re-run); failed or interrupted ->
    FAIL (a grid cell is re-queued by the next run of the command).
    """
    from core.trainer import StopTraining

    sweep, trial_id = plan.sweep, trial._trial_id
    metric, goal = sweep.spec.metric.name, sweep.spec.metric.goal
    prune = sweep.spec.pruner != "none" and (sweep.method != "grid" or sweep.spec.optuna.prune_grid)
    reported: list[float] = []
    lost = threading.Event()

    def on_epoch_end(epoch: int, metrics: dict[str, float]) -> None:
        value = float(metrics[metric])
        if math.isfinite(value):
            reported.append(value)
            trial.report(value, epoch)
        if storage.get_trial(trial_id).state != TrialState.RUNNING:
            lost.set()  # marked stale (no heartbeat for the grace period) and re-queued elsewhere
            raise StopTraining("interrupted", "the trial was marked stale and re-queued; stopping this copy")
        if prune and trial.should_prune():
            raise StopTraining("pruned", f"pruned by {sweep.spec.pruner} at epoch {epoch} ({metric} {value:.4f})")

    with _Heartbeat(storage, trial_id):
        if sweep.method == "grid":
            attrs = storage.get_trial(trial_id).user_attrs
            overrides, seed, label = dict(attrs["overrides"]), int(attrs["seed"]), str(attrs["cell"])
            for key, choices in arm_choices(sweep).items():
                trial.suggest_categorical(key, list(choices))  # the enqueued values, recorded as params
            duplicate = _duplicate_of(storage.get_all_trials(study_id, deepcopy=False), storage.get_trial(trial_id))
            if duplicate is not None:
                trial.set_user_attr("status", "duplicate")
                trial.set_user_attr("duplicate_of", duplicate.number)
                study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
                print(f"trial {trial.number}: {label} seed {seed} is already held by trial {duplicate.number}; skipped",
                      flush=True)
                return "duplicate"
        else:
            study.sampler = make_sampler(sweep, trial.number)
            overrides, seed = _suggest(trial, sweep), sweep.seeds[0]
            label = cell_label(overrides)
        trial.set_user_attr("overrides", overrides)
        trial.set_user_attr("seed", seed)
        trial.set_user_attr("cell", label)

        summary: dict[str, Any] = {}
        signum, run_dir = None, None
        try:
            spec = sweep.trial_spec(overrides, seed, f"{sweep.name}.t{trial.number:04d}", label)
            run_dir = new_run_dir(plan.sweep_dir, spec.name, create=False).resolve()
            for key, value in {"config_hash": config_hash(spec), "arm_hash": arm_hash(spec), "run_dir": str(run_dir),
                               "host": socket.gethostname(), "pid": os.getpid(), "status": "running"}.items():
                trial.set_user_attr(key, value)
            print(f"trial {trial.number}: {label} seed {seed} -> {run_dir}", flush=True)
            result = fit_fn(spec, run_dir, tracker=_tracker(spec, run_dir), on_epoch_end=on_epoch_end)
            status, summary, signum = result.status, dict(result.metrics), getattr(result, "signal", None)
        except SegsweepError as exc:  # e.g. a sampled combination the spec's cross-field rules refuse
            status, summary["error"] = "failed", str(exc)
        except Exception as exc:  # the sweep goes on; the run folder's summary.json has the record
            status, summary["error"] = "failed", f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
    if lost.is_set():
        print(f"trial {trial.number}: lost (marked stale while running); its retry owns the cell", flush=True)
        return "lost"
    best = (max if goal == "maximize" else min)(reported) if reported else None
    try:
        for key, value in {"status": status, "val/dice": summary.get("val/dice"), "test/dice": summary.get("test/dice"),
                           "epochs": summary.get("epochs_run"), "wall_s": summary.get("wall_s"),
                           "error": summary.get("error")}.items():
            if value is not None:
                trial.set_user_attr(key, _finite(value))
        if status == "completed" and best is not None:
            study.tell(trial, best)
        elif status == "pruned":
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, state=TrialState.FAIL)
    except UpdateFinishedTrialError:
        print(f"trial {trial.number}: was marked stale while it ran; its result stays in {run_dir} only", flush=True)
        return "lost"
    if run_dir is not None and status != "interrupted" and not sweep.spec.keep_last:
        (run_dir / "checkpoints" / "last.pt").unlink(missing_ok=True)  # best.pt stays for the report
    shown = f"{metric} {best:.4f}" if best is not None else summary.get("error", "")
    print(f"trial {trial.number}: {status} {shown}", flush=True)
    return "signal" if signum is not None else status


# --------------------------------------------------------------------------- workers


def _print(line: str) -> None:
    print(line, flush=True)  # interleaves in order with the workers' output


def _quiet_optuna() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")


def run_worker(plan: WorkerPlan) -> bool:
    """One worker: fail stale trials, claim a trial, train it; until the sweep has nothing left.

    A worker with nothing to claim waits while other trials run (they may go stale and be
    re-queued), so the command returns only when the whole study is settled. Returns True when
    a signal (Ctrl-C, SIGTERM) stopped it.
    """
    _quiet_optuna()
    if plan.threads:
        import torch

        torch.set_num_threads(plan.threads)
    sweep = plan.sweep
    storage = open_storage(plan.storage, sweep.spec.optuna)
    study = optuna.load_study(study_name=sweep.name, storage=storage, sampler=make_sampler(sweep),
                              pruner=make_pruner(sweep))
    study_id = storage.get_study_id_from_name(sweep.name)
    fit_fn = plan.fit_fn or _real_fit()
    poll = min(sweep.spec.optuna.heartbeat_interval, 5)
    try:
        while True:
            fail_stale_trials(study)
            trial = _claim_waiting(study, storage, study_id)
            if trial is None and sweep.method != "grid":
                if len(_budget_used(storage.get_all_trials(study_id, deepcopy=False))) < (sweep.spec.run_cap or 0):
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
    """Process target: a SegsweepError is one line on stderr and exit code 2, like the scripts."""
    try:
        interrupted = run_worker(plan)
    except SegsweepError as exc:
        print(f"error: worker {plan.worker}: {exc}", file=sys.stderr, flush=True)
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


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# --------------------------------------------------------------------------- outputs


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
    seeds = len(sweep.seeds) if sweep.method == "grid" else 1
    lines = [f"{'':>3} {'cell':<{width}}  val/dice (mean ± std, n)   test/dice"]
    for rank, (label, c) in enumerate(ranked[:top], 1):
        if c["val"]:
            std = statistics.stdev(c["val"]) if len(c["val"]) > 1 else 0.0
            test = f"{statistics.fmean(c['test']):.4f}" if c["test"] else "-"
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


def _human(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{size:.1f} GB"


def _prepare_data(sweep: Sweep) -> None:
    """Generate/cache each distinct dataset once here, so workers do not all do it at once.

    It also turns a data problem (missing root, corrupt file) into one error before any trial.
    """
    import json

    from core.data import build_data
    from core.spec import override_spec, spec_to_dict

    specs = [override_spec(sweep.base, cell.overrides) for cell in sweep.cells] or [sweep.base]
    seen: set[str] = set()
    for spec in specs:
        key = json.dumps(spec_to_dict(spec)["data"], sort_keys=True)
        if key not in seen:
            seen.add(key)
            build_data(spec)


# --------------------------------------------------------------------------- the command


@dataclass(frozen=True)
class SweepOutcome:
    sweep_dir: Path
    rows: list[dict[str, Any]]
    pending: int  # grid cells x seeds not yet held by a trial (a rerun runs them); 0 when done
    exit_code: int  # 0 done, 1 some cells need a rerun, 130 interrupted


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
    echo: Callable[[str], None] | None = None,
) -> SweepOutcome:
    """Run (or join, or resume) the sweep in `path`; see scripts/sweep.py for the command line.

    `fit_fn` replaces `core.trainer.fit` (tests); it must be picklable when `workers > 1`.
    """
    echo = echo or _print
    if workers < 1:
        raise SweepError(f"--workers {workers}: expected at least 1")
    if engine not in ("optuna", "wandb"):
        raise SweepError(f"--engine {engine}: expected optuna or wandb")
    sweep = load_sweep(path, overrides)
    results = Path(results)
    if engine == "wandb":
        return run_wandb_sweep(sweep, sweep_id=sweep_id, results=results, fit_fn=fit_fn, echo=echo)
    if sweep_id is not None:
        raise SweepError("--sweep-id joins a W&B sweep: use it with --engine wandb")
    sweep_dir = results / "sweeps" / sweep.name
    location = storage or sweep.spec.optuna.storage or str(sweep_dir / "journal.log")
    check_storage_for_workers(location, workers)
    check_writable(sweep_dir)
    _quiet_optuna()
    created = next((p for p in reversed((sweep_dir, *sweep_dir.parents)) if not p.exists()), None)
    store = open_storage(location, sweep.spec.optuna)  # an unreachable database fails here, before any work
    if fit_fn is None:
        try:
            _prepare_data(sweep)
        except SegsweepError:
            if created is not None:  # leave nothing behind (the journal file the storage just created)
                shutil.rmtree(created, ignore_errors=True)
            raise
    study = open_study(sweep, store)
    study_id = store.get_study_id_from_name(sweep.name)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    if is_rdb_url(location):
        where = recorded = _masked(location)
    else:  # the default journal is recorded relative to the sweep folder, so the folder can move
        where = location
        default = Path(location).resolve() == (sweep_dir / "journal.log").resolve()
        recorded = "journal.log" if default else str(Path(location).resolve())
    atomic_write_text(sweep_dir / "sweep.yaml", yaml.safe_dump(sweep.resolved(recorded), sort_keys=False))

    if sweep.method == "grid":
        queued = enqueue_grid(study, sweep)
        total = len(sweep.cells) * len(sweep.seeds)
        echo(f"sweep {sweep.name}: {len(sweep.cells)} cells x {len(sweep.seeds)} seeds = {total} trials; "
             f"{queued} queued now, {total - queued} already held; storage {where}")
    else:
        echo(f"sweep {sweep.name}: {sweep.method} search, run_cap {sweep.spec.run_cap}, pruner {sweep.spec.pruner}, "
             f"sampler seed {sweep.spec.optuna.sampler_seed}; storage {where}")

    plan = WorkerPlan(sweep=sweep, sweep_dir=sweep_dir, storage=location, fit_fn=fit_fn,
                      threads=max(1, _cores() // workers) if workers > 1 else None)
    interrupted = False
    if workers == 1:
        interrupted = run_worker(plan)
    else:
        processes = start_workers(plan, workers)
        while processes:
            try:
                for process in processes:
                    process.join()
                break
            except KeyboardInterrupt:
                interrupted = True
                echo("interrupted: workers finish their current step, save and stop")
        interrupted = interrupted or any(p.exitcode == 130 for p in processes)
        for index, process in enumerate(processes):
            if process.exitcode == 2:
                raise SweepError(f"worker {index} stopped with an error (see above)")
            if process.exitcode and process.exitcode < 0:
                name = signal.Signals(-process.exitcode).name
                echo(f"worker {index} (pid {process.pid}) was killed by {name}; its trial is retried once its heartbeat "
                     f"is {sweep.spec.optuna.grace_period} s old (by another worker, or by rerunning this command)")

    rows = write_trials_csv(store, study_id, sweep, sweep_dir)
    for line in summarize(rows, sweep):
        echo(line)
    runs = sweep_dir / "runs"
    kept = "kept" if sweep.spec.keep_last else "deleted after each trial"
    echo(f"disk used by trial runs: {_human(disk_usage(runs))} in {runs} (best.pt kept for every trial; last.pt {kept})")
    echo(f"trials: {sweep_dir / 'trials.csv'}")
    pending = _pending(store.get_all_trials(study_id, deepcopy=False), sweep)
    if pending:
        what = "cell x seed trial(s)" if sweep.method == "grid" else "trial(s) of run_cap"
        echo(f"{pending} {what} not done (waiting, failed, interrupted or stale): rerun the same command to run them")
    code = 130 if interrupted else (1 if pending else 0)
    return SweepOutcome(sweep_dir=sweep_dir, rows=rows, pending=pending, exit_code=code)


def _budget_used(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """random/bayes: the trials that count towards run_cap.

    A stale trial's retry re-runs the same sample (not a new one); a trial stopped by Ctrl-C or
    SIGTERM gives its place back, so a rerun completes the budget. Failed trials count, so a
    systematic failure cannot loop forever.
    """
    return [t for t in trials if "failed_trial" not in t.system_attrs and t.user_attrs.get("status") != "interrupted"]


def _pending(trials: Sequence[FrozenTrial], sweep: Sweep) -> int:
    """What a rerun would still run: grid cells x seeds held by no finished trial; random/bayes:
    trials short of run_cap."""
    if sweep.method != "grid":
        return max(0, (sweep.spec.run_cap or 0) - len(_budget_used(trials)))
    done = {t.user_attrs.get("config_hash") for t in trials if _holds(t) and t.state not in (
        TrialState.WAITING, TrialState.RUNNING)}
    return sum(1 for seed in sweep.seeds for cell in sweep.cells if cell_config_hash(sweep, cell, seed)[0] not in done)


# --------------------------------------------------------------------------- W&B engine

WANDB_HINT = ("run the Optuna engine instead (drop --engine wandb; it works offline, and "
              "tracking.wandb.mode=offline logs every trial to W&B for a later `wandb sync`)")


def check_wandb_available(timeout_s: float = 5.0) -> str:
    """Fail fast (one line, within `timeout_s`) when W&B sweeps cannot work here; return the server URL."""
    from core.tracking import DEFAULT_WANDB_URL, server_answers, wandb_credentials

    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in ("offline", "dryrun", "disabled"):
        raise SweepError(f"--engine wandb needs the W&B server, but WANDB_MODE={mode}; {WANDB_HINT}")
    base_url = os.environ.get("WANDB_BASE_URL") or DEFAULT_WANDB_URL
    if wandb_credentials(base_url) is None:
        raise SweepError(f"--engine wandb needs W&B credentials (WANDB_API_KEY or `wandb login`) and network; {WANDB_HINT}")
    if not server_answers(base_url, timeout_s):
        raise SweepError(f"--engine wandb: the W&B server {base_url} did not answer within {timeout_s:.0f} s "
                         f"(no network?); {WANDB_HINT}")
    return base_url


def _agent_params() -> dict[str, Any]:
    """The parameters `wandb.agent` chose for this run (it writes them before calling the function)."""
    path = os.environ.get("WANDB_SWEEP_PARAM_PATH")
    if not path or not Path(path).is_file():
        raise SweepError("wandb.agent gave no sweep parameters (WANDB_SWEEP_PARAM_PATH is unset)")
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    return {k: v["value"] for k, v in data.items() if isinstance(v, dict) and "value" in v}


def run_wandb_sweep(sweep: Sweep, *, sweep_id: str | None, results: Path, fit_fn: FitFn | None,
                    echo: Callable[[str], None] = _print) -> SweepOutcome:
    """Create (or join with `sweep_id`) a W&B sweep and run its trials in this process."""
    check_wandb_available()
    import wandb

    w = sweep.base.tracking.wandb
    sweep_dir = results / "sweeps" / sweep.name
    check_writable(sweep_dir)
    if sweep_id is None:
        sweep_id = wandb.sweep(to_wandb_config(sweep), entity=w.entity, project=w.project)
    echo(f"W&B sweep {sweep_id} ({w.entity or 'default entity'}/{w.project}); results in {sweep_dir}")
    fit = fit_fn or _real_fit()
    rows: list[dict[str, Any]] = []

    def one_run() -> None:
        overrides, seed = wandb_overrides(sweep, _agent_params())
        label = cell_label(overrides)
        spec = sweep.trial_spec(overrides, seed, f"{sweep.name}.w{len(rows):04d}", label)
        from core.spec import override_spec

        spec = override_spec(spec, {"tracking.wandb.mode": "online"})  # joins the agent's run
        run_dir = new_run_dir(sweep_dir, spec.name, create=False)
        result = fit(spec, run_dir, tracker=_tracker(spec, run_dir))
        if not sweep.spec.keep_last and result.status != "interrupted":
            (run_dir / "checkpoints" / "last.pt").unlink(missing_ok=True)
        rows.append({"cell": label, "seed": seed, "status": result.status, "run_dir": str(run_dir),
                     "val/dice": result.metrics.get("val/dice")})

    count = sweep.spec.run_cap if sweep.method != "grid" else None
    wandb.agent(sweep_id, function=one_run, entity=w.entity, project=w.project, count=count)
    runs = sweep_dir / "runs"
    echo(f"{len(rows)} runs; disk used by trial runs: {_human(disk_usage(runs))} in {runs}")
    return SweepOutcome(sweep_dir=sweep_dir, rows=rows, pending=0, exit_code=0)
