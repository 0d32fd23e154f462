"""Losses and metrics: known values, logits vs sigmoid heads, ignored pixels, and cross-checks
against torch, torchvision and torchmetrics."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from segsweep.errors import SpecError
from segsweep.losses import LOSSES, BCE, Focal, SoftDice, build_loss
from segsweep.metrics import (SegmentationMeter, dice_from_counts, image_counts, iou_from_counts,
                          probabilities)
from segsweep.spec import LossSpec

HEADS = ["logits", "sigmoid"]


def as_head(logits: torch.Tensor, head: str) -> torch.Tensor:
    """The same underlying probabilities, as the given head would output them."""
    return logits if head == "logits" else torch.sigmoid(logits)


def random_batch(seed: int = 0, b: int = 4, h: int = 32, w: int = 32, ignore: bool = False):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, 1, h, w, generator=g) * 2
    mask = (torch.rand(b, h, w, generator=g) < 0.4).to(torch.uint8)
    if ignore:
        mask[torch.rand(b, h, w, generator=g) < 0.1] = 255
    return logits, mask


def half_mask(b: int = 2, h: int = 32, w: int = 32) -> torch.Tensor:
    mask = torch.zeros(b, h, w, dtype=torch.uint8)
    mask[:, :, : w // 2] = 1
    return mask


# --------------------------------------------------------------------------- losses


def test_loss_registry_lists_the_terms():
    assert LOSSES.names() == ["bce", "dice", "dice_batch", "double_sigmoid_bce", "focal"]
    with pytest.raises(SpecError, match="unknown loss 'dise'.*did you mean 'dice'"):
        LOSSES.get("dise")


@pytest.mark.parametrize("head", HEADS)
def test_dice_loss_perfect_is_zero_and_disjoint_is_one(head):
    mask = half_mask()
    perfect = (mask.float() * 40 - 20).unsqueeze(1)  # logits +-20: p = 1 - 2e-9 or 2e-9
    loss = SoftDice(head)
    assert loss(as_head(perfect, head), mask).item() == pytest.approx(0.0, abs=1e-4)
    assert loss(as_head(-perfect, head), mask).item() == pytest.approx(1.0, abs=2e-3)
    # both empty: smooth term makes it a perfect score, not 0/0
    empty = torch.zeros(2, 32, 32, dtype=torch.uint8)
    assert loss(as_head(torch.full((2, 1, 32, 32), -20.0), head), empty).item() == pytest.approx(0.0, abs=1e-4)


def test_dice_loss_known_value_per_image_mean():
    mask = torch.zeros(2, 2, 2, dtype=torch.uint8)
    mask[0, 0, 0] = 1  # image 0: truth one pixel
    prob = torch.zeros(2, 1, 2, 2)
    prob[0, 0, 0, 0] = 0.5  # image 0: inter 0.5, sum p 0.5, sum t 1
    prob[1, 0, 1, 1] = 1.0  # image 1: empty truth, one predicted pixel
    dice0 = (2 * 0.5 + 1) / (1.5 + 1)
    dice1 = (0 + 1) / (1 + 1)
    expected = 1 - (dice0 + dice1) / 2
    assert SoftDice("sigmoid")(prob, mask).item() == pytest.approx(expected, rel=1e-5)


def test_bce_equals_torch_on_known_inputs():
    logits, mask = random_batch()
    target = mask.float().unsqueeze(1)
    expected = F.binary_cross_entropy_with_logits(logits, target)
    torch.testing.assert_close(BCE("logits")(logits, mask), expected)
    expected = F.binary_cross_entropy(torch.sigmoid(logits), target)
    torch.testing.assert_close(BCE("sigmoid")(torch.sigmoid(logits), mask), expected, rtol=1e-5, atol=1e-6)
    # one value by hand: p = 0.8 on a foreground pixel -> -log 0.8
    one = BCE("sigmoid")(torch.full((1, 1, 1, 1), 0.8), torch.ones(1, 1, 1, dtype=torch.uint8))
    assert one.item() == pytest.approx(-torch.log(torch.tensor(0.8)).item(), rel=1e-6)


def test_focal_equals_torchvision_and_reduces_to_bce_at_gamma_zero():
    from torchvision.ops import sigmoid_focal_loss

    logits, mask = random_batch(1)
    target = mask.float().unsqueeze(1)
    expected = sigmoid_focal_loss(logits, target, alpha=-1, gamma=2.0, reduction="mean")
    torch.testing.assert_close(Focal("logits", gamma=2.0)(logits, mask), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(Focal("logits", gamma=0.0)(logits, mask), BCE("logits")(logits, mask))


@pytest.mark.parametrize("name", ["bce", "dice", "focal"])
def test_logits_and_sigmoid_heads_agree_in_value_and_gradient(name):
    logits, mask = random_batch(2, ignore=True)
    values, grads = [], []
    for head in HEADS:
        x = logits.clone().requires_grad_(True)
        loss = LOSSES.build(name, head=head)(as_head(x, head), mask)
        loss.backward()
        values.append(loss.detach())
        grads.append(x.grad)
    torch.testing.assert_close(values[0], values[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-8)


def test_sigmoid_head_saturated_output_gives_finite_loss_and_gradient():
    prob = torch.tensor([1.0, 0.0, 1.0 - 1e-7]).view(1, 1, 1, 3).requires_grad_(True)
    mask = torch.tensor([0, 1, 0], dtype=torch.uint8).view(1, 1, 3)  # all confidently wrong
    total = build_loss(LossSpec(bce=1, dice=1, focal=1), "sigmoid")(prob, mask)
    assert torch.isfinite(total)
    loss = BCE("sigmoid")(prob, mask)
    loss.backward()
    assert loss.item() > 10  # -log(eps) ~ 13.8 per wrong pixel
    # the clamp is straight-through: a plain clamp would give a zero gradient here
    assert torch.isfinite(prob.grad).all() and (prob.grad.abs() > 0).all()


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("name", ["bce", "dice", "focal"])
def test_ignored_pixels_do_not_change_the_loss(head, name):
    logits, mask = random_batch(3)
    mask[:, :, 16:] = 255  # right half ignored
    loss = LOSSES.build(name, head=head)
    reference = loss(as_head(logits, head), mask)
    changed = logits.clone()
    changed[..., 16:] = torch.randn_like(changed[..., 16:]) * 10
    torch.testing.assert_close(loss(as_head(changed, head), mask), reference)
    # ... and equal the loss on the valid part alone
    torch.testing.assert_close(loss(as_head(logits[..., :16], head), mask[..., :16]), reference)


def test_build_loss_is_the_weighted_sum_in_fp32():
    logits, mask = random_batch(4)
    spec = LossSpec(bce=0.5, dice=2.0, focal=0.25, focal_gamma=1.5)
    loss = build_loss(spec, "logits")
    expected = (0.5 * BCE("logits")(logits, mask) + 2.0 * SoftDice("logits")(logits, mask)
                + 0.25 * Focal("logits", gamma=1.5)(logits, mask))
    torch.testing.assert_close(loss(logits, mask), expected)
    assert set(build_loss(LossSpec(bce=1.0, dice=0.0), "logits").terms) == {"bce"}
    value = loss(logits.to(torch.bfloat16), mask)  # e.g. under autocast
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(expected.item(), rel=2e-2)


# --------------------------------------------------------------------------- metrics


def test_probabilities_apply_sigmoid_to_logits_only():
    logits = torch.tensor([-2.0, 0.0, 3.0])
    torch.testing.assert_close(probabilities(logits, "logits"), torch.sigmoid(logits))
    probs = torch.tensor([0.1, 0.5, 0.9], dtype=torch.bfloat16)
    out = probabilities(probs, "sigmoid")
    assert out.dtype == torch.float32 and torch.equal(out, probs.float())


def _meter(prob: torch.Tensor, mask: torch.Tensor) -> dict:
    meter = SegmentationMeter()
    meter.update(prob, mask, "sigmoid")
    return meter.compute()


def test_metrics_known_values():
    mask = half_mask(1, 8, 8)
    perfect = mask.float().unsqueeze(1)
    assert _meter(perfect, mask)["dice"] == 1.0 and _meter(perfect, mask)["iou"] == 1.0
    disjoint = 1 - perfect
    assert _meter(disjoint, mask)["dice"] == 0.0 and _meter(disjoint, mask)["iou"] == 0.0
    empty_mask = torch.zeros(1, 8, 8, dtype=torch.uint8)
    both_empty = _meter(torch.zeros(1, 1, 8, 8), empty_mask)
    assert both_empty["dice"] == 1.0 and both_empty["iou"] == 1.0 and both_empty["dice_global"] == 1.0
    assert _meter(torch.zeros(1, 1, 8, 8), mask)["dice"] == 0.0  # nothing predicted
    assert _meter(torch.ones(1, 1, 8, 8), empty_mask)["iou"] == 0.0  # nothing to find
    # inter 2, pred 3, true 5: Dice 2*2/8, IoU 2/6
    m = torch.zeros(1, 4, 4, dtype=torch.uint8)
    m.view(-1)[:5] = 1
    p = torch.zeros(1, 1, 4, 4)
    p.view(-1)[[0, 1, 10]] = 0.9
    res = _meter(p, m)
    assert res["dice"] == pytest.approx(0.5) and res["iou"] == pytest.approx(2 / 6)


def test_threshold_is_strictly_above_one_half():
    mask = torch.ones(1, 1, 2, dtype=torch.uint8)
    counts = image_counts(torch.tensor([0.5, 0.5000001]).view(1, 1, 1, 2), mask, "sigmoid")
    assert counts.tolist() == [[1, 1, 2]]


def test_ignored_pixels_do_not_count():
    mask = half_mask(1, 8, 8)
    prob = mask.float().unsqueeze(1).clone()
    mask[:, :4] = 255  # top half ignored ...
    prob[:, :, :4] = 1 - prob[:, :, :4]  # ... where the prediction is all wrong
    assert image_counts(prob, mask, "sigmoid").tolist() == [[16, 16, 16]]
    assert _meter(prob, mask)["dice"] == 1.0


def test_dice_global_and_per_image_mean_differ_as_defined():
    mask = torch.zeros(2, 4, 4, dtype=torch.uint8)
    mask[0] = 1  # 16 pixels of truth, all found
    mask[1, 0, 0] = 1  # 1 pixel of truth, missed
    prob = torch.zeros(2, 1, 4, 4)
    prob[0] = 1
    res = _meter(prob, mask)
    assert res["dice"] == pytest.approx(0.5)
    assert res["dice_global"] == pytest.approx(2 * 16 / (16 + 17))


@pytest.mark.parametrize("head", HEADS)
def test_heads_give_the_same_counts(head):
    logits, mask = random_batch(5, ignore=True)
    torch.testing.assert_close(image_counts(as_head(logits, head), mask, head),
                               image_counts(logits, mask, "logits"))


def test_metrics_match_torchmetrics_on_random_masks():
    from torchmetrics.functional.classification import binary_f1_score, binary_jaccard_index
    from torchmetrics.functional.segmentation import dice_score

    g = torch.Generator().manual_seed(7)
    prob = torch.rand(8, 1, 32, 32, generator=g)
    mask = (torch.rand(8, 32, 32, generator=g) < torch.linspace(0.05, 0.9, 8).view(8, 1, 1)).to(torch.uint8)
    pred = (prob > 0.5).long()
    res = _meter(prob, mask)
    # Dice: torchmetrics' segmentation dice_score, one foreground class, per sample
    tm_dice = dice_score(pred, mask.long().unsqueeze(1), num_classes=1, average="none").flatten()
    assert res["dice"] == pytest.approx(tm_dice.double().mean().item(), abs=1e-6)
    tm_iou = torch.stack([binary_jaccard_index(prob[i, 0], mask[i]) for i in range(8)])
    assert res["iou"] == pytest.approx(tm_iou.double().mean().item(), abs=1e-6)
    assert res["dice_global"] == pytest.approx(binary_f1_score(prob.squeeze(1), mask).item(), abs=1e-6)
    # with ignored pixels: torchmetrics' ignore_index (Dice = F1 for binary masks)
    mask[torch.rand(8, 32, 32, generator=g) < 0.2] = 255
    res = _meter(prob, mask)
    tm_f1 = torch.stack([binary_f1_score(prob[i, 0], mask[i], ignore_index=255) for i in range(8)])
    tm_iou = torch.stack([binary_jaccard_index(prob[i, 0], mask[i], ignore_index=255) for i in range(8)])
    assert res["dice"] == pytest.approx(tm_f1.double().mean().item(), abs=1e-6)
    assert res["iou"] == pytest.approx(tm_iou.double().mean().item(), abs=1e-6)
    tm_global = binary_f1_score(prob.squeeze(1), mask, ignore_index=255)
    assert res["dice_global"] == pytest.approx(tm_global.item(), abs=1e-6)


def test_both_empty_convention_differs_from_torchmetrics_default():
    from torchmetrics.functional.classification import binary_f1_score

    empty = torch.zeros(1, 4, 4, dtype=torch.uint8)
    assert binary_f1_score(torch.zeros(1, 4, 4), empty).item() == 0.0  # torchmetrics: 0
    assert _meter(torch.zeros(1, 1, 4, 4), empty)["dice"] == 1.0  # ours: documented 1


def test_meter_accumulates_batches_with_ids_and_merges():
    logits, mask = random_batch(6, b=6, ignore=True)
    whole = SegmentationMeter()
    whole.update(logits, mask, "logits", ids=[f"img{i}" for i in range(6)])
    parts = SegmentationMeter()
    parts.update(logits[:4], mask[:4], "logits", ids=torch.arange(4))
    parts.update(logits[4:], mask[4:], "logits", ids=torch.arange(4, 6))
    a, b = whole.compute(), parts.compute()
    for key in ("dice", "dice_global", "iou", "n"):
        assert a[key] == b[key]
    assert [row[0] for row in a["per_image"]] == [f"img{i}" for i in range(6)]
    assert [row[0] for row in b["per_image"]] == list(range(6))
    counts = whole.counts
    torch.testing.assert_close(dice_from_counts(counts).float(), torch.tensor([r[1] for r in a["per_image"]]))
    torch.testing.assert_close(iou_from_counts(counts).float(), torch.tensor([r[2] for r in a["per_image"]]))
    # two "ranks" with a padding duplicate (image 0 again) merge to the single-process result
    rank0 = SegmentationMeter.from_counts(counts[[0, 2, 4]], [0, 2, 4])
    rank1 = SegmentationMeter.from_counts(counts[[1, 3, 5, 0]], [1, 3, 5, 0])
    merged = rank0.merge(rank1).deduplicated().compute()
    assert merged["n"] == 6
    assert merged["dice"] == pytest.approx(a["dice"]) and merged["dice_global"] == pytest.approx(a["dice_global"])
    assert SegmentationMeter().sync().compute()["n"] == 0  # no process group: itself


def test_meter_rejects_mismatched_ids():
    logits, mask = random_batch(b=2)
    with pytest.raises(ValueError, match="got 3 ids for a batch of 2"):
        SegmentationMeter().update(logits, mask, "logits", ids=[0, 1, 2])


def _sync_worker(rank: int, world: int, init_file: str, counts: torch.Tensor, queue) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        rows = [[0, 2, 4], [1, 3, 5, 0]][rank]  # rank 1 pads with image 0, as DistributedSampler does
        meter = SegmentationMeter.from_counts(counts[rows], rows)
        result = meter.sync().compute()
        queue.put((rank, result["n"], result["dice"], result["dice_global"], result["iou"]))
    finally:
        dist.destroy_process_group()


def test_meter_sync_over_two_gloo_ranks(tmp_path):
    import torch.multiprocessing as mp

    logits, mask = random_batch(8, b=6)
    single = SegmentationMeter()
    single.update(logits, mask, "logits")
    expected = single.compute()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    mp.spawn(_sync_worker, args=(2, str(tmp_path / "init"), single.counts, queue), nprocs=2)
    results = sorted(queue.get(timeout=30) for _ in range(2))
    for _, n, dice, dice_global, iou in results:
        assert n == 6
        assert dice == pytest.approx(expected["dice"]) and iou == pytest.approx(expected["iou"])
        assert dice_global == pytest.approx(expected["dice_global"])
