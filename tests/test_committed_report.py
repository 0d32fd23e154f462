"""The committed pets-mini ablation report matches a re-run on its committed run records."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

REPO = Path(__file__).resolve().parents[1]
REPORT = REPO / "results" / "reports" / "pets_mini_ablations"


def test_committed_report_reproduces_and_figures_render(tmp_path: Path) -> None:
    if not (REPORT / "records").is_dir():
        pytest.fail(f"{REPORT / 'records'} is missing: the committed report must keep its run records")
    copy = tmp_path / "pets_mini_ablations"
    shutil.copytree(REPORT / "records", copy / "records")
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "report.py"), str(copy / "records"), "--out", str(copy)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (copy / "report.md").read_text() == (REPORT / "report.md").read_text()
    figures = sorted(p.name for p in REPORT.glob("*.png"))
    assert figures and figures == sorted(p.name for p in copy.glob("*.png"))
    for name in figures:
        image = cv2.imread(str(REPORT / name))
        assert image is not None and image.shape[0] > 100 and image.shape[1] > 100, name
        assert f"]({name})" in (REPORT / "report.md").read_text(), f"{name} is not linked from report.md"
