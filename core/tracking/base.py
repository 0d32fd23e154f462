"""The tracker contract: `Tracker` (every method a no-op), the guard that turns a failing backend
into a warning and a no-op, and `MultiTracker`, which forwards to several trackers.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..spec import ExperimentSpec


class TrackingWarning(UserWarning):
    """A tracker failed and was disabled; training and the local record carry on."""


class Tracker:
    """Mirror of one run. Every method is a no-op here; subclasses override what they log.

    Call order (rank 0 only): `start` once, then per epoch `log_epoch` and optionally
    `log_predictions`, then `finish` once (also for failed runs). Methods never raise.
    """

    sync_command: str | None = None  # `wandb sync ...` for an offline W&B run, once started

    def start(self, spec: ExperimentSpec, run_dir: Path, meta: Mapping[str, Any]) -> None:
        """`meta`: git_sha, config_hash, arm_hash."""

    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        """`metrics`: one metrics.csv row, e.g. {'train/loss': .., 'val/dice': .., 'lr': ..}."""

    def log_predictions(self, epoch: int, grid: np.ndarray) -> None:
        """`grid`: uint8 (H, W, 3) prediction overlay."""

    def finish(self, summary: Mapping[str, Any], best_checkpoint: Path | None) -> None:
        """`summary`: the summary.json dict; `best_checkpoint`: checkpoints/best.pt if any."""


class GuardedTracker(Tracker):
    """A tracker whose backend may fail: the first failure warns and turns it into a no-op."""

    name = "tracker"
    active = False
    error: str | None = None

    def _fail(self, action: str, exc: BaseException) -> None:
        self.active = False
        self.error = f"{action}: {type(exc).__name__}: {exc}"
        warnings.warn(
            f"{self.name} disabled after a failure in {self.error}; training continues and the "
            f"local run record is complete",
            TrackingWarning,
            stacklevel=3,
        )
        try:
            self._abandon()
        except Exception:  # the backend is already broken; nothing more to save
            pass

    def _abandon(self) -> None:
        """Release the backend after a failure (best effort)."""


def plain(value: Any) -> Any:
    """JSON-able scalar for W&B/TensorBoard (numpy/torch scalars become Python numbers)."""
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return str(value)


class MultiTracker(Tracker):
    """Forwards every call to each tracker in turn; one failing never stops the others."""

    def __init__(self, trackers: Sequence[Tracker]):
        self.trackers = list(trackers)

    @property
    def sync_command(self) -> str | None:  # type: ignore[override]
        return next((t.sync_command for t in self.trackers if t.sync_command), None)

    def _each(self, method: str, *args: Any) -> None:
        for tracker in self.trackers:
            try:
                getattr(tracker, method)(*args)
            except Exception as exc:  # a tracker broke its own contract: keep training anyway
                warnings.warn(f"{type(tracker).__name__}.{method} raised {type(exc).__name__}: {exc}",
                              TrackingWarning, stacklevel=3)

    def start(self, spec: ExperimentSpec, run_dir: Path, meta: Mapping[str, Any]) -> None:
        self._each("start", spec, run_dir, meta)

    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        self._each("log_epoch", epoch, metrics)

    def log_predictions(self, epoch: int, grid: np.ndarray) -> None:
        self._each("log_predictions", epoch, grid)

    def finish(self, summary: Mapping[str, Any], best_checkpoint: Path | None) -> None:
        self._each("finish", summary, best_checkpoint)
