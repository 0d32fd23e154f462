"""`segsweep sweep SWEEP --status` (any launcher): grid cells x seeds per cell as done (completed,
pruned, diverged) / running / waiting / failed, or a search's trials, read from the storage, with
the SLURM job (else host:pid) holding each running trial."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from optuna.trial import FrozenTrial, TrialState

from ..errors import SweepError
from .cells import Sweep
from .running import stale_trials
from .storage import HIDDEN, is_rdb_url, masked_url, open_storage, resolve_rdb_url
from .study import SETTLED_FAILURES, holds, pending_trials, planned_cells

STATES = ("done", "running", "stale", "waiting", "failed")


@dataclass(frozen=True)
class Row:
    label: str
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATES, 0))


@dataclass(frozen=True)
class Running:
    number: int
    label: str
    seed: object
    holder: str
    epochs: int  # epochs reported so far
    stale: bool = False  # no heartbeat within the grace period: its worker is gone (or hung)


@dataclass(frozen=True)
class SweepStatus:
    name: str
    storage: str
    started: bool
    rows: tuple[Row, ...] = ()
    running: tuple[Running, ...] = ()
    pending: int = 0  # what a rerun of the command would still run


def _state(trials: list[FrozenTrial], stale: set[int]) -> str:
    """The state of one cell x seed from the trials of its config hash (`stale`: the numbers of
    running trials without a heartbeat within the grace period)."""
    if any(t.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
            t.state == TrialState.FAIL and t.user_attrs.get("status") in SETTLED_FAILURES) for t in trials):
        return "done"
    running = [t for t in trials if t.state == TrialState.RUNNING]
    if running:
        return "stale" if all(t.number in stale for t in running) else "running"
    if any(t.state == TrialState.WAITING for t in trials):
        return "waiting"
    return "failed" if trials else "waiting"


def holder(trial: FrozenTrial) -> str:
    attrs = trial.user_attrs
    worker = attrs.get("worker") or (f"{attrs['host']}:{attrs['pid']}" if "host" in attrs else "?")
    return f"slurm job {attrs['slurm_job']} ({worker})" if attrs.get("slurm_job") else worker


def sweep_status(sweep: Sweep, location: str) -> SweepStatus:
    """The sweep's cells (or trials) by state, read from `location` (nothing is created: a missing
    journal or SQLite file is a sweep not started; a database without Optuna's tables is refused)."""
    where = masked_url(location) if is_rdb_url(location) else location
    if not is_rdb_url(location) and not Path(location).is_file():
        return SweepStatus(sweep.name, where, started=False)
    if is_rdb_url(location) and not _has_studies(location):
        return SweepStatus(sweep.name, where, started=False)
    store = open_storage(location, sweep.spec.optuna)
    try:
        study_id = store.get_study_id_from_name(sweep.name)
    except KeyError:
        return SweepStatus(sweep.name, where, started=False)
    trials = store.get_all_trials(study_id, deepcopy=False)
    stale = stale_trials(store, study_id, trials)
    running = tuple(Running(t.number, str(t.user_attrs.get("cell", "")), t.user_attrs.get("seed"), holder(t),
                            len(t.intermediate_values), t.number in stale)
                    for t in trials if t.state == TrialState.RUNNING)
    if sweep.method == "grid":
        by_hash: dict[str, list[FrozenTrial]] = {}
        for trial in trials:
            by_hash.setdefault(str(trial.user_attrs.get("config_hash")), []).append(trial)
        rows = []
        planned = planned_cells(sweep, set(by_hash))  # adaptive seeds: only the seeds a round queued
        for cell in sweep.cells:
            row = Row(cell.label)
            for _, chash in planned[cell.label]:
                row.counts[_state(by_hash.get(chash, []), stale)] += 1
            rows.append(row)
    else:
        row = Row(f"{sweep.method} search (run_cap {sweep.spec.run_cap})")
        for trial in trials:
            if trial.state == TrialState.FAIL and holds(trial):
                row.counts["done"] += 1
            elif trial.state == TrialState.FAIL:
                row.counts["failed"] += 1
            elif trial.state == TrialState.RUNNING:
                row.counts["stale" if trial.number in stale else "running"] += 1
            else:
                row.counts["waiting" if trial.state == TrialState.WAITING else "done"] += 1
        rows = [row]
    return SweepStatus(sweep.name, where, True, tuple(rows), running, pending_trials(trials, sweep))


def _has_studies(location: str) -> bool:
    """False for a missing SQLite file; a database without Optuna's tables is refused. Checked
    before opening the storage, which would create them (or the file)."""
    import sqlalchemy

    url = sqlalchemy.engine.make_url(resolve_rdb_url(location))
    if url.get_backend_name() == "sqlite":
        if not url.database or url.database == ":memory:" or not Path(url.database).is_file():
            return False
    args = {"connect_timeout": 10} if url.get_backend_name() in ("postgresql", "mysql") else {}
    engine = sqlalchemy.create_engine(url, connect_args=args)
    try:
        found = sqlalchemy.inspect(engine).has_table("studies")
    except Exception as exc:  # driver missing, server down, wrong credentials
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SweepError(f"--status: storage {masked_url(location)}: cannot open ({reason})") from None
    finally:
        engine.dispose()
    if not found:
        raise SweepError(f"--status: storage {masked_url(location)}: no segsweep/optuna study in this database "
                         "(no `studies` table); check the URL; nothing was created")
    return found


def status_lines(status: SweepStatus) -> list[str]:
    """The table `--status` prints."""
    if not status.started:
        return [f"sweep {status.name}: not started (no study in {status.storage})"]
    totals = {s: sum(r.counts[s] for r in status.rows) for s in STATES}
    shown = [s for s in STATES if s != "stale" or totals[s]]  # a stale column only when a trial is stale
    lines = [f"sweep {status.name}: " + ", ".join(f"{totals[s]} {s}" for s in shown)
             + f"; {status.pending} still to run; storage {status.storage}"]
    width = max([len(r.label) for r in status.rows] + [4])
    lines.append(f"{'cell':<{width}}  " + "  ".join(f"{s:>7}" for s in shown))
    lines += [f"{r.label:<{width}}  " + "  ".join(f"{r.counts[s]:>7}" for s in shown) for r in status.rows]
    for run in status.running:
        if run.stale:
            lines.append(f"stale: trial {run.number} {run.label} seed {run.seed}, {run.epochs} epoch(s) reported, was "
                         f"held by {run.holder}, no heartbeat within the grace period: its worker is gone; the next "
                         "worker (or a rerun of the sweep command) fails it and runs it again")
        else:
            lines.append(f"running: trial {run.number} {run.label} seed {run.seed}, {run.epochs} epoch(s) reported, "
                         f"held by {run.holder}")
    if totals["failed"] and not status.running and not totals["waiting"]:
        lines.append(f"{totals['failed']} failed: rerun the sweep command (any launcher) to retry them")
    return lines


def status_location(sweep: Sweep, storage: str | None, results: Path) -> str:
    """Where the sweep's study is: --storage, the sweep file's optuna.storage, or the default journal."""
    location = storage or sweep.spec.optuna.storage or str(results / "sweeps" / sweep.name / "journal.log")
    if is_rdb_url(location) and HIDDEN in location:
        raise SweepError(f"--status: storage {location} has its password hidden ({HIDDEN}); give the URL without "
                         "it, postgresql://USER@HOST/DB, and keep the password in PGPASSWORD or ~/.pgpass")
    return location if is_rdb_url(location) else os.path.expanduser(location)
