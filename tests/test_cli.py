"""The `segsweep` command's own checks: the wrong kind of file, clashing outputs, `~` in paths."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from segsweep.cli.predict import output_stems
from segsweep.errors import DataError

REPO = Path(__file__).resolve().parents[1]


def test_run_given_a_sweep_file_names_the_sweep_command(cli, tmp_path: Path) -> None:
    sweep = REPO / "sweeps" / "quickstart_grid.yaml"
    result = cli("run.py", sweep, "--results", tmp_path / "results")
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and "is a sweep file" in lines[0] and f"segsweep sweep {sweep}" in lines[0]
    assert not (tmp_path / "results").exists()


def test_results_path_with_a_tilde_is_expanded(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              tiny_overrides: dict) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    args = [f"{k}={v}" for k, v in {**tiny_overrides, "train.epochs": 1}.items()]
    result = cli("run.py", REPO / "experiments" / "quickstart.yaml", *args, "--results", "~/x")
    assert result.code == 0, result.err
    assert list((tmp_path / "home" / "x" / "runs" / "quickstart").iterdir())
    assert not (tmp_path / "~").exists()


def test_clashing_stems_get_distinct_output_names() -> None:
    assert output_stems(["a/3.png", "a/3.JPG", "a/4.png"]) == {"a/3.png": "3_png", "a/3.JPG": "3_jpg", "a/4.png": "4"}
    assert output_stems(["a/3.png", "a/3.png"]) == {"a/3.png": "3"}  # the same file twice is one image
    with pytest.raises(DataError, match=r"b/3.png: its predictions would overwrite those of a/3.png"):
        output_stems(["a/3.png", "b/3.png"])


def test_predict_refuses_a_folder_and_a_collision_before_writing(cli, tmp_path: Path) -> None:
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        cv2.imwrite(str(tmp_path / folder / "3.png"), np.zeros((8, 8, 3), np.uint8))
    out = tmp_path / "preds"
    result = cli("predict.py", tmp_path / "no.pt", tmp_path / "a", "--out", out)
    assert result.code == 2 and "is a folder; predict takes image files" in result.err
    result = cli("predict.py", tmp_path / "no.pt", tmp_path / "a" / "3.png", tmp_path / "b" / "3.png", "--out", out)
    assert result.code == 2 and len(result.err.strip().splitlines()) == 1 and "would overwrite" in result.err
    assert not out.exists()
