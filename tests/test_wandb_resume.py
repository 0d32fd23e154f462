"""A resumed run continues its W&B run: the id is kept in the run folder (`wandb_id`), every
session's offline transaction log carries that id, and the sync command lists every piece."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from conftest import wait_for
from segsweep.tracking import build_tracker, load_wandb_log
from segsweep.tracking.wandb_tracker import RUN_ID_FILE, offline_pieces, read_run_id
from segsweep.train import StopTraining, fit


@pytest.fixture
def no_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_MODE", "WANDB_BASE_URL", "WANDB_DIR",
                 "WANDB_RUN_ID", "WANDB_RESUME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))


def stop_after_epoch_1(epoch: int, metrics: dict) -> None:
    if epoch == 1:
        raise StopTraining("interrupted", "stopped by the test after epoch 1")


def test_resume_continues_the_same_wandb_run_offline(tmp_path: Path, tiny_spec, no_credentials) -> None:
    spec = tiny_spec(**{"tracking.wandb.mode": "offline", "train.epochs": 3})
    run_dir = tmp_path / "run"
    first = build_tracker(spec, run_dir)
    assert fit(spec, run_dir, tracker=first, on_epoch_end=stop_after_epoch_1).status == "interrupted"
    run_id = read_run_id(run_dir)
    assert run_id and (run_dir / RUN_ID_FILE).read_text() == run_id + "\n"

    # wandb < 0.20 names a session's folder by its start second alone: resume in a later second.
    (first_piece,) = offline_pieces(run_dir, run_id)
    wait_for(lambda: time.strftime("%Y%m%d_%H%M%S") not in first_piece.name, "the next second")

    second = build_tracker(spec, run_dir)
    assert fit(spec, run_dir, tracker=second, resume=True).status == "completed"
    assert read_run_id(run_dir) == run_id  # kept, not replaced

    pieces = offline_pieces(run_dir, run_id)
    assert len(pieces) == 2 and sorted(run_dir.glob("wandb/offline-run-*")) == sorted(pieces)
    logs = [load_wandb_log(piece) for piece in pieces]
    assert [log.run["run_id"] for log in logs] == [run_id, run_id]
    assert [log.run["display_name"] for log in logs] == [spec.name, spec.name]
    assert [[row["epoch"] for row in log.history if "val/dice" in row] for log in logs] == [[1], [2, 3]]
    assert logs[0].summary["status"] == "interrupted" and logs[1].summary["status"] == "completed"
    assert logs[0].config == logs[1].config
    assert second.sync_command == "wandb sync " + " ".join(map(str, pieces))


def test_a_new_run_folder_gets_a_new_wandb_run(tmp_path: Path, tiny_spec, no_credentials) -> None:
    spec = tiny_spec(**{"tracking.wandb.mode": "offline", "train.epochs": 1})
    ids = []
    for name in ("a", "b"):
        fit(spec, tmp_path / name, tracker=build_tracker(spec, tmp_path / name))
        ids.append(read_run_id(tmp_path / name))
        assert load_wandb_log(tmp_path / name).run["run_id"] == ids[-1]
    assert ids[0] != ids[1]


def test_wandb_init_gets_the_kept_id_with_resume_allow(tmp_path: Path, tiny_spec, no_credentials,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """What an online resume sends: id=<kept id>, resume='allow' (W&B then appends to that run)."""
    import wandb

    seen: list[dict] = []

    def record_init(**kwargs):
        seen.append(kwargs)
        raise RuntimeError("no server in this test")

    (tmp_path / RUN_ID_FILE).write_text("abc123xy\n")
    monkeypatch.setattr(wandb, "init", record_init)
    spec = tiny_spec(**{"tracking.wandb.mode": "offline"})
    with pytest.warns(UserWarning, match="W&B tracker disabled"):
        build_tracker(spec, tmp_path).start(spec, tmp_path, {})
    assert [(k["id"], k["resume"]) for k in seen] == [("abc123xy", "allow")]
