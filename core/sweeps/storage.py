"""Where a sweep's study lives: a journal file (with heartbeats) or an RDB URL, opened with retries.
`open_storage` is the one way a storage is opened, by sweeps, `--status`, the dashboard and reports.

With `running.py` (claims, heartbeats, stale trials), the one module that touches Optuna's
private API (`optuna.storages._heartbeat`, `_CachedStorage`, `_get_stale_trial_ids`); each use
sits behind a small function, and tests/test_sweeps.py exercises every one on the Optuna
versions pyproject allows.
"""
from __future__ import annotations

import importlib.util
import logging
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.storages import BaseStorage, JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback, _CachedStorage
from optuna.storages._heartbeat import BaseHeartbeat  # Optuna's extension point for storages with heartbeats
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from ..errors import SweepError
from .running import (  # noqa: F401  (re-exported: they lived here before running.py)
    Heartbeat, claim_waiting, heartbeat_interval, is_retry, trial_id,
)
from .spec import OptunaSpec

log = logging.getLogger(__name__)

HEARTBEAT_ATTR = "segsweep:heartbeat"  # system attr: last heartbeat (epoch seconds) of a journal trial
HIDDEN = "***"  # what a masked URL shows instead of a password
SECRET_QUERY_KEYS = ("password", "passwd", "pwd")  # libpq, MySQL drivers


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """Optuna's JournalStorage with the heartbeat Optuna 5 gives only to RDBStorage.

    A running trial's worker stamps `HEARTBEAT_ATTR` into the trial's system attrs every
    `heartbeat_interval` seconds (one journal line each); a RUNNING trial whose last stamp (or
    start, whichever is later) is older than `grace_period` is stale, and Optuna's own
    `fail_stale_trials` fails it and calls the retry callback, exactly as with an RDB.
    """

    def __init__(self, backend: JournalFileBackend, heartbeat_interval: int, grace_period: int,  # noqa: F811
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
                stale.append(trial_id(trial))
        return stale

    def get_heartbeat_interval(self) -> int:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        return self._stale_callback


def is_rdb_url(location: str) -> bool:
    return "://" in location or location.startswith("sqlite:")


def masked_url(url: str) -> str:
    """The URL without its password (also one in the query string), for messages and records;
    a journal file path as it is. Parsed by SQLAlchemy, as the storage will parse it."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    if not is_rdb_url(url):
        return url
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # unparsable: show nothing after the scheme
        return url.split(":", 1)[0] + "://***"
    hidden = {key: HIDDEN for key in parsed.query if key.lower() in SECRET_QUERY_KEYS}
    return parsed.update_query_dict(hidden).render_as_string(hide_password=True)


def hides_secret(url: str) -> bool:
    """Whether `url` is a masked one (its password shown as ***): it cannot open the storage."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    return HIDDEN in (parsed.password, parsed.host) or any(parsed.query.get(k) == HIDDEN for k in SECRET_QUERY_KEYS)


def quiet_optuna() -> None:
    """Optuna's INFO lines and experimental-feature warnings off (segsweep says what happens)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")


def locate_storage(target: str) -> tuple[str, str | None]:
    """(storage, study name) for `segsweep dashboard TARGET`: a sweep folder (its sweep.yaml says
    where the study lives, and its name), a journal file, or a database URL (every study in it)."""
    if is_rdb_url(target):
        return target, None
    path = Path(target)
    if path.is_file():
        return str(path), None
    if not path.is_dir():
        raise SweepError(f"{target}: no such folder or file; expected a sweep folder (results/sweeps/NAME), "
                         "its journal.log, or a database URL (postgresql://user@host/db)")
    record = path / "sweep.yaml"
    if not record.is_file():
        raise SweepError(f"{target}: not a sweep folder (no sweep.yaml); expected a folder made by `segsweep sweep`, "
                         "a journal file, or a database URL")
    import yaml

    tree = yaml.safe_load(record.read_text()) or {}
    name, location = tree.get("name"), (tree.get("optuna") or {}).get("storage")
    if not isinstance(name, str) or not isinstance(location, str):
        raise SweepError(f"{record}: expected the keys `name` and `optuna.storage` that `segsweep sweep` records")
    if is_rdb_url(location):
        if hides_secret(location):
            raise SweepError(f"{record}: the storage is recorded as {location}, its password hidden; give the URL "
                             "itself (keep the password in PGPASSWORD or ~/.pgpass): segsweep dashboard "
                             "postgresql://USER@HOST/DB")
        return location, name
    journal = path / location
    if not journal.is_file():
        raise SweepError(f"{record}: its journal {journal} does not exist (moved or deleted?); "
                         "give the journal file or database URL itself")
    return str(journal), name


def resolve_rdb_url(url: str) -> str:
    """A plain `postgresql://` URL gets the driver that is installed: psycopg 3 (the `postgres` extra)
    first, else psycopg2 (SQLAlchemy 2.0 alone would pick psycopg2, 2.1 psycopg 3). A URL that
    names its driver (`postgresql+psycopg2://`) is kept as given."""
    if url.startswith("postgresql://"):
        for module in ("psycopg", "psycopg2"):
            if importlib.util.find_spec(module) is not None:
                return f"postgresql+{module}://" + url.removeprefix("postgresql://")
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
            raise SweepError(f"storage {masked_url(location)}: its database driver is not installed; "
                             "for PostgreSQL: pip install 'segsweep[postgres]'") from None
        except Exception as exc:  # sqlalchemy's errors: bad URL, server down, wrong credentials
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise SweepError(f"storage {masked_url(location)}: cannot open ({reason}); check the URL and that the "
                             "database server is running and reachable") from None
        # What Optuna itself wraps every RDB study in; one object for the study and our claims.
        return _CachedStorage(rdb)
