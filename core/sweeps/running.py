"""Running trials in a storage: claiming a WAITING trial (exactly one worker wins), the heartbeat
a running trial's worker stamps, and which RUNNING trials are stale (their worker is gone).
With `storage.py`, the only module that touches Optuna's private API (`_trial_id`,
`optuna.storages._heartbeat`, `_get_stale_trial_ids`), each use behind a small function.
"""
from __future__ import annotations

import logging
import threading
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import FrozenTrial, TrialState

log = logging.getLogger(__name__)


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """The storage's id of a trial (what every storage call takes; `number` is per study)."""
    return trial._trial_id


def is_retry(trial: FrozenTrial) -> bool:
    """Whether Optuna's retry callback created `trial` to re-run a stale one."""
    return "failed_trial" in trial.system_attrs


def claim_waiting(study: optuna.Study, storage: BaseStorage, study_id: int) -> optuna.Trial | None:
    """Take one WAITING trial: the storage's WAITING -> RUNNING update succeeds for one caller only.

    RDBStorage does it under SELECT ... FOR UPDATE and returns False when the row is no longer
    WAITING; JournalStorage appends the update to the log and replays it in log order, so only
    the first RUNNING record of a WAITING trial takes effect. This is what `Study.ask` does,
    without its fallback of creating a fresh trial when the queue is empty.
    """
    for frozen in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.WAITING,)):
        try:
            if storage.set_trial_state_values(trial_id(frozen), state=TrialState.RUNNING):
                return optuna.Trial(study, trial_id(frozen))
        except UpdateFinishedTrialError:
            continue
    return None


def heartbeat_interval(storage: BaseStorage) -> int | None:
    """Seconds between heartbeats, or None for a storage without them."""
    return storage.get_heartbeat_interval() if isinstance(storage, BaseHeartbeat) else None


class Heartbeat:
    """Stamp a running trial's heartbeat now and every `interval` seconds, until exit."""

    def __init__(self, storage: BaseStorage, trial_id: int) -> None:
        self.storage, self.trial_id = storage, trial_id
        self.interval = heartbeat_interval(storage)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "Heartbeat":
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
                log.warning(f"warning: heartbeat of trial {self.trial_id} failed: {exc}")

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def stale_trials(store: BaseStorage, study_id: int, trials: list[FrozenTrial]) -> set[int]:
    """Numbers of the running trials whose heartbeat is older than the grace period (the storage's
    own rule: Optuna's RDB heartbeat table, or the journal's stamps)."""
    find = getattr(store, "_get_stale_trial_ids", None)
    if find is None:
        return set()
    ids = set(find(study_id))
    return {t.number for t in trials if trial_id(t) in ids}
