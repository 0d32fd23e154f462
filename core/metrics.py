"""Segmentation metrics from per-image sums: mean per-image Dice (`dice`, what the course reports),
dataset-level Dice (`dice_global`), mean per-image IoU (`iou`), all thresholded at 0.5, and the
study's soft batch Dice (`dice_soft_batch8`, on probabilities).

Conventions: pixels with mask == 255 are ignored; foreground is mask == 1 and prediction is
p > 0.5; an image whose prediction and truth are both empty scores Dice = IoU = 1.

`dice_soft_batch8` is the study's formula (its `dice_score` over a test loader of batch 8, no
shuffle), so it is the figure the study reported only for an evaluation like the study's: with
`train.tta: hflip` p comes from the TTA-averaged output (averaged in the head's space: logits or
probabilities), where the study scored its model's output as is; and pixels with mask == 255
are skipped, which the study's masks never have (`data.mask: ignore_boundary` makes them). No
threshold, the sigmoid probabilities p themselves; the images of the split, in the split's file
order, cut into consecutive batches of 8 (the last one may be smaller); per batch
2 sum(p t) / (sum(p) + sum(t) + 1e-8) with the sums over every pixel of the batch's images
together; then the plain mean over batches (a last batch of 5 weighs as much as a full one).
It depends on the file order and on the batch of 8, not on the batch size the
evaluation ran with (it is computed from per-image sums). `dice` instead thresholds at 0.5 and
averages one Dice per image; `dice_global` thresholds and pools every pixel of the split.
"""
from __future__ import annotations

from typing import Hashable, Literal, Sequence

import torch

Head = Literal["sigmoid", "logits"]
IGNORE = 255
THRESHOLD = 0.5
STUDY_BATCH = 8  # `dice_soft_batch8`: the study's test batch size
STUDY_EPS = 1e-8  # and the constant in its Dice denominator


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


@torch.no_grad()
def image_soft_sums(output: torch.Tensor, mask: torch.Tensor, head: Head) -> torch.Tensor:
    """Per-image sums (B, 3) float64 over valid pixels, no threshold: sum(p t), sum(p), sum(t)."""
    prob = probabilities(output, head)
    if prob.dim() == 4:
        prob = prob.squeeze(1)
    valid = mask != IGNORE
    prob, true = prob * valid, ((mask == 1) & valid).float()
    sums = [(prob * true).sum(dim=(1, 2), dtype=torch.float64), prob.sum(dim=(1, 2), dtype=torch.float64),
            true.sum(dim=(1, 2), dtype=torch.float64)]
    return torch.stack(sums, dim=1)  # (B, 3)


def soft_dice_batches(sums: torch.Tensor, batch: int = STUDY_BATCH, eps: float = STUDY_EPS) -> float:
    """The study's Dice from per-image soft sums (N, 3) in file order: consecutive groups of
    `batch` images pooled, 2 sum(p t) / (sum(p) + sum(t) + eps) per group, mean over groups."""
    if sums.shape[0] == 0:
        return float("nan")
    scores = [2.0 * group[:, 0].sum() / (group[:, 1].sum() + group[:, 2].sum() + eps)
              for group in sums.double().split(batch)]
    return float(torch.stack(scores).mean())


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
    meter.compute(order=split_ids)  # {"dice", "dice_global", "iou", "dice_soft_batch8", "n", "per_image"}

    Under DistributedDataParallel each rank fills its own meter; `meter.sync()` returns a meter
    holding every rank's images (see there). `counts` and `ids` are the raw state for callers
    that gather themselves; `SegmentationMeter.from_counts` rebuilds a meter from them (with
    `soft`, the per-image soft sums, for `dice_soft_batch8`; without, that metric is NaN).
    """

    def __init__(self, threshold: float = THRESHOLD):
        self.threshold = threshold
        self._counts: list[torch.Tensor] = []
        self._ids: list[Hashable] = []
        self._soft: list[torch.Tensor] | None = []  # None: some images came without soft sums

    def reset(self) -> None:
        self._counts.clear()
        self._ids.clear()
        self._soft = []

    def update(self, output: torch.Tensor, mask: torch.Tensor, head: Head,
               ids: Sequence[Hashable] | torch.Tensor | None = None) -> torch.Tensor:
        """Add a batch; returns its (B, 3) counts. `ids` name the images (default: running index)."""
        counts = image_counts(output.detach(), mask, head, self.threshold).cpu()
        soft = image_soft_sums(output.detach(), mask, head).cpu()
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
        if self._soft is not None:
            self._soft.append(soft)
        return counts

    @property
    def counts(self) -> torch.Tensor:
        """(N, 3) int64 `inter`, `pred`, `true` per image, in update order."""
        return torch.cat(self._counts) if self._counts else torch.zeros(0, 3, dtype=torch.long)

    @property
    def soft(self) -> torch.Tensor | None:
        """(N, 3) float64 soft sums `sum(p t)`, `sum(p)`, `sum(t)` per image, or None if unknown."""
        if self._soft is None:
            return None
        return torch.cat(self._soft) if self._soft else torch.zeros(0, 3, dtype=torch.float64)

    @property
    def ids(self) -> list[Hashable]:
        return list(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    @classmethod
    def from_counts(cls, counts: torch.Tensor, ids: Sequence[Hashable], threshold: float = THRESHOLD,
                    soft: torch.Tensor | None = None) -> "SegmentationMeter":
        meter = cls(threshold)
        if len(ids) != counts.shape[0] or (soft is not None and soft.shape[0] != counts.shape[0]):
            raise ValueError(f"got {len(ids)} ids for {counts.shape[0]} rows of counts")
        meter._soft = None if soft is None else ([soft.double().cpu()] if len(ids) else [])
        if len(ids):
            meter._counts.append(counts.long().cpu())
            meter._ids.extend(ids)
        return meter

    def merge(self, other: "SegmentationMeter") -> "SegmentationMeter":
        """A new meter with this meter's images followed by `other`'s."""
        both = None if self.soft is None or other.soft is None else torch.cat([self.soft, other.soft])
        return SegmentationMeter.from_counts(torch.cat([self.counts, other.counts]),
                                             self.ids + other.ids, self.threshold, both)

    def deduplicated(self) -> "SegmentationMeter":
        """A meter keeping the first occurrence of each id (drops DistributedSampler padding)."""
        seen: dict[Hashable, int] = {}
        for row, image_id in enumerate(self._ids):
            seen.setdefault(image_id, row)
        rows = torch.tensor(list(seen.values()), dtype=torch.long)
        soft = self.soft
        return SegmentationMeter.from_counts(self.counts[rows], list(seen), self.threshold,
                                             None if soft is None else soft[rows])

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
        dist.all_gather_object(gathered, (self.counts, self.ids, self.soft))
        meter = SegmentationMeter(self.threshold)
        for counts, ids, soft in gathered:
            meter = meter.merge(SegmentationMeter.from_counts(counts, ids, self.threshold, soft))
        return meter.deduplicated()

    def compute(self, order: Sequence[Hashable] | None = None) -> dict:
        """`dice` (mean per-image), `dice_global` (2 sum inter / sum(pred + true), 1 if that is
        0/0), `iou` (mean per-image), `dice_soft_batch8` (the study's, see the module's doc: batches
        of 8 in `order`, the split's ids in file order; default: update order), `n` and
        `per_image` [(id, dice, iou)]. NaN metrics when empty."""
        counts = self.counts
        if counts.shape[0] == 0:
            nan = float("nan")
            return {"dice": nan, "dice_global": nan, "iou": nan, "dice_soft_batch8": nan, "n": 0, "per_image": []}
        dice = dice_from_counts(counts)
        iou = iou_from_counts(counts)
        total = counts.sum(dim=0).double()
        denom = total[1] + total[2]
        dice_global = float(2.0 * total[0] / denom) if denom > 0 else 1.0
        return {
            "dice": float(dice.mean()),
            "dice_global": dice_global,
            "iou": float(iou.mean()),
            "dice_soft_batch8": self._soft_batch8(order),
            "n": int(counts.shape[0]),
            "per_image": list(zip(self._ids, dice.tolist(), iou.tolist())),
        }

    def _soft_batch8(self, order: Sequence[Hashable] | None) -> float:
        soft = self.soft
        if soft is None:
            return float("nan")
        if order is not None:  # the split's file order; ids this meter has not seen are skipped
            row = {image_id: i for i, image_id in enumerate(self._ids)}
            soft = soft[torch.tensor([row[i] for i in order if i in row], dtype=torch.long)]
        return soft_dice_batches(soft)
