"""Trackers: W&B offline runs read back from their transaction log, TensorBoard event files read
back with EventAccumulator, `mode: auto` deciding without the network, failures never raising.

No test needs the network or logs in: credentials are removed from the environment and netrc.
"""
from __future__ import annotations

import http.server
import io
import logging
import os
import signal
import socket
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from conftest import wait_for

import segsweep.tracking as tracking
from segsweep.errors import TrackingError
from segsweep.spec import ExperimentSpec, flatten, override_spec, spec_to_dict
from segsweep.tracking import (
    MultiTracker,
    TensorBoardTracker,
    Tracker,
    TrackingWarning,
    WandbTracker,
    build_tracker,
    load_wandb_log,
    read_wandb_records,
    resolve_wandb_mode,
    wandb_credentials,
)

META = {"git_sha": "0123abc", "config_hash": "c0ffee000001", "arm_hash": "a11ce0000002"}
EPOCHS = 4
LONG_NOTES = "segsweep " * 9000  # ~80 KB: the run record spans 3 log blocks (FIRST/MIDDLE/LAST)


def _metrics(epoch: int) -> dict[str, float]:
    """One metrics.csv row with values that are distinct per epoch and not round in binary."""
    return {"epoch": epoch, "train/loss": 1.0 / (epoch + 2), "val/loss": 0.9 / (epoch + 1),
            "val/dice": 0.1 * epoch + 0.0123, "val/dice_global": 0.11 * epoch, "val/iou": 0.07 * epoch,
            "lr": np.float32(1e-3) / epoch, "epoch_s": 1.5, "img_per_s": 123.4}


def _grid(epoch: int) -> np.ndarray:
    rng = np.random.default_rng(epoch)
    return rng.integers(0, 256, size=(24, 40, 3), dtype=np.uint8)  # (H, W, 3)


def _decode_png(blob: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))


def _spec(**overrides) -> ExperimentSpec:
    return override_spec(ExperimentSpec(), {"name": "tracking-test", **overrides})


@pytest.fixture(scope="module", autouse=True)
def no_credentials(tmp_path_factory):
    """No API key, no netrc entry, wandb's own dirs in tmp: a test machine without credentials."""
    home = tmp_path_factory.mktemp("wandb-home")
    with pytest.MonkeyPatch.context() as mp:
        for name in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_MODE", "WANDB_BASE_URL",
                     "WANDB_DIR", "WANDB_RUN_ID", "WANDB_RESUME", "WANDB_SWEEP_ID", "WANDB_PROJECT",
                     "WANDB_ENTITY"):
            mp.delenv(name, raising=False)
        mp.setenv("NETRC", str(home / "netrc"))  # does not exist
        for name in ("NO_PROXY", "no_proxy"):  # probes of 127.0.0.1 must not go to a proxy
            mp.setenv(name, "127.0.0.1,localhost")
        for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
            mp.setenv(name, str(home / name.lower()))
        yield home


@pytest.fixture
def cli_output():
    """The library's log lines as the `segsweep` command shows them (INFO on stdout, warnings on
    stderr), for capsys to read; the logger is restored afterwards."""
    from segsweep.cli import install_log_handler

    logger = logging.getLogger("segsweep")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    install_log_handler()
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory, no_credentials):
    """One offline W&B + TensorBoard run driven like the trainer does: start, 4 epochs with a
    grid each, finish with the best checkpoint."""
    run_dir = tmp_path_factory.mktemp("run")
    spec = _spec(**{
        "tracking.wandb.mode": "offline", "tracking.tensorboard": True, "tracking.wandb.images_every": 2,
        "tracking.wandb.log_checkpoints": "best", "tracking.wandb.group": "sweep-a",
        "tracking.wandb.job_type": "arm-1", "tracking.wandb.tags": ["ablation", "bn"],
        "tracking.wandb.notes": LONG_NOTES, "optim.lr": 3e-4, "model.base_channels": 8,
    })
    tracker = build_tracker(spec, run_dir)
    started = time.perf_counter()
    tracker.start(spec, run_dir, META)
    for epoch in range(1, EPOCHS + 1):
        tracker.log_epoch(epoch, _metrics(epoch))
        if epoch == 1:
            first_log_s = time.perf_counter() - started
        tracker.log_predictions(epoch, _grid(epoch))
    best = run_dir / "checkpoints" / "best.pt"
    best.parent.mkdir()
    torch.save({"model": {"w": torch.ones(3)}, "epoch": EPOCHS}, best)
    summary = {"status": "completed", "name": spec.name, "seed": 0, "best_epoch": EPOCHS,
               "val/dice": _metrics(EPOCHS)["val/dice"], "test/dice": 0.4321, "test/dice_global": 0.5,
               "test/iou": 0.3, "epochs_run": EPOCHS, **META, "versions": {"torch": torch.__version__}}
    tracker.finish(summary, best)
    wandb_tracker = next(t for t in tracker.trackers if isinstance(t, WandbTracker))
    print(f"\nW&B offline: start() -> first log {first_log_s:.2f} s, "
          f"start() -> run ready {wandb_tracker.startup_s:.2f} s")
    return {"spec": spec, "run_dir": run_dir, "tracker": tracker, "wandb": wandb_tracker, "summary": summary}


# --------------------------------------------------------------------------- W&B offline


def test_build_tracker_follows_the_spec(tmp_path):
    assert type(build_tracker(_spec(**{"tracking.wandb.mode": "disabled"}), tmp_path)) is Tracker
    assert isinstance(build_tracker(_spec(**{"tracking.wandb.mode": "offline"}), tmp_path), WandbTracker)
    assert isinstance(build_tracker(_spec(**{"tracking.wandb.mode": "disabled", "tracking.tensorboard": True}),
                                    tmp_path), TensorBoardTracker)
    both = build_tracker(_spec(**{"tracking.tensorboard": True}), tmp_path)
    assert [type(t) for t in both.trackers] == [WandbTracker, TensorBoardTracker]
    assert list(tmp_path.iterdir()) == []  # building contacts and writes nothing


def test_base_tracker_is_a_no_op(tmp_path):
    tracker = Tracker()
    tracker.start(_spec(), tmp_path, META)
    tracker.log_epoch(1, _metrics(1))
    tracker.log_predictions(1, _grid(1))
    tracker.finish({"status": "completed"}, None)
    assert tracker.sync_command is None and list(tmp_path.iterdir()) == []


def test_wandb_offline_log_holds_every_epoch_and_the_config(tracked_run):
    log = load_wandb_log(tracked_run["run_dir"])
    assert log.path.parent.parent == tracked_run["run_dir"] / "wandb"
    assert log.path.parent.name.startswith("offline-run-") and log.path.name.startswith("run-")
    rows = [row for row in log.history if "val/dice" in row]
    assert [row["epoch"] for row in rows] == list(range(1, EPOCHS + 1))
    for row in rows:
        expected = _metrics(row["epoch"])
        for key in ("train/loss", "val/loss", "val/dice", "val/dice_global", "val/iou", "lr"):
            assert row[key] == float(expected[key]), key  # exact: JSON keeps every digit
    # The resolved spec as dotted keys, plus the run's identity.
    expected_config = flatten(spec_to_dict(tracked_run["spec"]))
    assert {k: log.config[k] for k in expected_config} == expected_config
    assert log.config["optim.lr"] == 3e-4 and log.config["model.base_channels"] == 8
    assert log.config["tracking.wandb.tags"] == ["ablation", "bn"]
    assert {k: log.config[k] for k in META} == META
    assert log.run["group"] == "sweep-a" and log.run["job_type"] == "arm-1"
    assert log.run["tags"] == ["ablation", "bn"] and log.run["display_name"] == "tracking-test"
    assert log.run["project"] == "segsweep" and log.run["notes"] == LONG_NOTES


def test_wandb_curves_use_epoch_as_step_metric(tracked_run):
    metrics = [r.metric for r in read_wandb_records(tracked_run["run_dir"]) if r.HasField("metric")]
    assert any(m.name == "epoch" for m in metrics)
    assert any(m.glob_name == "*" and m.step_metric == "epoch" for m in metrics)


def test_wandb_summary_images_checkpoint_and_exit(tracked_run):
    log = load_wandb_log(tracked_run["run_dir"])
    summary = tracked_run["summary"]
    for key in ("val/dice", "best_epoch", "test/dice", "test/dice_global", "test/iou", "status",
                "git_sha", "config_hash", "arm_hash"):
        assert log.summary[key] == summary[key], key
    assert log.summary["val/dice"] == _metrics(EPOCHS)["val/dice"]  # the best, not a last value
    images = [row for row in log.history if "predictions" in row]
    assert [row["epoch"] for row in images] == [2, 4]  # images_every: 2
    media = log.path.parent / "files" / images[0]["predictions"]["path"]
    np.testing.assert_array_equal(_decode_png(media.read_bytes()), _grid(2))
    assert [(a["type"], a["files"]) for a in log.artifacts] == [("model", ["best.pt"])]
    assert "best" in log.artifacts[0]["aliases"]
    assert log.exit_code == 0


def test_offline_run_gives_the_exact_sync_command(tracked_run, cli_output, capsys):
    wandb_tracker = tracked_run["wandb"]
    assert wandb_tracker.mode == "offline"
    sync_dir = next((tracked_run["run_dir"] / "wandb").glob("offline-run-*"))
    assert wandb_tracker.sync_dir == sync_dir
    assert wandb_tracker.sync_command == f"wandb sync {sync_dir}"
    assert tracked_run["tracker"].sync_command == wandb_tracker.sync_command  # via MultiTracker
    # finish() already ran in the fixture; a second finish only repeats the line.
    wandb_tracker.finish({"status": "completed"}, None)
    out, err = capsys.readouterr()
    assert f"wandb sync {sync_dir}" in out and "wandb sync" not in err


# --------------------------------------------------------------------------- TensorBoard


def test_tensorboard_has_the_same_series_and_the_grid(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # One TensorBoard run per training run, named for its arm (job_type) and seed.
    events = EventAccumulator(str(tracked_run["run_dir"] / "tensorboard" / "arm-1-s0"),
                              size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    for key in ("train/loss", "val/dice", "val/iou", "lr", "img_per_s"):
        series = events.Scalars(key)
        assert [e.step for e in series] == list(range(1, EPOCHS + 1)), key
        expected = [float(_metrics(e)[key]) for e in range(1, EPOCHS + 1)]
        assert [e.value for e in series] == pytest.approx(expected, rel=1e-6), key  # float32
    assert "epoch" not in events.Tags()["scalars"]
    images = events.Images("predictions")
    assert [e.step for e in images] == list(range(1, EPOCHS + 1))
    assert (images[2].height, images[2].width) == _grid(3).shape[:2]
    np.testing.assert_array_equal(_decode_png(images[2].encoded_image_string), _grid(3))


# --------------------------------------------------------------------------- mode: auto


def test_auto_without_credentials_is_offline_without_probing(monkeypatch, tmp_path):
    def no_probe(*args):
        raise AssertionError("probed the server without credentials")

    monkeypatch.setattr(tracking.wandb_mode, "server_answers", no_probe)  # where resolve_wandb_mode finds it
    assert wandb_credentials() is None
    mode, reason = resolve_wandb_mode("auto")
    assert mode == "offline" and "no W&B credentials" in reason
    tracker = WandbTracker(verbose=False)
    tracker.start(_spec(), tmp_path, META)  # the default mode is auto
    tracker.log_epoch(1, _metrics(1))
    tracker.finish({"status": "completed"}, None)
    assert tracker.mode == "offline" and tracker.sync_command
    assert [r["val/dice"] for r in load_wandb_log(tmp_path).history] == [_metrics(1)["val/dice"]]


def test_auto_honours_wandb_mode_from_the_environment(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_wandb_mode("auto")[0] == "disabled"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert resolve_wandb_mode("auto")[0] == "offline"


def test_credentials_are_found_in_env_and_netrc(monkeypatch, tmp_path):
    netrc = tmp_path / "netrc"
    netrc.write_text("machine example.org login user password other\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    assert wandb_credentials() is None  # an entry for another host does not count
    netrc.write_text("machine api.wandb.ai login user password " + "k" * 40 + "\n")
    assert wandb_credentials() == str(netrc)
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")
    assert wandb_credentials() is None  # a self-hosted server needs its own entry
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert wandb_credentials() == "WANDB_API_KEY"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_auto_with_credentials_and_no_server_is_offline(monkeypatch):
    calls = []
    real_probe = tracking.server_answers
    monkeypatch.setattr(tracking.wandb_mode, "server_answers", lambda url, t: calls.append(url) or real_probe(url, t))
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{_free_port()}")  # nothing listens
    mode, reason = resolve_wandb_mode("auto")
    assert mode == "offline" and "did not answer" in reason
    assert calls == [os.environ["WANDB_BASE_URL"]]


def test_auto_with_credentials_and_an_answering_server_is_online(monkeypatch):
    class Answer(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(404)  # any answer counts
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.server_port}")
        assert resolve_wandb_mode("auto")[0] == "online"  # decided only; no run is started
    finally:
        server.shutdown()
        server.server_close()


# --------------------------------------------------------------------------- failures


def _no_warnings(calls):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        calls()
    return [w for w in caught if issubclass(w.category, TrackingWarning)]


def test_wandb_init_failure_never_raises(monkeypatch, tmp_path, cli_output, capsys):
    import wandb

    def broken_init(**kwargs):
        raise RuntimeError("service unavailable")

    monkeypatch.setattr(wandb, "init", broken_init)
    tracker = WandbTracker()
    with pytest.warns(TrackingWarning, match="service unavailable"):
        tracker.start(_spec(**{"tracking.wandb.mode": "offline"}), tmp_path, META)
    assert not tracker.active and tracker.sync_command is None

    def later():
        tracker.log_epoch(1, _metrics(1))
        tracker.log_predictions(1, _grid(1))
        tracker.finish({"status": "completed"}, None)

    assert _no_warnings(later) == []
    assert "wandb sync" not in capsys.readouterr().out


def test_wandb_log_failure_warns_once_and_keeps_what_was_logged(tmp_path):
    tracker = WandbTracker(verbose=False)
    tracker.start(_spec(**{"tracking.wandb.mode": "offline"}), tmp_path, META)
    tracker.log_epoch(1, _metrics(1))
    calls = []

    def broken_log(*args, **kwargs):
        calls.append(args)
        raise ConnectionResetError("Connection lost")

    tracker.run.log = broken_log
    with pytest.warns(TrackingWarning, match="Connection lost"):
        tracker.log_epoch(2, _metrics(2))

    def later():
        tracker.log_epoch(3, _metrics(3))
        tracker.log_predictions(4, _grid(4))
        tracker.finish({"status": "completed"}, None)

    assert _no_warnings(later) == [] and len(calls) == 1
    log = load_wandb_log(tmp_path)
    assert [r["epoch"] for r in log.history if "val/dice" in r] == [1]
    assert log.exit_code == 1  # the run was closed as failed when the tracker gave up


def test_online_start_failure_falls_back_to_offline(monkeypatch, tmp_path):
    import wandb

    real_init, modes = wandb.init, []

    def online_fails(**kwargs):
        modes.append(kwargs["settings"].mode)
        if kwargs["settings"].mode == "online":
            raise TimeoutError("init timed out")
        return real_init(**kwargs)

    monkeypatch.setattr(wandb, "init", online_fails)
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)  # never used: the online init is faked
    tracker = WandbTracker(verbose=False)
    with pytest.warns(TrackingWarning, match="continuing offline"):
        tracker.start(_spec(**{"tracking.wandb.mode": "online"}), tmp_path, META)
    tracker.log_epoch(1, _metrics(1))
    tracker.finish({"status": "completed"}, None)
    assert modes == ["online", "offline"] and tracker.mode == "offline"
    assert load_wandb_log(tmp_path).history[0]["val/dice"] == _metrics(1)["val/dice"]


def test_online_without_credentials_never_tries_to_log_in(monkeypatch, tmp_path):
    import wandb

    real_init, modes = wandb.init, []
    monkeypatch.setattr(wandb, "init", lambda **kw: modes.append(kw["settings"].mode) or real_init(**kw))
    tracker = WandbTracker(verbose=False)
    with pytest.warns(TrackingWarning, match="no W&B credentials"):
        tracker.start(_spec(**{"tracking.wandb.mode": "online"}), tmp_path, META)
    tracker.finish({"status": "completed"}, None)
    assert modes == ["offline"] and tracker.sync_command


def _dead(pid: int) -> bool:
    """Exited (gone, or a zombie whose sockets the kernel has closed)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def _wandb_service_pids() -> list[int]:
    """Child processes of this test process that are wandb's service (wandb-core)."""
    pids = []
    for children in Path("/proc/self/task").glob("*/children"):
        for pid in children.read_text().split():
            try:
                if "wandb-core" in Path(f"/proc/{pid}/cmdline").read_text():
                    pids.append(int(pid))
            except OSError:
                pass
    return pids


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc to find wandb's service")
def test_a_dead_wandb_service_does_not_stop_training_and_the_next_run_recovers(tmp_path):
    first = WandbTracker(verbose=False)
    first.start(_spec(**{"tracking.wandb.mode": "offline"}), tmp_path / "a", META)
    first.log_epoch(1, _metrics(1))
    pids = _wandb_service_pids()
    if not pids:
        pytest.skip("wandb's service process was not found among this process's children")
    for pid in pids:  # only the wandb-core this test process started
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: all(_dead(pid) for pid in pids), "the killed wandb-core to exit")
    # W&B's client learns of the reset socket on its own reader thread: log until the tracker
    # notices (the warning is the event waited on), never raising into training.
    caught: list[warnings.WarningMessage] = []

    def warned() -> bool:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            first.log_epoch(2, _metrics(2))
        caught.extend(w for w in seen if issubclass(w.category, TrackingWarning))
        return bool(caught)

    wait_for(warned, "the tracker to notice its dead W&B service", poll_s=0.2)
    assert len(caught) == 1
    assert _no_warnings(lambda: first.log_epoch(3, _metrics(3))) == []  # warned once, then quiet
    assert _no_warnings(lambda: first.finish({"status": "completed"}, None)) == []
    # The next run in the same process (a sweep's next trial) gets a fresh service.
    second = WandbTracker(verbose=False)
    second.start(_spec(**{"tracking.wandb.mode": "offline"}), tmp_path / "b", META)
    second.log_epoch(1, _metrics(1))
    second.finish({"status": "completed"}, None)
    assert second.error is None
    assert [r["epoch"] for r in load_wandb_log(tmp_path / "b").history if "val/dice" in r] == [1]


def test_tensorboard_failure_warns_once(monkeypatch, tmp_path):
    tracker = TensorBoardTracker()
    tracker.start(_spec(), tmp_path, META)

    def full_disk(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tracker.writer, "add_scalar", full_disk)
    with pytest.warns(TrackingWarning, match="disk full"):
        tracker.log_epoch(1, _metrics(1))
    assert _no_warnings(lambda: (tracker.log_epoch(2, _metrics(2)),
                                 tracker.finish({"status": "completed"}, None))) == []


def test_multi_tracker_keeps_going_when_one_tracker_raises(tmp_path):
    seen = []

    class Broken(Tracker):
        def log_epoch(self, epoch, metrics):
            raise RuntimeError("bad tracker")

    class Recording(Tracker):
        def log_epoch(self, epoch, metrics):
            seen.append(epoch)

    multi = MultiTracker([Broken(), Recording()])
    with pytest.warns(TrackingWarning, match="bad tracker"):
        multi.log_epoch(3, _metrics(3))
    assert seen == [3] and multi.sync_command is None


# --------------------------------------------------------------------------- the log reader


def test_reader_stops_at_a_torn_tail_and_rejects_corruption(tracked_run, tmp_path):
    log = load_wandb_log(tracked_run["run_dir"]).path
    data = log.read_bytes()
    whole = sum(1 for _ in read_wandb_records(log))
    torn = tmp_path / "run-torn.wandb"
    torn.write_bytes(data[:-5])  # a writer killed mid-record
    assert 0 < sum(1 for _ in read_wandb_records(torn)) < whole
    corrupt = bytearray(data)
    corrupt[100] ^= 0xFF  # inside the first records
    bad = tmp_path / "run-bad.wandb"
    bad.write_bytes(bytes(corrupt))
    with pytest.raises(TrackingError, match="corrupt record"):
        list(read_wandb_records(bad))
    with pytest.raises(TrackingError, match="no W&B transaction log"):
        load_wandb_log(tmp_path / "empty-dir")
