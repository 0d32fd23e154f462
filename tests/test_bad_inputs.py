"""The bad-input catalogue: each case exits 2 with one line naming the place, and writes nothing."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
QUICK = REPO / "experiments" / "quickstart.yaml"

# (case id, spec text (None: use quickstart.yaml), extra CLI args, substrings the one error line must hold)
SPEC_CASES = [
    ("unknown-key", "extends: {q}\nmodle: {{}}\n", [], ["bad.yaml", "modle", "did you mean 'model'"]),
    ("typo-nested", "extends: {q}\nmodel: {{nit: paper}}\n", [], ["bad.yaml", "model.nit", "did you mean 'init'"]),
    ("wrong-type", "extends: {q}\ntrain: {{epochs: ten}}\n", [], ["bad.yaml", "train.epochs", "valid integer"]),
    ("negative-lr", "extends: {q}\noptim: {{lr: -0.1}}\n", [], ["bad.yaml", "optim.lr", "greater than 0"]),
    ("missing-extends", "extends: nowhere.yaml\n", [], ["bad.yaml", "nowhere.yaml", "not found"]),
    ("unknown-model", "extends: {q}\nmodel: {{name: vit}}\n", [], ["model.name", "'unet'", "'resnet34_unet'"]),
    ("unknown-init", "extends: {q}\nmodel: {{init: glorot}}\n", [], ["model.init", "he_normal"]),
    ("unknown-mask", "extends: {q}\ndata: {{mask: edges}}\n", [], ["data.mask", "boundary"]),
    ("invalid-size", "extends: {q}\ndata: {{image_size: 72}}\n", [], ["data.image_size", "nearest valid size is 64"]),
    ("yaml-syntax", "model: [unclosed\n", [], ["bad.yaml", "invalid YAML"]),
    ("top-level-list", "- a\n- b\n", [], ["bad.yaml", "mapping"]),
    ("python-tag", "name: !!python/object/apply:os.system ['touch PWNED']\n", [], ["bad.yaml", "invalid YAML"]),
    ("bad-override-syntax", None, ["optim.lr"], ["override 'optim.lr'", "key=value"]),
    ("override-unknown-key", None, ["optim.lrr=0.1"], ["override optim.lrr", "did you mean 'lr'"]),
    ("override-bad-value", None, ["model.dropout=1.5"], ["override model.dropout", "less than 1"]),
    ("override-section-as-value", None, ["optim=3"], ["optim", "dictionary"]),
    ("unknown-flag", None, ["--epochs", "3"], ["run.py", "unrecognized arguments"]),
]


@pytest.mark.parametrize("case, text, args, expected", SPEC_CASES, ids=[c[0] for c in SPEC_CASES])
def test_bad_spec_exits_2_with_one_line(cli, tmp_path: Path, monkeypatch, case, text, args, expected) -> None:
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "bad.yaml"
    if text is None:
        spec = QUICK
    else:
        spec.write_text(text.format(q=QUICK))
    result = cli("run.py", spec, *args, "--results", tmp_path / "results")
    assert result.code == 2, result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    for part in expected:
        assert part in lines[0], (part, lines[0])
    assert not (tmp_path / "results").exists()
    assert not (tmp_path / "PWNED").exists()


def test_cyclic_extends(cli, tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    result = cli("run.py", tmp_path / "a.yaml", "--results", tmp_path / "results")
    assert result.code == 2 and "cycle" in result.err and "a.yaml" in result.err
    assert len(result.err.strip().splitlines()) == 1


def test_spec_path_is_a_directory(cli, tmp_path: Path) -> None:
    result = cli("run.py", tmp_path, "--results", tmp_path / "results")
    assert result.code == 2 and "is a directory" in result.err and str(tmp_path) in result.err


def test_missing_spec_file(cli, tmp_path: Path) -> None:
    result = cli("run.py", tmp_path / "nope.yaml", "--results", tmp_path / "results")
    assert result.code == 2 and "nope.yaml" in result.err and "not found" in result.err


def _data_case(cli, tmp_path: Path, root: Path, *extra: str):
    result = cli("run.py", QUICK, "data.name=oxford_pet", f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}",
                 "data.image_size=32", "model.base_channels=8", "train.epochs=1", "tracking.wandb.mode=disabled",
                 *extra, "--results", tmp_path / "results")
    assert result.code == 2, result.err
    assert len(result.err.strip().splitlines()) == 1, result.err
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").rglob("config.yaml"))
    return result.err


def test_missing_data_root(cli, tmp_path: Path) -> None:
    err = _data_case(cli, tmp_path, tmp_path / "no-such-pets")
    assert "no-such-pets" in err


def test_missing_split_file(cli, tmp_path: Path, oxford_root: Path) -> None:
    (oxford_root / "annotations" / "test.txt").unlink()
    assert "test.txt" in _data_case(cli, tmp_path, oxford_root)


def test_missing_trimap(cli, tmp_path: Path, oxford_root: Path) -> None:
    (oxford_root / "annotations" / "trimaps" / "Tiny_3.png").unlink()
    assert "Tiny_3" in _data_case(cli, tmp_path, oxford_root)


def test_corrupt_jpeg(cli, tmp_path: Path, oxford_root: Path) -> None:
    (oxford_root / "images" / "Tiny_2.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    assert "Tiny_2" in _data_case(cli, tmp_path, oxford_root)


def test_empty_split(cli, tmp_path: Path, oxford_root: Path) -> None:
    (oxford_root / "annotations" / "test.txt").write_text("# nothing here\n")
    assert "test" in _data_case(cli, tmp_path, oxford_root)


def test_image_mask_size_mismatch(cli, tmp_path: Path, oxford_root: Path) -> None:
    import cv2
    import numpy as np

    cv2.imwrite(str(oxford_root / "annotations" / "trimaps" / "Tiny_5.png"), np.full((20, 30), 2, np.uint8))
    assert "Tiny_5" in _data_case(cli, tmp_path, oxford_root)


def test_results_path_under_a_file(cli, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    result = cli("run.py", QUICK, "--results", tmp_path / "file" / "results")
    assert result.code == 2 and "not a folder" in result.err and "file" in result.err


def test_unwritable_results_folder(cli, tmp_path: Path) -> None:
    import os

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user that can write anywhere (root without capability drop)")
        result = cli("run.py", QUICK, "--results", locked / "results")
        assert result.code == 2 and "not writable" in result.err
    finally:
        locked.chmod(0o700)
