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


RECIPE = REPO / "results" / "reports" / "pets_mini_recipe"


def test_committed_recipe_report_reproduces_and_matches_the_recipe_files(tmp_path: Path) -> None:
    """report.md re-renders byte for byte from the committed study journal and final runs, and
    every final run trained exactly the committed recipe (pets_mini_best*.yaml with its seed)."""
    import yaml

    from segsweep.spec import SPEED_ONLY, identity_tree, load_spec, override_spec

    if not (RECIPE / "records").is_dir():
        pytest.fail(f"{RECIPE / 'records'} is missing: the committed report must keep its records")
    copy = tmp_path / "pets_mini_recipe"
    shutil.copytree(RECIPE / "records", copy / "records")
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "report.py"), "--study", str(copy / "records" / "sweep"),
                           "--final", str(copy / "records" / "final"), "--out", str(copy), "--target", "0.835"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (copy / "report.md").read_text() == (RECIPE / "report.md").read_text()
    for name in ("final_curves.png", "optuna_importances.png", "optuna_history.png"):
        assert cv2.imread(str(RECIPE / name)) is not None and f"]({name})" in (RECIPE / "report.md").read_text()

    specs = {"pets_mini_best": "pets_mini_best.yaml", "pets_mini_best_resnet34": "pets_mini_best_resnet34.yaml"}
    configs = sorted((RECIPE / "records" / "final").rglob("config.yaml"))
    assert configs
    for config in configs:
        recorded = yaml.safe_load(config.read_text())
        committed = override_spec(load_spec(REPO / "experiments" / specs[recorded["name"]]), {"seed": recorded["seed"]})
        speed_only = {key.split(".")[1]: value for key, value in SPEED_ONLY.items()}  # how fast, not what is trained
        assert identity_tree(committed) == {**recorded, "train": {**recorded["train"], **speed_only}}, config


CLAIMS = REPO / "results" / "reports" / "pets_mini_claims"


def test_committed_claims_report_reproduces_from_one_clean_commit(tmp_path: Path) -> None:
    """The claims study's report re-renders byte for byte from its committed records, every run
    it counts ran from one clean commit, and every claim it leaves open says what would settle it."""
    import json
    import re

    records = CLAIMS / "records"
    if not records.is_dir():
        pytest.fail(f"{records} is missing: the committed report must keep its records")
    copy = tmp_path / "pets_mini_claims"
    shutil.copytree(records, copy / "records")
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "report.py"), str(copy / "records"), "--out", str(copy)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    text = (CLAIMS / "report.md").read_text()
    assert (copy / "report.md").read_text() == text
    figures = sorted(p.name for p in CLAIMS.glob("*.png"))
    assert figures and figures == sorted(p.name for p in copy.glob("*.png"))
    for name in figures:
        assert cv2.imread(str(CLAIMS / name)) is not None and f"]({name})" in text, name

    provenance = re.search(r"\*\*Provenance:\*\* git ([^;]+);", text)
    assert provenance and re.fullmatch(r"[0-9a-f]{40}", provenance.group(1)), "expected one clean sha"
    shas = {json.loads(p.read_text())["git_sha"] for p in records.rglob("summary.json")}
    assert shas == {provenance.group(1)}

    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| ") and "**" in line]
    verdicts = [(row[0].strip("| "), row[6], row[-1].strip(" |")) for row in rows if len(row) == 9]
    assert len(verdicts) >= 8, "expected a row per trained claim"
    for claim, verdict, needed in verdicts:
        if "open" in verdict or "inconclusive" in verdict:
            assert re.search(r"\d+ to detect ±margin; (\d+|more than 10000 rounds) to show equivalence", needed), claim
        else:
            assert needed == "—", claim
