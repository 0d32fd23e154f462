"""Segmentation metrics at threshold 0.5 from per-image counts: mean per-image Dice (`dice`, what
the course reports), dataset-level Dice (`dice_global`) and mean per-image IoU (`iou`).

Conventions: pixels with mask == 255 are ignored; foreground is mask == 1 and prediction is
p > 0.5; an image whose prediction and truth are both empty scores Dice = IoU = 1.
"""
from __future__ import annotations

from typing import Hashable, Literal, Sequence

import torch

Head = Literal["sigmoid", "logits"]
IGNORE = 255
THRESHOLD = 0.5


def probabilities(output: torch.Tensor, head: Head) -> torch.Tensor:
    """P(foreground) in fp32 from the model's output: sigmoid of logits, or the output itself."""
    if head == "logits":
        return torch.sigmoid(output.float())
    if head == "sigmoid":
        return output.float()
    raise ValueError(f"unknown head {head!r}; valid: sigmoid, logits")


@torch.no_grad()
def image_counts(output: torch.Tensor, mask: torch.Tensor, head: Head,
                 threshold: float = THRESHOLD) -> torch.Tensor:
    """Per-image pixel counts (B, 3) int64: columns `inter`, `pred`, `true` over valid pixels.

    output (B, 1, H, W) or (B, H, W) logits/probabilities; mask (B, H, W) uint8 {0, 1, 255}.
    """
    prob = probabilities(output, head)
    if prob.dim() == 4:
        prob = prob.squeeze(1)
    valid = mask != IGNORE
    pred = (prob > threshold) & valid
    true = (mask == 1) & valid
    counts = torch.stack([(pred & true).sum(dim=(1, 2)), pred.sum(dim=(1, 2)), true.sum(dim=(1, 2))], dim=1)
    return counts.long()  # (B, 3)


def dice_from_counts(counts: torch.Tensor) -> torch.Tensor:
    """Per-image Dice 2|P&T| / (|P| + |T|) from (N, 3) counts; 1 where both are empty."""
    inter, pred, true = counts.double().unbind(dim=1)
    denom = pred + true
    return torch.where(denom > 0, 2.0 * inter / denom.clamp_min(1.0), torch.ones_like(denom))


def iou_from_counts(counts: torch.Tensor) -> torch.Tensor:
    """Per-image IoU |P&T| / |P|T| from (N, 3) counts; 1 where both are empty."""
    inter, pred, true = counts.double().unbind(dim=1)
    union = pred + true - inter
    return torch.where(union > 0, inter / union.clamp_min(1.0), torch.ones_like(union))


class SegmentationMeter:
    """Accumulates per-image counts over an evaluation pass; `compute()` gives the metrics.

    meter = SegmentationMeter()
    for images, masks, index in loader:
        meter.update(model(images), masks, head, ids=index)
    meter.compute()  # {"dice", "dice_global", "iou", "n", "per_image": [(id, dice, iou), ...]}

    Under DistributedDataParallel each rank fills its own meter; `meter.sync()` returns a meter
    holding every rank's images (see there). `counts` and `ids` are the raw state for callers
    that gather themselves; `SegmentationMeter.from_counts` rebuilds a meter from them.
    """

    def __init__(self, threshold: float = THRESHOLD):
        self.threshold = threshold
        self._counts: list[torch.Tensor] = []
        self._ids: list[Hashable] = []

    def reset(self) -> None:
        self._counts.clear()
        self._ids.clear()

    def update(self, output: torch.Tensor, mask: torch.Tensor, head: Head,
               ids: Sequence[Hashable] | torch.Tensor | None = None) -> torch.Tensor:
        """Add a batch; returns its (B, 3) counts. `ids` name the images (default: running index)."""
        counts = image_counts(output.detach(), mask, head, self.threshold).cpu()
        if ids is None:
            start = len(self._ids)
            ids = range(start, start + counts.shape[0])
        elif isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        ids = list(ids)
        if len(ids) != counts.shape[0]:
            raise ValueError(f"got {len(ids)} ids for a batch of {counts.shape[0]} images")
        self._counts.append(counts)
        self._ids.extend(ids)
        return counts

    @property
    def counts(self) -> torch.Tensor:
        """(N, 3) int64 `inter`, `pred`, `true` per image, in update order."""
        return torch.cat(self._counts) if self._counts else torch.zeros(0, 3, dtype=torch.long)

    @property
    def ids(self) -> list[Hashable]:
        return list(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    @classmethod
    def from_counts(cls, counts: torch.Tensor, ids: Sequence[Hashable],
                    threshold: float = THRESHOLD) -> "SegmentationMeter":
        meter = cls(threshold)
        if len(ids) != counts.shape[0]:
            raise ValueError(f"got {len(ids)} ids for {counts.shape[0]} rows of counts")
        if len(ids):
            meter._counts.append(counts.long().cpu())
            meter._ids.extend(ids)
        return meter

    def merge(self, other: "SegmentationMeter") -> "SegmentationMeter":
        """A new meter with this meter's images followed by `other`'s."""
        return SegmentationMeter.from_counts(torch.cat([self.counts, other.counts]),
                                             self.ids + other.ids, self.threshold)

    def deduplicated(self) -> "SegmentationMeter":
        """A meter keeping the first occurrence of each id (drops DistributedSampler padding)."""
        seen: dict[Hashable, int] = {}
        for row, image_id in enumerate(self._ids):
            seen.setdefault(image_id, row)
        rows = torch.tensor(list(seen.values()), dtype=torch.long)
        return SegmentationMeter.from_counts(self.counts[rows], list(seen), self.threshold)

    def sync(self) -> "SegmentationMeter":
        """Every rank's images in one meter, padding duplicates dropped (by id), on every rank.

        Uses `torch.distributed.all_gather_object`, so ids must be picklable (dataset indices
        are); with NCCL, `torch.cuda.set_device` must have been called. Without an initialised
        process group (or with one rank) it returns `self.deduplicated()`.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self.deduplicated()
        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, (self.counts, self.ids))
        meter = SegmentationMeter(self.threshold)
        for counts, ids in gathered:
            meter = meter.merge(SegmentationMeter.from_counts(counts, ids, self.threshold))
        return meter.deduplicated()

    def compute(self) -> dict:
        """`dice` (mean per-image), `dice_global` (2 sum inter / sum(pred + true), 1 if that is
        0/0), `iou` (mean per-image), `n` and `per_image` [(id, dice, iou)]. NaN metrics when empty."""
        counts = self.counts
        if counts.shape[0] == 0:
            nan = float("nan")
            return {"dice": nan, "dice_global": nan, "iou": nan, "n": 0, "per_image": []}
        dice = dice_from_counts(counts)
        iou = iou_from_counts(counts)
        total = counts.sum(dim=0).double()
        denom = total[1] + total[2]
        dice_global = float(2.0 * total[0] / denom) if denom > 0 else 1.0
        return {
            "dice": float(dice.mean()),
            "dice_global": dice_global,
            "iou": float(iou.mean()),
            "n": int(counts.shape[0]),
            "per_image": list(zip(self._ids, dice.tolist(), iou.tolist())),
        }
