"""Registries own the names: a model, a loss term and a dataset registered from this file alone
are valid spec values, train through `segsweep.fit` and through a one-cell sweep; unknown names
list what exists. Every entry is unregistered again when its test ends."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn as nn
import yaml

import segsweep
from segsweep.data import DATASETS, build_data
from segsweep.data.sources import folder_splits
from segsweep.errors import SpecError, UnknownNameError
from segsweep.losses import LossTerm, Prepared, build_loss
from segsweep.models import SegmentationModel, check_input_size
from segsweep.registry import Registry
from segsweep.spec import DataSpec, LossSpec, ModelSpec, override_spec, spec_keys

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "experiments" / "quickstart.yaml"


# --------------------------------------------------------------------------- the toy entries


class ToyNet(SegmentationModel):
    """Two convolutions around a 4x average pool: the smallest model with a size divisor."""

    size_divisor = 4

    def __init__(self, in_channels: int, width: int, head: str):
        super().__init__()
        self.head_kind = head
        self.body = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.AvgPool2d(4))
        self.head = nn.Conv2d(width, 1, 1)

    @classmethod
    def from_spec(cls, spec: ModelSpec, in_channels: int = 3) -> "ToyNet":
        return cls(in_channels, spec.base_channels, spec.head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size("toy", self.size_divisor, x.shape[-2], x.shape[-1])
        logits = nn.functional.interpolate(self.head(self.body(x)), size=x.shape[-2:], mode="nearest")
        return torch.sigmoid(logits) if self.head_kind == "sigmoid" else logits  # (B, 1, H, W)


class MeanAbsError(LossTerm):
    """Mean |p - t| over the valid pixels of the batch."""

    def from_prepared(self, p: Prepared, output: torch.Tensor) -> torch.Tensor:
        return ((p.prob - p.target).abs() * p.valid).sum() / p.valid.sum().clamp_min(1.0)


def toy_discs(data: DataSpec) -> dict:
    """A bright disc on noise per image, written once as images/ + masks/ under `data.root`."""
    root = Path(data.root)
    if not (root / "masks").is_dir():
        rng = np.random.default_rng(0)
        (root / "images").mkdir(parents=True)
        (root / "masks").mkdir()
        yy, xx = np.mgrid[:40, :40]
        for i in range(24):
            cy, cx, r = rng.integers(12, 28, 2).tolist() + [int(rng.integers(5, 12))]
            mask = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r).astype(np.uint8)
            image = rng.integers(0, 120, (40, 40, 3), dtype=np.uint8)
            image[mask == 1] = (200, 180, 60)
            cv2.imwrite(str(root / "images" / f"disc_{i}.png"), image)
            cv2.imwrite(str(root / "masks" / f"disc_{i}.png"), mask * 255)
    return folder_splits(root, val_fraction=0.2, test_fraction=0.2, foreground_value=None)


@pytest.fixture
def toy_model():
    with segsweep.MODELS.registered("toy", ToyNet):
        yield "toy"
    assert "toy" not in segsweep.MODELS


@pytest.fixture
def toy_loss():
    with segsweep.LOSSES.registered("toy_mae", MeanAbsError):
        yield "toy_mae"
    assert "toy_mae" not in segsweep.LOSSES


@pytest.fixture
def toy_dataset():
    with DATASETS.registered("toy_discs", toy_discs):
        yield "toy_discs"
    assert "toy_discs" not in DATASETS


def _check_run(run_dir: Path, epochs: int) -> dict:
    with open(run_dir / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == epochs and all(np.isfinite(float(r["train/loss"])) for r in rows)
    assert (run_dir / "checkpoints" / "best.pt").is_file()
    return json.loads((run_dir / "summary.json").read_text())


# --------------------------------------------------------------------------- tests


def test_registry_lists_entries_and_unregisters() -> None:
    registry = Registry("widget")
    registry.register("gear")(lambda: "g")
    assert registry.names() == ["gear"] and "gear" in registry and registry.build("gear") == "g"
    with pytest.raises(UnknownNameError, match=r"unknown widget 'geer'; did you mean 'gear'\? valid: 'gear'"):
        registry.get("geer")
    with pytest.raises(SpecError, match=r"unknown widget 'x'; valid: 'gear'"):
        registry.get("x")
    with registry.registered("cog", lambda: "c"):
        assert registry.names() == ["cog", "gear"]
    assert registry.names() == ["gear"]
    registry.unregister("gear")
    assert registry.names() == []


def test_public_registries_describe_their_entries() -> None:
    assert set(segsweep.MODELS.describe()) == {"unet", "resnet34_unet", "study_resnet34_unet"}
    assert segsweep.MODELS.describe()["unet"].startswith("The U-Net")
    assert segsweep.LOSSES.names() == ["bce", "dice", "dice_batch", "double_sigmoid_bce", "focal"]


def test_a_registered_model_is_a_spec_value_with_its_own_divisor(toy_model) -> None:
    spec = override_spec(segsweep.ExperimentSpec(), {"model.name": toy_model, "data.image_size": 36})
    assert spec.model.name == "toy"
    with pytest.raises(SpecError, match=r"data.image_size: toy needs an input size divisible by 4; got 34, "
                                        r"nearest valid size is 32"):
        override_spec(spec, {"data.image_size": 34})
    with pytest.raises(SpecError, match=r"model.decoder: decoder='smp' applies to resnet34_unet only; "
                                        r"toy takes decoder='unet'"):
        override_spec(spec, {"model.decoder": "smp"})


def test_unknown_model_lists_the_registered_ones(toy_model) -> None:
    with pytest.raises(SpecError, match=r"model.name: unknown model 'tyo'; did you mean 'toy'\? "
                                        r"valid: 'resnet34_unet', 'study_resnet34_unet', 'toy', 'unet'$"):
        override_spec(segsweep.ExperimentSpec(), {"model.name": "tyo"})


def test_a_registered_loss_term_is_a_weight_key(toy_loss) -> None:
    spec = LossSpec.model_validate({"bce": 0.0, "dice": 0.0, toy_loss: 2})
    loss = build_loss(spec, "logits")
    assert list(loss.terms) == [toy_loss] and loss.weights == {toy_loss: 2.0}
    mask = torch.zeros(2, 8, 8, dtype=torch.uint8)
    assert loss(torch.full((2, 1, 8, 8), -30.0), mask).item() == pytest.approx(0.0, abs=1e-6)
    assert f"loss.{toy_loss}" in spec_keys()
    with pytest.raises(SpecError, match=rf"loss.toy_mea: unknown key; did you mean '{toy_loss}'\?"):
        override_spec(segsweep.ExperimentSpec(), {"loss.toy_mea": 1.0})
    with pytest.raises(SpecError, match=rf"loss.{toy_loss}: the weight of loss term"):
        override_spec(segsweep.ExperimentSpec(), {f"loss.{toy_loss}": -1})


def test_toy_model_and_loss_train_through_fit(toy_model, toy_loss, tiny_spec, tmp_path: Path) -> None:
    spec = tiny_spec(**{"model.name": toy_model, f"loss.{toy_loss}": 1.0, "loss.bce": 0.0, "loss.dice": 0.0,
                        "train.epochs": 1})
    result = segsweep.fit(spec, tmp_path / "run")
    assert result.status == "completed"
    summary = _check_run(result.run_dir, 1)
    assert 0.0 <= summary["test/dice"] <= 1.0
    stored = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    assert stored["model"]["name"] == "toy" and stored["loss"][toy_loss] == 1.0
    best = torch.load(result.run_dir / "checkpoints" / "best.pt", weights_only=True)
    assert {k for k in best["model"]} == {"body.0.weight", "body.0.bias", "head.weight", "head.bias"}


def test_toy_model_and_loss_train_through_a_one_cell_sweep(toy_model, toy_loss, tiny_overrides,
                                                           tmp_path: Path) -> None:
    sweep_file = tmp_path / "toy_sweep.yaml"
    sweep_file.write_text(yaml.safe_dump({
        "name": "toy_sweep", "experiment": str(QUICKSTART), "method": "grid",
        "parameters": {"model.name": {"values": [toy_model]}, f"loss.{toy_loss}": {"value": 1.0},
                       "loss.bce": {"value": 0.0}},
        "seeds": [0],
    }, sort_keys=False))
    outcome = segsweep.run_sweep(sweep_file, {**tiny_overrides, "train.epochs": 1}, workers=1,
                                 results=tmp_path / "results", echo=lambda line: None)
    assert outcome.exit_code == 0 and outcome.pending == 0
    assert len(outcome.rows) == 1 and outcome.rows[0]["status"] == "completed", outcome.rows
    run_dir = Path(outcome.rows[0]["run_dir"])
    _check_run(run_dir, 1)
    stored = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert stored["model"]["name"] == "toy" and stored["loss"][toy_loss] == 1.0 and stored["loss"]["bce"] == 0.0


def test_a_registered_dataset_trains(toy_dataset, tiny_spec, tmp_path: Path) -> None:
    spec = tiny_spec(**{"data.name": toy_dataset, "data.root": str(tmp_path / "discs"),
                        "data.cache_dir": str(tmp_path / "cache"), "train.epochs": 1})
    bundle = build_data(spec)
    assert [len(bundle.datasets[s]) for s in ("train", "val", "test")] == [14, 5, 5]
    result = segsweep.fit(spec, tmp_path / "run")
    assert result.status == "completed"
    _check_run(result.run_dir, 1)
    with pytest.raises(SpecError, match=r"data.name: unknown dataset 'toy_disc'; did you mean 'toy_discs'\?"):
        override_spec(spec, {"data.name": "toy_disc"})
