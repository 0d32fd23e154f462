"""Acceptance of tracking through the real command: W&B offline and TensorBoard mirror metrics.csv."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from segsweep.tracking import load_wandb_log

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def offline_env(tmp_path: Path) -> dict[str, str]:
    """An environment with no W&B credentials and no proxy to anything: nothing can log in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    home = tmp_path / "home"
    home.mkdir()
    env.update({"NETRC": str(home / "netrc"), "HOME": str(home), "WANDB_CONFIG_DIR": str(home / "wandb-config"),
                "WANDB_CACHE_DIR": str(home / "wandb-cache"), "WANDB_DATA_DIR": str(home / "wandb-data"),
                "NO_PROXY": "*"})
    return env


def test_run_mirrors_metrics_to_wandb_offline_and_tensorboard(tmp_path: Path, tiny_overrides: dict,
                                                                offline_env: dict) -> None:
    overrides = {**tiny_overrides, "train.epochs": 3, "tracking.wandb.mode": "offline", "tracking.tensorboard": True}
    cmd = [sys.executable, str(REPO / "scripts" / "run.py"), str(REPO / "experiments" / "quickstart.yaml"),
           *[f"{k}={v}" for k, v in overrides.items()], "--results", str(tmp_path / "results")]
    done = subprocess.run(cmd, cwd=tmp_path, env=offline_env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    (run_dir,) = (tmp_path / "results" / "runs" / "quickstart").iterdir()
    assert f"wandb sync {run_dir}/wandb/offline-run-" in done.stdout + done.stderr

    with open(run_dir / "metrics.csv", newline="") as fh:
        expected = [float(row["val/dice"]) for row in csv.DictReader(fh)]
    assert len(expected) == 3

    (log_file,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    log = load_wandb_log(log_file)
    assert [row["val/dice"] for row in log.history if "val/dice" in row] == expected
    assert [row["epoch"] for row in log.history if "val/dice" in row] == [1, 2, 3]
    assert log.config["model.base_channels"] == 8 and log.config["train.epochs"] == 3
    assert log.summary["status"] == "completed"

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard" / "quickstart-s0"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    series = events.Scalars("val/dice")
    assert [e.step for e in series] == [1, 2, 3]
    assert [e.value for e in series] == pytest.approx(expected, rel=1e-6)
    assert events.Tags()["images"]
