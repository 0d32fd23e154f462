"""Behaviour unchanged by the redesign: values recorded at 088c932 (main before it) must hold.

tests/fixtures/before_redesign.json holds, from that commit: the config_hash and arm_hash of
every committed experiment and every sweep cell x seed, and a deterministic CPU quickstart run's
metrics.csv (every column but the wall-clock ones), best.pt weights (sha256 per tensor) and
summary. The run pins the CPU kernels to AVX2 (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA and
MKL's conditional numerical reproducibility), so AMD (AVX2) and Intel (AVX-512) machines
compute the same bits; on a CPU where they still do not, the run must agree within float32
round-off (see the test).

sweeps/seed_ablations.yaml left the fixture when its `he_normal` and `paper` arms, which build
identical weights for the UNet (a sweep now refuses such arms), became the study's own contrast
`he_fan_out` vs `paper_fan_in`; every other committed file's hashes still hold.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from segsweep.spec import arm_hash, config_hash, load_spec
from segsweep.sweeps.cells import cell_config_hash
from segsweep.sweeps.spec import load_sweep

REPO = Path(__file__).resolve().parents[1]
BEFORE = json.loads((REPO / "tests" / "fixtures" / "before_redesign.json").read_text())


@pytest.mark.parametrize("name", sorted(BEFORE["experiments"]))
def test_experiment_hashes_unchanged(name: str) -> None:
    spec = load_spec(REPO / "experiments" / name)
    assert {"config_hash": config_hash(spec), "arm_hash": arm_hash(spec)} == BEFORE["experiments"][name]


@pytest.mark.parametrize("name", sorted(BEFORE["sweep_cells"]))
def test_sweep_cell_hashes_unchanged(name: str) -> None:
    sweep, want = load_sweep(REPO / "sweeps" / name), BEFORE["sweep_cells"][name]
    got = {f"{c.label}|{seed}": list(cell_config_hash(sweep, c, seed)) for c in sweep.cells for seed in sweep.seeds}
    assert sweep.hash == want["sweep_hash"]
    assert got == want["cells"]


def test_every_committed_file_is_in_the_fixture() -> None:
    # Superset (set order), not list order: a new file sorting before an old one is fine.
    assert {p.name for p in (REPO / "experiments").glob("*.yaml")} >= set(BEFORE["experiments"])
    assert {p.name for p in (REPO / "sweeps").glob("*.yaml")} >= set(BEFORE["sweep_cells"])


def test_deterministic_quickstart_is_bit_identical(tmp_path: Path) -> None:
    want = BEFORE["quickstart"]
    env = {**os.environ, **want["env"]}
    # channels_last: the layout the fixture trained in (the default then; `auto` now decides by measurement)
    args = [sys.executable, "-m", "segsweep", "run", str(REPO / "experiments" / "quickstart.yaml"), *want["args"],
            "train.channels_last=true",
            f"data.root={tmp_path / 'data'}", f"data.cache_dir={tmp_path / 'cache'}", "--results", str(tmp_path / "results")]
    proc = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = next((tmp_path / "results" / "runs" / "quickstart").iterdir())
    with open(run_dir / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    # Every column recorded then is bit-identical; columns added since (e.g. val/dice_soft_batch8) are extra.
    assert len(rows) == len(want["metrics"])
    got_rows = [{k: r[k] for k in old} for r, old in zip(rows, want["metrics"])]
    summary = json.loads((run_dir / "summary.json").read_text())
    if got_rows != want["metrics"]:
        # Some CPUs compute other last bits despite the pins: a 2-core "AMD EPYC" VM (AVX2 + FMA,
        # 2026-12-02) gave epoch 1 bit for bit and float32 round-off from epoch 2 on, the same
        # at b0042b8 as after it (losses 1e-5 apart by epoch 3, val Dice identical, test Dice
        # 2e-4 apart). There the record must still agree within round-off; the weights' hashes
        # cannot. On the Intel AVX-512 machine whose CI passed on b0042b8 it was exact.
        for got, old in zip(got_rows, want["metrics"]):
            for key in old:
                assert float(got[key]) == pytest.approx(float(old[key]), rel=1e-4, abs=1e-7), (got["epoch"], key)
        assert summary["best_epoch"] == want["summary"]["best_epoch"]
        # The test Dice thresholds the weights of the best epoch: round-off flips a pixel or two.
        assert {k: summary[k] for k in want["summary"]} == pytest.approx(want["summary"], abs=1e-3)
        warnings.warn("quickstart run not bit-identical to the fixture on this CPU (within float32 round-off: "
                      "checked); best.pt's hashes not compared")
        return
    assert got_rows == want["metrics"]
    best = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    got = {k: hashlib.sha256(v.contiguous().numpy().tobytes()).hexdigest() for k, v in best["model"].items()}
    assert got == want["best_weights_sha256"]
    assert {k: summary[k] for k in want["summary"]} == want["summary"]
