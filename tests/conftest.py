"""Shared fixtures: tiny specs on the synthetic data, tiny Oxford-layout folders, CLI runners."""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
PETS_MINI = REPO.parent / "shared" / "data" / "oxford-iiit-pet-mini"

os.environ.setdefault("WANDB_MODE", "disabled")  # no test may need W&B's server
os.environ.setdefault("WANDB_SILENT", "true")
# The user cache (data caches of read-only roots, `train.channels_last: auto`'s speed probes) in
# a folder of this test session's own, inherited by every subprocess: the real ~/.cache is never
# read or written, and a session's probes are decided once and shared by all its runs.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="segsweep-tests-cache-")

# Tiny and fast: width 8, 32 px, 2 epochs, a small synthetic set.
TINY = {
    "data.image_size": 32,
    "data.synthetic.num_trainval": 40,
    "data.synthetic.num_test": 12,
    "data.synthetic.size": 48,
    "model.base_channels": 8,
    "train.epochs": 2,
    "train.batch_size": 8,
    "tracking.wandb.mode": "disabled",
    "train.threads": 1,  # tests share 2 cores; more threads per process only thrash
}


def wait_for(ready, what: str, limit_s: float = 600.0, poll_s: float = 0.05) -> None:
    """Poll until `ready()` is true: tests wait on an observed event (a file, a line), never a
    guessed delay. `limit_s` is only a guard against a hang, far beyond any machine's speed."""
    deadline = time.monotonic() + limit_s
    while not ready():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {limit_s:.0f} s waiting for {what}")
        time.sleep(poll_s)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data") / "synthetic"


@pytest.fixture
def tiny_overrides(synthetic_root: Path, tmp_path: Path) -> dict:
    return {**TINY, "data.root": str(synthetic_root), "data.cache_dir": str(synthetic_root.parent / "cache")}


@pytest.fixture
def tiny_spec(tiny_overrides: dict):
    from segsweep.spec import load_spec

    def make(**overrides):
        return load_spec(REPO / "experiments" / "quickstart.yaml", {**tiny_overrides, **overrides})

    return make


@pytest.fixture
def pets_mini() -> Path:
    if not PETS_MINI.is_dir():
        pytest.skip(f"real 3-breed subset not found at {PETS_MINI} (it lives in ../shared/data beside the repo)")
    return PETS_MINI


def write_oxford(root: Path, n_trainval: int = 12, n_test: int = 4, size: int = 40, seed: int = 0) -> Path:
    """A tiny dataset in the official Oxford-IIIT Pet layout: a bright disc on noise."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / "trimaps").mkdir(parents=True, exist_ok=True)
    names = [f"Tiny_{i}" for i in range(1, n_trainval + n_test + 1)]
    yy, xx = np.mgrid[:size, :size]
    for name in names:
        cy, cx, r = rng.integers(size // 3, 2 * size // 3, 2).tolist() + [int(rng.integers(size // 6, size // 3))]
        dist = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
        trimap = np.where(dist < r - 1, 1, np.where(dist < r + 1, 3, 2)).astype(np.uint8)
        image = rng.integers(0, 120, (size, size, 3), dtype=np.uint8)
        image[trimap != 2] = (200, 180, 60)
        cv2.imwrite(str(root / "images" / f"{name}.jpg"), image)
        cv2.imwrite(str(root / "annotations" / "trimaps" / f"{name}.png"), trimap)
    lines = [f"{n} 1 1 1" for n in names]
    (root / "annotations" / "trainval.txt").write_text("\n".join(lines[:n_trainval]) + "\n")
    (root / "annotations" / "test.txt").write_text("\n".join(lines[n_trainval:]) + "\n")
    return root


@pytest.fixture
def oxford_root(tmp_path: Path) -> Path:
    return write_oxford(tmp_path / "pets")


class CliResult:
    def __init__(self, code: int, out: str, err: str):
        self.code, self.out, self.err = code, out, err


@pytest.fixture
def cli(capsys: pytest.CaptureFixture):
    """Run a `segsweep` subcommand in-process, as its script names it: cli('run.py', args...)
    is `segsweep run args...` -> CliResult(code, out, err)."""
    from segsweep.cli import main

    def run(script: str, *args: str) -> CliResult:
        capsys.readouterr()
        try:
            main([script.removesuffix(".py"), *map(str, args)])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run
