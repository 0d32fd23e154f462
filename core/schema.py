"""The record's schema: run statuses, metrics.csv columns and summary.json keys.

One place for the names every layer (train, sweeps, reports, tracking) reads and writes.
"""
from __future__ import annotations

METRIC_COLUMNS = (
    "epoch", "train/loss", "val/loss", "val/dice", "val/dice_global", "val/iou", "val/dice_soft_batch8", "lr",
    "epoch_s", "img_per_s",
)
WALL_CLOCK_COLUMNS = ("epoch_s", "img_per_s")  # differ between any two runs of the same spec
STATUSES = ("completed", "failed", "diverged", "interrupted", "pruned")  # summary.json is written when a run ends
COUNTED_STATUSES = ("completed", "diverged")  # runs whose best val/dice counts in an ablation
TESTED_STATUSES = ("completed", "diverged", "pruned")  # runs whose best checkpoint is tested at the end

# summary.json: NaN until the final test has run
TEST_KEYS = ("test/dice", "test/dice_global", "test/iou", "test/dice_soft_batch8")
SUMMARY_KEYS = ("status", "best_epoch", "val/dice", "epochs_run", "wall_s", *TEST_KEYS)  # always present
