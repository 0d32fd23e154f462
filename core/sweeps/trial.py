"""One Optuna trial of a sweep: choose its cell (or sample its parameters), train it through
`fit` with an `on_epoch_end` hook that reports, prunes and notices a stale copy, record its outcome."""
from __future__ import annotations

import logging
import math
import os
import socket
import threading
import traceback
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from ..errors import SegsweepError
from ..record import new_run_dir
from ..spec import arm_hash, config_hash
from .cells import Sweep, arm_choices
from .contract import FitFn, WorkerPlan, trial_tracker  # noqa: F401  (WorkerPlan: re-exported)
from .resume import queue_resume, reported_before, resume_dir, worker_attrs
from .spec import cell_label
from .running import Heartbeat, trial_id
from .study import duplicate_of, make_sampler

log = logging.getLogger(__name__)


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


def run_trial(study: optuna.Study, storage: BaseStorage, study_id: int, trial: optuna.Trial,
              plan: WorkerPlan, fit_fn: FitFn) -> str:
    """Train one claimed trial and record its outcome; returns the run's status.

    Outcomes: completed -> COMPLETE with the best reported metric; pruned -> PRUNED; diverged ->
    FAIL with status=diverged (the arm's result: kept, never re-run); failed or interrupted ->
    FAIL (a grid cell is re-queued by the next run of the command).
    """
    sweep = plan.sweep
    reported: list[float] = []
    lost = threading.Event()
    with Heartbeat(storage, trial_id(trial)):
        chosen = _choose(study, storage, study_id, trial, sweep)
        if chosen is None:
            return "duplicate"
        overrides, seed, label = chosen
        resume = resume_dir(trial)  # a resume copy (or a retry of one) whose folder still has last.pt
        reported.extend(reported_before(resume, sweep.spec.metric.name) if resume else [])
        trial.set_user_attr("overrides", overrides)
        trial.set_user_attr("seed", seed)
        trial.set_user_attr("cell", label)
        hook = _epoch_hook(trial, storage, sweep, reported, lost)
        status, summary, signum, run_dir = _train(trial, plan, fit_fn, chosen, hook, resume)
        if status == "interrupted" and signum is not None and plan.resume_interrupted \
                and not lost.is_set() and queue_resume(study, storage, trial, run_dir):
            log.info(f"trial {trial.number}: stopped by a signal; queued to resume from {run_dir}")
    if lost.is_set():
        log.info(f"trial {trial.number}: lost (marked stale while running); its retry owns the cell")
        return "lost"
    best = (max if sweep.spec.metric.goal == "maximize" else min)(reported) if reported else None
    if not _record(study, trial, status, summary, best):
        log.info(f"trial {trial.number}: was marked stale while it ran; its result stays in {run_dir} only")
        return "lost"
    if run_dir is not None and status != "interrupted" and not sweep.spec.keep_last:
        (run_dir / "checkpoints" / "last.pt").unlink(missing_ok=True)  # best.pt stays for the report
    shown = f"{sweep.spec.metric.name} {best:.4f}" if best is not None else summary.get("error", "")
    log.info(f"trial {trial.number}: {status} {shown}")
    return "signal" if signum is not None else status


def _choose(study: optuna.Study, storage: BaseStorage, study_id: int, trial: optuna.Trial,
            sweep: Sweep) -> tuple[dict[str, Any], int, str] | None:
    """(overrides, seed, cell label) of the trial; None when its grid cell is held by another trial."""
    if sweep.method != "grid":
        study.sampler = make_sampler(sweep, trial.number)
        overrides = _suggest(trial, sweep)
        return overrides, sweep.seeds[0], cell_label(overrides)
    attrs = storage.get_trial(trial_id(trial)).user_attrs
    overrides, seed, label = dict(attrs["overrides"]), int(attrs["seed"]), str(attrs["cell"])
    for key, choices in arm_choices(sweep).items():
        trial.suggest_categorical(key, list(choices))  # the enqueued values, recorded as params
    duplicate = duplicate_of(storage.get_all_trials(study_id, deepcopy=False), storage.get_trial(trial_id(trial)))
    if duplicate is None:
        return overrides, seed, label
    trial.set_user_attr("status", "duplicate")
    trial.set_user_attr("duplicate_of", duplicate.number)
    study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
    log.info(f"trial {trial.number}: {label} seed {seed} is already held by trial {duplicate.number}; skipped")
    return None


def _epoch_hook(trial: optuna.Trial, storage: BaseStorage, sweep: Sweep, reported: list[float],
                lost: threading.Event) -> Callable[[int, dict[str, float]], None]:
    """`fit`'s `on_epoch_end` for one trial: report the metric, stop a copy marked stale, prune."""
    from ..train import StopTraining

    metric = sweep.spec.metric.name
    prune = sweep.spec.pruner != "none" and (sweep.method != "grid" or sweep.spec.optuna.prune_grid)

    def on_epoch_end(epoch: int, metrics: dict[str, float]) -> None:
        value = float(metrics[metric])
        if math.isfinite(value):
            reported.append(value)
            trial.report(value, epoch)
        if storage.get_trial(trial_id(trial)).state != TrialState.RUNNING:
            lost.set()  # marked stale (no heartbeat for the grace period) and re-queued elsewhere
            raise StopTraining("interrupted", "the trial was marked stale and re-queued; stopping this copy")
        if prune and trial.should_prune():
            raise StopTraining("pruned", f"pruned by {sweep.spec.pruner} at epoch {epoch} ({metric} {value:.4f})")

    return on_epoch_end


def _train(trial: optuna.Trial, plan: WorkerPlan, fit_fn: FitFn, chosen: tuple[dict[str, Any], int, str],
           on_epoch_end: Callable[[int, dict[str, float]], None],
           resume: Path | None) -> tuple[str, dict[str, Any], Any, Path | None]:
    """(status, summary, signal, run_dir) of training the trial (continuing `resume`'s run folder
    when given); an error is a `failed` status."""
    sweep, (overrides, seed, label) = plan.sweep, chosen
    summary: dict[str, Any] = {}
    signum, run_dir = None, None
    try:
        if resume is None:
            spec = sweep.trial_spec(overrides, seed, f"{sweep.name}.t{trial.number:04d}", label)
            run_dir = new_run_dir(plan.sweep_dir, spec.name, create=False).resolve()
        else:  # continue the interrupted run in its folder, with its own spec
            from ..train.loop import load_run_spec

            spec, run_dir = load_run_spec(resume), resume
        for key, value in {"config_hash": config_hash(spec), "arm_hash": arm_hash(spec), "run_dir": str(run_dir),
                           "host": socket.gethostname(), "pid": os.getpid(), **worker_attrs(),
                           "status": "running"}.items():
            trial.set_user_attr(key, value)
        log.info(f"trial {trial.number}: {label} seed {seed} -> {run_dir}{' (resumed)' if resume else ''}")
        result = fit_fn(spec, run_dir, tracker=trial_tracker(spec, run_dir, sweep), on_epoch_end=on_epoch_end,
                        **({"resume": True} if resume else {}))
        status, summary, signum = result.status, dict(result.metrics), getattr(result, "signal", None)
    except SegsweepError as exc:  # e.g. a sampled combination the spec's cross-field rules refuse
        status, summary["error"] = "failed", str(exc)
    except Exception as exc:  # the sweep goes on; the run folder's summary.json has the record
        status, summary["error"] = "failed", f"{type(exc).__name__}: {exc}"
        log.error(traceback.format_exc().rstrip("\n"))
    return status, summary, signum, run_dir


def _record(study: optuna.Study, trial: optuna.Trial, status: str, summary: dict[str, Any],
            best: float | None) -> bool:
    """Store the outcome in the trial and finish it; False when the storage refuses (failed as stale)."""
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
        return False
    return True
