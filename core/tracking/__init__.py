"""Trackers that mirror a run's local record to W&B (offline-first) and TensorBoard.

The local record written by the trainer is the source of truth: a tracker that fails warns once,
disables itself and lets training carry on. `load_wandb_log` reads W&B's offline transaction log.

    base.py                 the `Tracker` contract, the failure guard, `MultiTracker`
    wandb_mode.py           W&B credentials and the mode (`auto` -> online/offline), no login
    wandb_tracker.py        `WandbTracker` (imports `wandb` only when a run starts)
    tensorboard_tracker.py  `TensorBoardTracker` (imports TensorBoard only when a run starts)
    hparams.py              TensorBoard HParams summaries of one run, written into its own writer
    offline_log.py          reading a run's `.wandb` transaction log
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from ..spec import ExperimentSpec
from .base import GuardedTracker, MultiTracker, Tracker, TrackingWarning
from .offline_log import (
    LOG_FLUSH_TIMEOUT_S,
    WandbLog,
    find_wandb_log,
    load_wandb_log,
    read_wandb_records,
    wait_for_wandb_log,
)
from .tensorboard_tracker import TensorBoardTracker
from .wandb_mode import DEFAULT_WANDB_URL, PROBE_TIMEOUT_S, resolve_wandb_mode, server_answers, wandb_credentials
from .wandb_tracker import FINISH_TIMEOUT_S, INIT_TIMEOUT_S, WandbTracker

__all__ = [
    "DEFAULT_WANDB_URL", "FINISH_TIMEOUT_S", "INIT_TIMEOUT_S", "LOG_FLUSH_TIMEOUT_S", "PROBE_TIMEOUT_S",
    "GuardedTracker", "MultiTracker", "TensorBoardTracker", "Tracker", "TrackingWarning", "WandbLog",
    "WandbTracker", "build_tracker", "find_wandb_log", "load_wandb_log", "read_wandb_records",
    "resolve_wandb_mode", "server_answers", "wait_for_wandb_log", "wandb_credentials",
]


def build_tracker(spec: ExperimentSpec, run_dir: Path | None = None,
                  factor_levels: Mapping[str, Sequence[Any]] | None = None) -> Tracker:
    """The trackers `spec.tracking` asks for: W&B unless `mode: disabled`, TensorBoard if set.

    Nothing is imported or contacted here; `start` does that. `run_dir` is accepted for the
    contract's signature: every tracker writes inside the run_dir given to `start`.
    `factor_levels`: a sweep's factors and their levels (TensorBoard's HParams domains).
    """
    trackers: list[Tracker] = []
    if spec.tracking.wandb.mode != "disabled":
        trackers.append(WandbTracker())
    if spec.tracking.tensorboard:
        trackers.append(TensorBoardTracker(factor_levels))
    if not trackers:
        return Tracker()
    return trackers[0] if len(trackers) == 1 else MultiTracker(trackers)
