"""`TensorBoardTracker`: event files in `<run_dir>/tensorboard/<arm>-s<seed>/` (imported only
when a run starts), with the run's HParams, so `tensorboard --logdir` over a sweep compares arms."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..spec import ExperimentSpec, spec_to_yaml
from .base import GuardedTracker, plain
from .hparams import end_summary, run_label, start_summaries

TEST_METRICS = ("test/dice", "test/dice_global", "test/iou")  # logged once, at the end


class TensorBoardTracker(GuardedTracker):
    """Event files in `<run_dir>/tensorboard/<arm>-s<seed>/` (TensorBoard's run name ends with
    the arm and seed): every metric as a scalar (step = epoch), the test metrics at the last
    epoch, the prediction grid as image `predictions`, the resolved spec and the summary as
    text, and the HParams (see `hparams.py`). `factor_levels`: a sweep's factors and their
    levels, written as the HParams' discrete domains."""

    name = "TensorBoard tracker"

    def __init__(self, factor_levels: Mapping[str, Sequence[Any]] | None = None) -> None:
        self.factor_levels = dict(factor_levels or {})
        self.writer: Any = None
        self.log_dir: Path | None = None
        self.last_epoch = 0

    def start(self, spec: ExperimentSpec, run_dir: Path, meta: Mapping[str, Any]) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.log_dir = Path(run_dir) / "tensorboard" / run_label(spec)
            self.writer = SummaryWriter(log_dir=str(self.log_dir))
            self.active = True
            header = "  \n".join(f"{k}: {meta[k]}" for k in ("git_sha", "config_hash", "arm_hash") if k in meta)
            self.writer.add_text("config", f"{header}\n\n```yaml\n{spec_to_yaml(spec)}```", 0)
            for summary in start_summaries(spec, meta, self.factor_levels):
                self.writer.file_writer.add_summary(summary)
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
            self.last_epoch = max(self.last_epoch, int(epoch))
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
            step = int(summary.get("epochs_run") or self.last_epoch)
            for key in TEST_METRICS:  # of the best checkpoint, beside the curves' last epoch
                value = plain(summary.get(key))
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(key, value, step)
            text = json.dumps({k: plain(v) for k, v in summary.items()}, indent=2, default=str)
            self.writer.add_text("summary", f"```json\n{text}\n```", int(summary.get("best_epoch") or 0))
            self.writer.file_writer.add_summary(end_summary(summary.get("status")))
            self.writer.close()  # flushes
            self.active, self.writer = False, None
        except Exception as exc:
            self._fail("finish", exc)

    def _abandon(self) -> None:
        writer, self.writer = self.writer, None
        if writer is not None:
            writer.close()
