"""`dice_soft_batch8`, the study's Dice: equal to a hand-written copy of its `dice_score` loop
(batches of 8 in file order, soft, pooled per batch, mean over batches), whatever the batch size
and order the evaluation ran with; recorded per epoch, in summary.json and by `segsweep evaluate`."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from segsweep.metrics import SegmentationMeter


def study_dice(probs: torch.Tensor, masks: torch.Tensor) -> float:
    """The study's inference loop, written out: DataLoader(batch_size=8, shuffle=False) over the
    split, `2 * sum(pred * gt) / (sum(pred) + sum(gt) + 1e-8)` per batch, the mean of the batches."""
    scores = []
    for start in range(0, probs.shape[0], 8):
        pred, gt = probs[start:start + 8], masks[start:start + 8]
        scores.append(float(2 * (pred * gt).sum() / (pred.sum() + gt.sum() + 1e-8)))
    return sum(scores) / len(scores)


def fixed_predictions(n: int = 21, size: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 1, size, size) probabilities and (n, size, size) masks, some images empty."""
    g = torch.Generator().manual_seed(7)
    masks = (torch.rand(n, size, size, generator=g) > 0.6).to(torch.uint8)
    masks[3] = 0  # an empty truth
    probs = torch.rand(n, 1, size, size, generator=g, dtype=torch.float64).float()
    probs[5] = 0.0  # an image predicted empty
    return probs, masks


@pytest.mark.parametrize("eval_batch", [8, 5, 3, 21])
def test_equals_the_studys_loop_at_any_eval_batch_size(eval_batch: int) -> None:
    probs, masks = fixed_predictions()  # 21 images: batches of 8, 8 and a last partial one of 5
    want = study_dice(probs.double().squeeze(1), masks.double())
    ids = [f"img{i:02d}" for i in range(len(probs))]
    meter = SegmentationMeter()
    for start in range(0, len(probs), eval_batch):
        meter.update(probs[start:start + eval_batch], masks[start:start + eval_batch], "sigmoid",
                     ids[start:start + eval_batch])
    assert meter.compute(order=ids)["dice_soft_batch8"] == pytest.approx(want, rel=1e-12)
    # the partial batch weighs as much as a full one: not the same as pooling everything
    pooled = float(2 * (probs.double().squeeze(1) * masks).sum() / (probs.double().sum() + masks.sum()))
    assert abs(want - pooled) > 1e-4


def test_file_order_not_update_order_and_logits_head() -> None:
    probs, masks = fixed_predictions()
    ids = [f"img{i:02d}" for i in range(len(probs))]
    want = study_dice(probs.double().squeeze(1), masks.double())
    shuffled = torch.randperm(len(ids), generator=torch.Generator().manual_seed(1)).tolist()
    meter = SegmentationMeter()
    logits = torch.logit(probs.double().clamp(1e-12, 1 - 1e-12))
    for chunk in torch.tensor(shuffled).split(4):  # as DDP ranks would deliver them
        rows = chunk.tolist()
        meter.update(logits[rows].float(), masks[rows], "logits", [ids[r] for r in rows])
    assert meter.compute(order=ids)["dice_soft_batch8"] == pytest.approx(want, rel=1e-5)
    assert meter.compute()["dice_soft_batch8"] != pytest.approx(want, rel=1e-5)  # update order differs


def test_it_is_soft_while_dice_thresholds() -> None:
    masks = torch.ones(8, 4, 4, dtype=torch.uint8)
    probs = torch.full((8, 1, 4, 4), 0.75)
    meter = SegmentationMeter()
    meter.update(probs, masks, "sigmoid")
    result = meter.compute()
    assert result["dice"] == 1.0  # 0.75 > 0.5 everywhere: a perfect thresholded mask
    assert result["dice_soft_batch8"] == pytest.approx(2 * 0.75 / 1.75)


def test_ignored_pixels_skipped_and_merge_keeps_it() -> None:
    probs, masks = fixed_predictions(n=10)
    masks[:, 0, :] = 255
    kept = masks.clone().double()
    kept[masks == 255] = 0
    sure = probs.double().squeeze(1) * (masks != 255)
    want = study_dice(sure, kept)
    ids = list(range(10))
    a, b = SegmentationMeter(), SegmentationMeter()
    a.update(probs[:6], masks[:6], "sigmoid", ids[:6])
    b.update(probs[6:], masks[6:], "sigmoid", ids[6:])
    merged = b.merge(a).deduplicated()
    assert merged.compute(order=ids)["dice_soft_batch8"] == pytest.approx(want, rel=1e-12)
    counts_only = SegmentationMeter.from_counts(merged.counts, merged.ids)
    assert math.isnan(counts_only.compute()["dice_soft_batch8"])  # no soft sums: unknown, never made up


def test_recorded_per_epoch_in_summary_and_by_evaluate(tiny_spec, tmp_path: Path, cli) -> None:
    from segsweep.data import build_data
    from segsweep.models import build_model
    from segsweep.train import fit
    from segsweep.checkpoint import load_checkpoint

    spec = tiny_spec(**{"train.epochs": 1, "train.eval_batch_size": 5, "model.head": "sigmoid"})
    run_dir = tmp_path / "run"
    result = fit(spec, run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    with open(run_dir / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert 0 < float(rows[0]["val/dice_soft_batch8"]) <= 1
    # the same figure from the best checkpoint's probabilities on the test split, by the study's loop
    data = build_data(spec)
    model = build_model(spec.model)
    model.load_state_dict(load_checkpoint(run_dir / "checkpoints" / "best.pt")["model"])
    model.eval()
    test = data.datasets["test"]
    with torch.no_grad():
        images = torch.stack([test[i][0] for i in range(len(test))])
        masks = torch.stack([torch.as_tensor(test[i][1]) for i in range(len(test))])
        probs = model(images).float().squeeze(1).double()
    want = study_dice(probs, masks.double())
    assert summary["test/dice_soft_batch8"] == pytest.approx(want, rel=1e-4)
    assert result.metrics["test/dice_soft_batch8"] == summary["test/dice_soft_batch8"]
    done = cli("evaluate.py", str(run_dir), "train.eval_batch_size=3")
    assert done.code == 0, done.err
    assert json.loads(done.out)["test/dice_soft_batch8"] == pytest.approx(want, rel=1e-4)
