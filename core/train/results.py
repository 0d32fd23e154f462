"""What training returns and raises: `EvalResult`, `RunResult`, `StopTraining`."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class StopTraining(Exception):
    """Raised by an `on_epoch_end` hook to end training early with a given status."""

    def __init__(self, status: str = "completed", reason: str = ""):
        super().__init__(reason or status)
        self.status = status
        self.reason = reason


class Diverged(Exception):
    """A non-finite training loss: the run ends as `diverged`, recording where."""

    def __init__(self, epoch: int, step: int, loss: float):
        super().__init__(f"non-finite loss {loss} at epoch {epoch}, step {step}")
        self.epoch, self.step = epoch, step


@dataclass(frozen=True)
class EvalResult:
    """One split's metrics (see `segsweep.metrics`): `dice` per image at 0.5, `dice_global` pooled
    at 0.5, `dice_soft_batch8` the study's soft Dice over batches of 8 in file order."""

    loss: float
    dice: float
    dice_global: float
    iou: float
    per_image: list[tuple[str, float, float]] = field(default_factory=list)
    dice_soft_batch8: float = float("nan")

    def metrics(self, split: str) -> dict[str, float]:
        return {f"{split}/loss": self.loss, f"{split}/dice": self.dice,
                f"{split}/dice_global": self.dice_global, f"{split}/iou": self.iou,
                f"{split}/dice_soft_batch8": self.dice_soft_batch8}


@dataclass(frozen=True)
class RunResult:
    status: str  # completed | diverged | interrupted | pruned | failed
    run_dir: Path
    best_epoch: int
    metrics: dict[str, Any]  # the summary.json contents
    signal: int | None = None  # the signal that interrupted the run, if any
