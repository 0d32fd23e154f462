"""The study's batch-pooled Dice term and its checkpoint rule: known values by hand, and `fit`
with `checkpoint.monitor` / `checkpoint.floor`, including a run in which no epoch passes."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from segsweep.losses import LOSSES, build_loss
from segsweep.spec import LossSpec
from segsweep.train.loop import fit

REPO = Path(__file__).resolve().parents[1]


def _batch(n: int, empty: tuple[int, ...] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(n)
    prob = torch.rand(n, 1, 6, 5, generator=g)
    mask = (torch.rand(n, 6, 5, generator=g) > 0.55).to(torch.uint8)
    for i in empty:
        mask[i] = 0
    return prob, mask


def _by_hand(prob: torch.Tensor, mask: torch.Tensor) -> float:
    """The study's dice_loss written out with Python floats over every pixel of the batch."""
    p, t = prob.flatten().tolist(), mask.flatten().float().tolist()
    inter = sum(a * b for a, b in zip(p, t))
    return 1.0 - 2.0 * inter / (sum(p) + sum(t) + 1e-8)


@pytest.mark.parametrize("n,empty", [(8, ()), (8, (0, 3)), (5, ()), (5, (1,))])
def test_batch_dice_term_equals_a_hand_computation(n: int, empty: tuple[int, ...]) -> None:
    prob, mask = _batch(n, empty)
    term = LOSSES.get("dice_batch")("sigmoid")
    assert float(term(prob, mask)) == pytest.approx(_by_hand(prob, mask), rel=1e-6)
    # logits: the same Dice on sigmoid(logits)
    logits = torch.logit(prob.clamp(1e-4, 1 - 1e-4))
    assert float(LOSSES.get("dice_batch")("logits")(logits, mask)) == pytest.approx(
        _by_hand(torch.sigmoid(logits), mask), rel=1e-6)


def test_batch_dice_differs_from_the_per_image_term_and_pools_empty_masks() -> None:
    prob, mask = _batch(8, (0, 1, 2))
    pooled = float(LOSSES.get("dice_batch")("sigmoid")(prob, mask))
    per_image = float(LOSSES.get("dice")("sigmoid")(prob, mask))
    assert abs(pooled - per_image) > 0.01  # the forms the study and segsweep used are not the same
    # an all-empty batch: the pooled Dice is 0 for any positive prediction, so the loss is 1
    assert float(LOSSES.get("dice_batch")("sigmoid")(prob, torch.zeros_like(mask))) == pytest.approx(1.0)


def test_the_studys_loss_is_double_sigmoid_bce_plus_batch_dice() -> None:
    prob, mask = _batch(8, (2,))
    loss = build_loss(LossSpec(bce=0, dice=0, double_sigmoid_bce=1, dice_batch=1), "sigmoid")
    target = mask.unsqueeze(1).float()
    expected = float(nn.BCEWithLogitsLoss()(prob, target)) + _by_hand(prob, mask)
    assert float(loss(prob, mask)) == pytest.approx(expected, rel=1e-6)


def _rows(run: Path) -> list[dict[str, float]]:
    import csv

    with open(run / "metrics.csv", newline="") as fh:
        return [{k: float(v) for k, v in r.items()} for r in csv.DictReader(fh)]


def test_monitor_picks_the_epoch_by_the_soft_batch_dice(tiny_spec, tmp_path: Path) -> None:
    spec = tiny_spec(**{"train.epochs": 3, "checkpoint.monitor": "val/dice_soft_batch8"})
    result = fit(spec, tmp_path / "run")
    rows = _rows(result.run_dir)
    scores = [r["val/dice_soft_batch8"] for r in rows]
    best = max(range(len(rows)), key=lambda i: (scores[i], -i))
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["best_epoch"] == rows[best]["epoch"]
    assert summary["checkpoint_monitor"] == "val/dice_soft_batch8"
    assert summary["val/dice_soft_batch8"] == pytest.approx(scores[best])
    assert summary["val/dice"] == pytest.approx(rows[best]["val/dice"])  # of the epoch kept


def test_floor_keeps_only_epochs_above_it(tiny_spec, tmp_path: Path) -> None:
    soft = {"train.epochs": 3, "checkpoint.monitor": "val/dice_soft_batch8"}  # continuous at this tiny size
    rows = _rows(fit(tiny_spec(**soft), tmp_path / "free").run_dir)
    scores = sorted(r["val/dice_soft_batch8"] for r in rows)
    assert scores[1] < scores[2]
    floor = scores[1]  # strictly above: only the best epoch passes
    result = fit(tiny_spec(**soft, **{"checkpoint.floor": floor}), tmp_path / "floor")
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["floor_passed"] is True and summary["checkpoint_floor"] == floor
    assert summary["best_epoch"] == max(rows, key=lambda r: r["val/dice_soft_batch8"])["epoch"]
    assert summary["tested_epoch"] == summary["best_epoch"]


def test_no_epoch_above_the_floor_completes_and_tests_the_last_epoch(tiny_overrides, tmp_path: Path, cli) -> None:
    overrides = {**tiny_overrides, "train.epochs": 2, "checkpoint.floor": 0.999}
    out = cli("run", str(REPO / "experiments" / "quickstart.yaml"), *[f"{k}={v}" for k, v in overrides.items()],
              "--results", str(tmp_path / "results"))
    assert out.code == 0, out.err
    run = next((tmp_path / "results" / "runs").glob("*/*"))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["floor_passed"] is False and summary["best_epoch"] == 0 and summary["tested_epoch"] == 2
    assert math.isfinite(summary["test/dice"])
    assert summary["val/dice"] == pytest.approx(_rows(run)[-1]["val/dice"])  # the last epoch's, tested
    assert not (run / "checkpoints" / "best.pt").exists()
    assert (run / "test_per_image.csv").is_file()
