"""The ISBI 2012 membrane data (the U-Net paper's) trains through the folder dataset from the
committed spec, with its own folder names and the membrane (label 0) as foreground, and beats
predicting membrane everywhere by a wide margin on its test split."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "experiments" / "isbi2012_membrane.yaml"
ISBI = REPO.parent / "shared" / "data" / "isbi2012-membrane"
MARGIN = 0.10  # test Dice must exceed the all-foreground prediction's Dice by this much (absolute)
# Short: 64 px, width 8, 8 epochs, no elastic warp (the committed spec trains at 256 px, 40 epochs).
SHORT = ["data.image_size=64", "model.base_channels=8", "train.epochs=8", "data.augment.elastic_p=0",
         "train.threads=2"]


@pytest.fixture
def isbi() -> Path:
    if not ISBI.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"ISBI 2012 data not found at {ISBI} (CI=true: ../shared/data must sit beside the repo)")
        pytest.skip(f"ISBI 2012 data not found at {ISBI} (it lives in ../shared/data beside the repo)")
    return ISBI


def all_foreground_dice(masks: list[np.ndarray]) -> float:
    """Mean per-image Dice of predicting foreground at every (non-ignored) pixel."""
    scores = []
    for mask in masks:
        valid = mask != 255
        truth = int((mask[valid] == 1).sum())
        scores.append(2 * truth / (truth + int(valid.sum())) if valid.any() else 1.0)
    return float(np.mean(scores))


def test_spec_reads_the_data_as_documented(isbi: Path, tmp_path: Path, monkeypatch) -> None:
    from segsweep.data import build_data
    from segsweep.spec import load_spec

    monkeypatch.chdir(REPO)  # data.root is relative to where segsweep runs: the repo root
    spec = load_spec(SPEC, [*SHORT, f"data.cache_dir={tmp_path / 'cache'}"])
    bundle = build_data(spec)
    assert {k: len(v) for k, v in bundle.datasets.items()} == {"train": 21, "val": 3, "test": 6}
    image, mask = bundle.datasets["train"].raw(0)
    assert image.shape == (64, 64, 3) and set(np.unique(mask).tolist()) <= {0, 1}
    from PIL import Image

    raw = np.asarray(Image.open(bundle.datasets["train"].samples[0].mask))
    membrane = float((raw == 0).mean())
    assert 0.1 < membrane < 0.4  # label 0 (membrane) is the minority class, as the data's README says
    assert bundle.masks["train"].values == {0, 255} and bundle.masks["test"].empty == 0


def test_trains_and_beats_all_foreground(cli, isbi: Path, tmp_path: Path, monkeypatch) -> None:
    from segsweep.data import build_data
    from segsweep.spec import load_spec

    monkeypatch.chdir(REPO)
    overrides = [*SHORT, f"data.cache_dir={tmp_path / 'cache'}"]
    result = cli("run.py", SPEC, *overrides, "--results", tmp_path / "results")
    assert result.code == 0, result.err
    (summary_path,) = (tmp_path / "results").rglob("summary.json")
    summary = json.loads(summary_path.read_text())
    assert summary["status"] == "completed" and summary["test/images"] == 6 and summary["test/empty_masks"] == 0

    test = build_data(load_spec(SPEC, overrides)).datasets["test"]
    baseline = all_foreground_dice([test.raw(i)[1] for i in range(len(test))])
    assert 0.2 < baseline < 0.5, baseline  # membrane is about a fifth of the pixels
    assert summary["test/dice"] > baseline + MARGIN, (summary["test/dice"], baseline)
