"""`TensorBoardTracker`: event files in `<run_dir>/tensorboard/` (imported only when a run starts)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..spec import ExperimentSpec, spec_to_yaml
from .base import GuardedTracker, plain


class TensorBoardTracker(GuardedTracker):
    """Event files in `<run_dir>/tensorboard/`: every metric as a scalar (step = epoch), the
    prediction grid as image `predictions`, the resolved spec and the summary as text."""

    name = "TensorBoard tracker"

    def __init__(self) -> None:
        self.writer: Any = None
        self.log_dir: Path | None = None

    def start(self, spec: ExperimentSpec, run_dir: Path, meta: Mapping[str, Any]) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.log_dir = Path(run_dir) / "tensorboard"
            self.writer = SummaryWriter(log_dir=str(self.log_dir))
            self.active = True
            header = "  \n".join(f"{k}: {meta[k]}" for k in ("git_sha", "config_hash", "arm_hash") if k in meta)
            self.writer.add_text("config", f"{header}\n\n```yaml\n{spec_to_yaml(spec)}```", 0)
        except Exception as exc:
            self._fail("start", exc)

    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        if not self.active:
            return
        try:
            for key, value in metrics.items():
                value = plain(value)
                if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(key, value, epoch)
        except Exception as exc:
            self._fail(f"log_epoch(epoch={epoch})", exc)

    def log_predictions(self, epoch: int, grid: np.ndarray) -> None:
        if not self.active:
            return
        try:
            self.writer.add_image("predictions", np.ascontiguousarray(grid), epoch, dataformats="HWC")
        except Exception as exc:
            self._fail(f"log_predictions(epoch={epoch})", exc)

    def finish(self, summary: Mapping[str, Any], best_checkpoint: Path | None) -> None:
        if not self.active:
            return
        try:
            text = json.dumps({k: plain(v) for k, v in summary.items()}, indent=2, default=str)
            self.writer.add_text("summary", f"```json\n{text}\n```", int(summary.get("best_epoch") or 0))
            self.writer.close()  # flushes
            self.active, self.writer = False, None
        except Exception as exc:
            self._fail("finish", exc)

    def _abandon(self) -> None:
        writer, self.writer = self.writer, None
        if writer is not None:
            writer.close()
