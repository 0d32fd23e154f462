"""The Optuna study behind a sweep: its sampler and pruner, creating or joining it, the grid's
queue of cells x seeds, and which trial holds which cell (so each runs exactly once)."""
from __future__ import annotations

import time
import warnings
from typing import Sequence

import optuna
from optuna.exceptions import DuplicatedStudyError, ExperimentalWarning
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from ..errors import SweepError
from .cells import PlannedTrial, Sweep
from .resume import resumes
from .running import is_retry

OCCUPYING = (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)
SETTLED_FAILURES = ("diverged",)  # a FAIL with this status is the cell's outcome: never re-run


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
        name_objective(study, sweep)
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
    if study.metric_names is None:  # a study made before segsweep named its objective
        name_objective(study, sweep)
    return study


def name_objective(study: optuna.Study, sweep: Sweep) -> None:
    """Name the objective after the sweep's metric (optuna-dashboard shows "val/dice", not "Objective 0")."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        study.set_metric_names([sweep.spec.metric.name])


def holds(trial: FrozenTrial) -> bool:
    """Whether `trial` holds its cell: queued, running, done, or failed in a way a rerun would repeat."""
    if trial.state in OCCUPYING:
        return True
    return trial.state == TrialState.FAIL and trial.user_attrs.get("status") in SETTLED_FAILURES


def enqueue_grid(study: optuna.Study, sweep: Sweep, planned: Sequence[PlannedTrial] | None = None) -> int:
    """Queue every planned trial whose config hash no trial holds yet (idempotent across reruns):
    the given ones (rounds of a design), else every cell x seed (`Sweep.planned()`).

    Seed-major order: all cells of the first seed finish first, so a partial sweep still compares
    every arm. The seed is a user attribute (and part of the config hash), never a parameter: it
    is a replicate, not a choice to rank (studies queued before that hold it as a parameter too;
    they resume unchanged, since a cell's identity is its config hash). Two drivers enqueueing at
    the same moment may both queue a cell; the claim rule in `duplicate_of` lets only the
    lower-numbered copy run.
    """
    held = {t.user_attrs.get("config_hash") for t in study.get_trials(deepcopy=False) if holds(t)}
    queued = 0
    for trial in sweep.planned() if planned is None else planned:
        if trial.config_hash in held:
            continue
        attrs = {"config_hash": trial.config_hash, "arm_hash": trial.arm_hash, "seed": trial.seed,
                 "cell": trial.cell.label, "overrides": trial.cell.overrides}
        study.enqueue_trial(dict(trial.cell.params), user_attrs={**attrs, **({"round": trial.round} if trial.round else {})})
        held.add(trial.config_hash)
        queued += 1
    return queued


def duplicate_of(trials: Sequence[FrozenTrial], me: FrozenTrial) -> FrozenTrial | None:
    """A trial that holds `me`'s cell before it: then `me` must not run.

    Trial numbers are dense and assigned in storage order (the journal's log order; RDBStorage
    locks the study row while numbering), so a reader that sees `me` sees every lower number.
    Claim: two trials a < b of one hash never both run concurrently, and never both COMPLETE.
    b runs only if its check, made after b existed and hence seeing a, found a not holding, i.e.
    FAIL (a FAIL other than `diverged`). FAIL is final: a's claim (WAITING -> RUNNING) came before
    it, so if a ran, it had finished failing before b started (b is its retry), or it was failed
    as stale while its worker was merely slow: that copy then stops at its next epoch (the hook
    sees the trial is no longer RUNNING) and its `tell` is refused, so only b can COMPLETE.
    A COMPLETE trial of the hash, whatever its number, also makes `me` a duplicate. A resume
    copy (`launch_resume`) skips the trial it continues: that one stopped training before
    queuing the copy and is failed right after.
    """
    chash = me.user_attrs.get("config_hash")
    for other in trials:
        if other.number in (me.number, resumes(me)) or other.user_attrs.get("config_hash") != chash:
            continue
        if other.state == TrialState.COMPLETE or (other.number < me.number and holds(other)):
            return other
    return None


def budget_used(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """random/bayes: the trials that count towards run_cap.

    A stale trial's retry re-runs the same sample (not a new one); a trial stopped by Ctrl-C or
    SIGTERM gives its place back, so a rerun completes the budget. Failed trials count, so a
    systematic failure cannot loop forever.
    """
    return [t for t in trials if not is_retry(t) and t.user_attrs.get("status") != "interrupted"]


def planned_cells(sweep: Sweep, queued: set[str | None]) -> dict[str, list[tuple[int, str]]]:
    """Per grid cell label, its (seed, config hash) to run in seed order: every seed of `seeds:`;
    for a sweep in rounds, the runs of the initial rounds and of each later round that was queued
    (some of its config hashes are in `queued`, the config hashes of the study's trials), never
    the rounds up to the maximum that nobody asked for (they are resolved one at a time)."""
    out: dict[str, list[tuple[int, str]]] = {cell.label: [] for cell in sweep.cells}
    if not sweep.rounds:
        for trial in sweep.planned():
            out[trial.cell.label].append((trial.seed, trial.config_hash))
        return out
    design = sweep.design
    for round_ in range(1, design.rounds_max + 1):
        trials = sweep.planned(round_)
        if round_ > design.schedule.initial and not any(t.config_hash in queued for t in trials):
            break
        for trial in trials:
            out[trial.cell.label].append((trial.seed, trial.config_hash))
    for runs in out.values():
        runs.sort()
    return out


def _settled(trials: Sequence[FrozenTrial]) -> set[str | None]:
    return {t.user_attrs.get("config_hash") for t in trials if holds(t) and t.state not in (
        TrialState.WAITING, TrialState.RUNNING)}


def pending_trials(trials: Sequence[FrozenTrial], sweep: Sweep) -> int:
    """What a rerun would still run: grid cells x seeds (as `planned_cells`) held by no finished
    trial; random/bayes: trials short of run_cap."""
    if sweep.method != "grid":
        return max(0, (sweep.spec.run_cap or 0) - len(budget_used(trials)))
    done = _settled(trials)
    planned = planned_cells(sweep, {t.user_attrs.get("config_hash") for t in trials})
    return sum(1 for runs in planned.values() for _, chash in runs if chash not in done)


def trials_done(trials: Sequence[FrozenTrial], sweep: Sweep) -> tuple[int, int]:
    """(done, total) for the sweep's progress bar: the cells x seeds of `planned_cells` (grid) or
    run_cap trials settled."""
    if sweep.method != "grid":
        total = sweep.spec.run_cap or 0
        finished = [t for t in trials if t.state not in (TrialState.WAITING, TrialState.RUNNING)]
        return min(total, total - pending_trials(finished, sweep)), total
    done = _settled(trials)
    planned = planned_cells(sweep, {t.user_attrs.get("config_hash") for t in trials})
    return (sum(1 for runs in planned.values() for _, chash in runs if chash in done),
            sum(len(runs) for runs in planned.values()))
