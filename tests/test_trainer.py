"""End-to-end `fit` on the synthetic data: the full local record, checkpoints, hooks, statuses."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from segsweep.record import METRIC_COLUMNS
from segsweep.spec import spec_from_dict
from segsweep.train.loop import StopTraining, evaluate_checkpoint, fit


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_fit_writes_the_full_record_and_best_reloads(tiny_spec, tmp_path: Path) -> None:
    spec = tiny_spec(**{"train.epochs": 3, "checkpoint.keep_best": 2})
    seen: list[tuple[int, float]] = []
    result = fit(spec, tmp_path / "run", on_epoch_end=lambda e, m: seen.append((e, m["val/dice"])))
    run = result.run_dir
    assert result.status == "completed"
    for name in ("config.yaml", "metrics.csv", "summary.json", "test_per_image.csv", "curves.png",
                 "predictions.png", "checkpoints/best.pt", "checkpoints/best-2.pt", "checkpoints/last.pt"):
        assert (run / name).is_file(), name
    assert spec_from_dict(yaml.safe_load((run / "config.yaml").read_text())) == spec

    rows = read_csv(run / "metrics.csv")
    assert list(rows[0]) == list(METRIC_COLUMNS)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert [e for e, _ in seen] == [1, 2, 3]
    assert [float(r["val/dice"]) for r in rows] == [d for _, d in seen]

    summary = json.loads((run / "summary.json").read_text())
    for key in ("status", "best_epoch", "val/dice", "test/dice", "test/dice_global", "test/iou", "epochs_run",
                "wall_s", "seed", "config_hash", "git_sha", "device", "versions"):
        assert key in summary, key
    best_row = rows[summary["best_epoch"] - 1]
    assert summary["val/dice"] == max(float(r["val/dice"]) for r in rows) == float(best_row["val/dice"])
    per_image = read_csv(run / "test_per_image.csv")
    assert len(per_image) == spec.data.synthetic.num_test
    assert summary["test/dice"] == pytest.approx(sum(float(r["dice"]) for r in per_image) / len(per_image))

    # best.pt loads without unpickling code and reproduces the logged validation Dice.
    state = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert state["epoch"] == summary["best_epoch"] and spec_from_dict(state["spec"]) == spec
    _, val = evaluate_checkpoint(run, "val")
    assert val.dice == pytest.approx(summary["val/dice"], abs=1e-6)
    second = torch.load(run / "checkpoints" / "best-2.pt", weights_only=True)
    assert second["metrics"]["val/dice"] <= state["metrics"]["val/dice"]


def test_hook_can_stop_training_as_pruned(tiny_spec, tmp_path: Path) -> None:
    def prune(epoch: int, metrics: dict) -> None:
        if epoch == 1:
            raise StopTraining("pruned", "pruned by test")

    result = fit(tiny_spec(**{"train.epochs": 3}), tmp_path / "run", on_epoch_end=prune)
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert result.status == summary["status"] == "pruned"
    assert summary["epochs_run"] == 1
    assert math.isfinite(summary["test/dice"])  # the best checkpoint so far is still tested


def test_nonfinite_loss_is_recorded_as_diverged(tiny_spec, tmp_path: Path, monkeypatch) -> None:
    import segsweep.train.state as trainer  # where the loss is built

    real = trainer.build_loss

    def exploding(spec, head):
        loss = real(spec, head)
        calls = {"n": 0}

        def forward(output, mask):
            calls["n"] += 1
            value = loss(output, mask)
            return value * float("nan") if calls["n"] == 8 else value

        return forward

    monkeypatch.setattr(trainer, "build_loss", exploding)
    spec = tiny_spec(**{"train.epochs": 3})
    result = fit(spec, tmp_path / "run")
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert result.status == summary["status"] == "diverged"
    assert summary["diverged_epoch"] == 2 and "non-finite loss" in summary["error"]
    assert summary["epochs_run"] == 1


def test_early_stopping_and_time_budget(tiny_spec, tmp_path: Path) -> None:
    result = fit(tiny_spec(**{"train.epochs": 50, "train.time_budget_s": 0.5}), tmp_path / "budget")
    summary = result.metrics
    assert result.status == "completed" and summary["epochs_run"] < 50
    assert summary["stopped_early"] == "time budget spent" and summary["time_budget_s"] == 0.5
    assert math.isfinite(summary["test/dice"])


def test_final_test_false_keeps_the_test_split_out(tiny_spec, tmp_path: Path, monkeypatch) -> None:
    """A study tuning on val never evaluates (or even loads a batch of) the test split."""
    import segsweep.train.loop as trainer

    real, splits = trainer.evaluate, []
    monkeypatch.setattr(trainer, "evaluate", lambda model, loader, *a, desc="", **kw:
                        splits.append(desc) or real(model, loader, *a, desc=desc, **kw))
    result = fit(tiny_spec(**{"train.final_test": False}), tmp_path / "val_only")
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert result.status == "completed" and splits and "test" not in splits
    assert summary["test/dice"] is None and not (result.run_dir / "test_per_image.csv").exists()


def test_evaluate_script_matches_summary(tiny_spec, tmp_path: Path, cli) -> None:
    result = fit(tiny_spec(), tmp_path / "run")
    out = cli("evaluate.py", result.run_dir, "--split", "test", "--per-image", tmp_path / "per.csv")
    assert out.code == 0, out.err
    metrics = json.loads(out.out[: out.out.rindex("}") + 1])
    assert metrics["test/dice"] == pytest.approx(result.metrics["test/dice"], abs=1e-5)
    assert len(read_csv(tmp_path / "per.csv")) == len(read_csv(result.run_dir / "test_per_image.csv"))


def test_hflip_tta_is_mirror_equivariant_and_used_by_every_evaluation(tiny_spec, tmp_path: Path, cli) -> None:
    """With tta=hflip, predicting a mirrored image gives the mirrored prediction (without TTA a
    trained net does not); evaluate.py and the trainer's test pass agree on it."""
    from segsweep.inference import Predictor
    from segsweep.models import build_model, predict_batch
    from segsweep.spec import ModelSpec

    torch.manual_seed(0)
    model = build_model(ModelSpec(base_channels=4)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        plain, mirrored = predict_batch(model, x), predict_batch(model, x.flip(-1))
        assert not torch.allclose(mirrored, plain.flip(-1), atol=1e-4)
        tta = predict_batch(model, x, "hflip")
        assert torch.allclose(predict_batch(model, x.flip(-1), "hflip"), tta.flip(-1), atol=1e-5)

    result = fit(tiny_spec(**{"train.tta": "hflip"}), tmp_path / "tta")
    out = cli("evaluate.py", result.run_dir, "--split", "test")
    assert out.code == 0, out.err
    with_tta = json.loads(out.out[: out.out.rindex("}") + 1])
    assert with_tta["test/dice"] == pytest.approx(result.metrics["test/dice"], abs=1e-5)
    out = cli("evaluate.py", result.run_dir, "--split", "test", "train.tta=none")  # an override after an option
    assert out.code == 0, out.err
    assert json.loads(out.out[: out.out.rindex("}") + 1])["test/loss"] != pytest.approx(with_tta["test/loss"], abs=1e-7)

    predictor = Predictor(result.run_dir)
    image = (np.random.default_rng(0).random((40, 56, 3)) * 255).astype(np.uint8)
    assert np.allclose(predictor.predict(image[:, ::-1]), predictor.predict(image)[:, ::-1], atol=1e-4)


def test_predict_script_writes_masks_and_overlays(tiny_spec, tmp_path: Path, cli, synthetic_root: Path) -> None:
    import cv2

    result = fit(tiny_spec(), tmp_path / "run")
    images = sorted((synthetic_root / "images").glob("*.jpg"))[:2]
    out = cli("predict.py", result.run_dir / "checkpoints" / "best.pt", *images, "--out", tmp_path / "preds")
    assert out.code == 0, out.err
    for image in images:
        mask = cv2.imread(str(tmp_path / "preds" / f"{image.stem}_mask.png"), cv2.IMREAD_UNCHANGED)
        original = cv2.imread(str(image))
        assert mask.shape == original.shape[:2] and set(mask.ravel().tolist()) <= {0, 255}
        assert (tmp_path / "preds" / f"{image.stem}_overlay.png").is_file()
    missing = cli("predict.py", result.run_dir / "checkpoints" / "best.pt", tmp_path / "nope.jpg", "--out", tmp_path / "p2")
    assert missing.code == 2 and "nope.jpg" in missing.err


def test_record_files_follow_the_umask(tmp_path: Path) -> None:
    import os

    from segsweep.record import atomic_write_text

    atomic_write_text(tmp_path / "a.txt", "x")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~mask


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_optimisers_use_fused_kernels_and_still_descend(name: str) -> None:
    from segsweep.spec import ExperimentSpec, override_spec
    from segsweep.optim import build_optimizer

    torch.manual_seed(0)
    model = torch.nn.Linear(8, 1)
    optimizer = build_optimizer(override_spec(ExperimentSpec(), {"optim.name": name, "optim.lr": 0.05}),
                                model.parameters())
    assert optimizer.param_groups[0]["fused"] is True
    x, y = torch.randn(64, 8), torch.randn(64, 1)
    losses = []
    for _ in range(20):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0]
