"""Fault injection: interrupted, killed and resumed runs, full disks, failures, stale temporaries.

Runs that receive signals are subprocesses of `scripts/run.py`, started through a small driver
that sends the signal at an exact optimiser step or right after an epoch's metrics are written,
so every interruption point is reproducible. The spec is tiny (32 px, width 8, 5 epochs of 5
steps), deterministic on CPU with one thread, and exercises every piece of resumable state:
dropout, the plateau LR schedule (it halves the LR after epoch 2), early-stopping counters and
a top-2 checkpoint keeper.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from segsweep.checkpoint import TopK, load_checkpoint, save_checkpoint
from segsweep.errors import CheckpointError
from segsweep.record import METRIC_COLUMNS, STATUSES, atomic_write_text, is_temporary
from segsweep.spec import spec_from_dict
from segsweep.train.loop import StopTraining, fit

REPO = Path(__file__).resolve().parents[1]
QUICK = REPO / "experiments" / "quickstart.yaml"
TIMING = ("epoch_s", "img_per_s")  # wall-clock columns: differ between any two runs
STEPS_PER_EPOCH = 5  # 36 training images (40 trainval, every 10th is validation), batch 8

# The spec every subprocess run uses (plus data.root / data.cache_dir).
SPEC_ARGS = [
    "data.image_size=32", "data.synthetic.num_trainval=40", "data.synthetic.num_test=12",
    "data.synthetic.size=48", "model.base_channels=8", "train.epochs=5", "train.batch_size=8",
    "train.deterministic=true", "train.threads=1", "train.precision=fp32", "train.channels_last=true",
    "tracking.wandb.mode=disabled",
    "optim.scheduler=plateau", "optim.plateau_patience=0", "optim.gamma=0.5",
    "train.early_stopping_patience=3", "checkpoint.keep_best=2",
]

# Runs `segsweep run` with faults from SEGSWEEP_TEST_FAULTS, each "KIND:N:SIGNAME": the signal
# goes to the process itself at the N-th event of that kind in this process. Kinds: "step" right
# after an optimiser step; "metrics" right after metrics.csv is renamed into place (the end of an
# epoch, before its last.pt is saved); "event" at the N-th of all steps and renames together,
# a rename's event firing before the rename (a kill there leaves a cut-short write's temporary).
# With SEGSWEEP_TEST_EVENTS set, the process appends each event ("step" or "write NAME") to that
# file, so a reference run tells how many events are left after any step.
DRIVER = r"""
import os, signal, sys
faults = [f.split(":") for f in os.environ.get("SEGSWEEP_TEST_FAULTS", "").split(";") if f]
log = os.environ.get("SEGSWEEP_TEST_EVENTS")
from torch.optim.optimizer import register_optimizer_step_post_hook
counts = {"step": 0, "metrics": 0, "write": 0, "event": 0}
def fire(kind, what=None):
    counts[kind] += 1
    if what is not None:
        counts["event"] += 1
        if log:
            with open(log, "a") as fh:
                fh.write(what + "\n")
    for k, n, name in faults:
        if (k == kind and int(n) == counts[kind]) or (what is not None and k == "event" and int(n) == counts["event"]):
            os.kill(os.getpid(), getattr(signal, name))
register_optimizer_step_post_hook(lambda *args: fire("step", "step"))
real_replace = os.replace
def replace(src, dst, *args, **kwargs):
    name = os.path.basename(os.fspath(dst))
    fire("write", "write " + name)
    real_replace(src, dst, *args, **kwargs)
    if name == "metrics.csv":
        fire("metrics")
os.replace = replace
from segsweep.cli import main
main(["run", *sys.argv[1:]])
"""


# --------------------------------------------------------------------------- helpers


class Proc:
    """A running `run.py` (through the driver); stdout/stderr go to files so nothing blocks."""

    def __init__(self, args: list[str], log_dir: Path, faults: str = "", events: Path | None = None):
        log_dir.mkdir(parents=True, exist_ok=True)
        n = len(list(log_dir.glob("*.out")))
        self.out_path, self.err_path = log_dir / f"{n}.out", log_dir / f"{n}.err"
        env = {**os.environ, "SEGSWEEP_TEST_FAULTS": faults, "PYTHONUNBUFFERED": "1"}
        if events is not None:
            env["SEGSWEEP_TEST_EVENTS"] = str(events)
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.popen = subprocess.Popen([sys.executable, "-c", DRIVER, *args], cwd=REPO, env=env,
                                          stdout=out, stderr=err)

    def wait(self, timeout: float = 300) -> "Proc":
        try:
            self.code = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            raise
        self.out, self.err = self.out_path.read_text(), self.err_path.read_text()
        return self

    def run_dir(self) -> Path | None:
        for line in self.out_path.read_text().splitlines():
            if line.startswith("run folder: "):
                return Path(line.removeprefix("run folder: "))
        return None


def spec_args(data_root: Path) -> list[str]:
    return [str(QUICK), *SPEC_ARGS, f"data.root={data_root}", f"data.cache_dir={data_root.parent / 'cache'}"]


def new_run(data_root: Path, results: Path, faults: str = "", events: Path | None = None) -> Proc:
    return Proc([*spec_args(data_root), "--results", str(results)], results / "logs", faults, events)


def resume(run_dir: Path, faults: str = "") -> Proc:
    return Proc(["--resume", str(run_dir)], run_dir.parent.parent.parent / "logs", faults)


def metric_table(run_dir: Path) -> list[dict[str, str]]:
    """metrics.csv as text cells (exact float reprs), without the wall-clock columns."""
    with open(run_dir / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and list(rows[0]) == list(METRIC_COLUMNS)
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def checkpoints(run_dir: Path) -> dict[str, dict]:
    return {p.name: torch.load(p, weights_only=True) for p in sorted((run_dir / "checkpoints").glob("*.pt"))}


def assert_same_tensors(a, b, where: str) -> None:
    """Recursive exact equality of checkpoint contents (tensors bit for bit)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), (where, set(a) ^ set(b))
        for key in a:
            assert_same_tensors(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b or (a != a and b != b), (where, a, b)  # NaN equals NaN here


def assert_same_as_reference(run_dir: Path, reference: Path) -> None:
    """Every metric, the summary's results, the per-image test scores and every checkpoint's
    weights, optimiser state and training state equal the uninterrupted run's, exactly."""
    assert metric_table(run_dir) == metric_table(reference)
    got, want = summary(run_dir), summary(reference)
    assert got["status"] == want["status"] == "completed"
    for key in ("best_epoch", "val/dice", "test/dice", "test/dice_global", "test/iou", "epochs_run", "config_hash"):
        assert got[key] == want[key], key
    assert (run_dir / "test_per_image.csv").read_text() == (reference / "test_per_image.csv").read_text()
    ours, theirs = checkpoints(run_dir), checkpoints(reference)
    assert set(ours) == set(theirs) == {"best.pt", "best-2.pt", "last.pt"}
    for name in ours:
        for part in ("model", "optimizer", "scaler", "schedule", "epoch", "spec", "partial"):
            assert_same_tensors(ours[name][part], theirs[name][part], f"{name}:{part}")
        state, ref_state = dict(ours[name]["state"]), dict(theirs[name]["state"])
        for s in (state, ref_state):
            s.pop("elapsed_s")
            s["history"] = [{k: v for k, v in r.items() if k not in TIMING} for r in s["history"]]
        assert state == ref_state, name


def check_run_folder(run_dir: Path) -> list[str]:
    """Every record in the folder parses; leftovers of cut-short writes are hidden temporaries.

    Returns the names of the temporaries found (they are never read as records).
    """
    temporaries = []
    for path in sorted(p for p in run_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(run_dir).as_posix()
        if is_temporary(path):
            temporaries.append(rel)
        elif rel == "config.yaml":
            spec_from_dict(yaml.safe_load(path.read_text()), rel)
        elif rel == "metrics.csv":
            with open(path, newline="") as fh:
                rows = list(csv.DictReader(fh))
            assert rows and list(rows[0]) == list(METRIC_COLUMNS), rel
            assert [int(r["epoch"]) for r in rows] == list(range(1, len(rows) + 1)), rel
            assert all(float(r[c]) == float(r[c]) for r in rows for c in METRIC_COLUMNS[1:]), rel
        elif rel == "summary.json":
            assert json.loads(path.read_text())["status"] in STATUSES, rel
        elif rel.endswith(".pt"):
            state = torch.load(path, weights_only=True)
            assert "model" in state and isinstance(state["epoch"], int), rel
        elif rel == "test_per_image.csv":
            with open(path, newline="") as fh:
                assert len(list(csv.DictReader(fh))) == 12, rel
        elif rel.endswith(".png"):
            import cv2

            assert cv2.imread(str(path)) is not None, rel
        else:
            raise AssertionError(f"unexpected file in the run folder: {rel}")
    return temporaries


def folder_digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference_run(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """The uninterrupted run every resumed one must reproduce (its folder is never modified),
    and its events in order ("step" or "write NAME", as the driver counts them), to aim kills."""
    folder = tmp_path_factory.mktemp("reference")
    proc = new_run(synthetic_root, folder, events=folder / "events.log").wait()
    assert proc.code == 0, proc.err
    run_dir = proc.run_dir()
    assert [int(r["epoch"]) for r in metric_table(run_dir)] == [1, 2, 3, 4, 5]
    lrs = [float(r["lr"]) for r in metric_table(run_dir)]
    assert lrs[0] > lrs[-1], "the plateau schedule should have cut the LR (its state is then tested)"
    events = (folder / "events.log").read_text().splitlines()
    # From fit's first write on: the data cache may already exist (other tests share it).
    events = events[events.index("write config.yaml"):]
    assert events.count("step") == 5 * STEPS_PER_EPOCH and events[-1] == "write summary.json"
    return run_dir, events


@pytest.fixture(scope="module")
def reference(reference_run: tuple[Path, list[str]]) -> Path:
    return reference_run[0]


# --------------------------------------------------------------------------- resume identity


@pytest.mark.parametrize("case, sessions", [
    # (faults of each session; the last session has none and completes)
    ("sigint-after-epoch-1", ["metrics:1:SIGINT"]),
    ("sigterm-mid-epoch-2", [f"step:{STEPS_PER_EPOCH + 2}:SIGTERM"]),
    # Stopped mid-epoch 2 (after its 3rd batch); then, resumed, after the last batch of epoch 3
    # (the session's 7th step: 2 to end epoch 2, 5 of epoch 3), before its validation; then,
    # resumed again, right after epoch 3's record is written, before its last.pt.
    ("three-interruptions", [f"step:{STEPS_PER_EPOCH + 3}:SIGINT", "step:7:SIGTERM", "metrics:1:SIGINT"]),
])
def test_interrupted_and_resumed_run_matches_uninterrupted(
    reference: Path, synthetic_root: Path, tmp_path: Path, case: str, sessions: list[str],
) -> None:
    """SIGINT/SIGTERM finish the current step, save last.pt (with the batches already done
    when mid-epoch), write summary.json as interrupted and exit 130/143; `run.py --resume`
    then continues, and the finished run equals the uninterrupted one exactly: every column
    of metrics.csv except the wall-clock `epoch_s` and `img_per_s` (which differ between any
    two runs), the test scores, and every checkpoint's weights, optimiser and training state.
    """
    proc = new_run(synthetic_root, tmp_path, sessions[0]).wait()
    run_dir = proc.run_dir()
    for i, faults in enumerate(sessions):
        if i:
            proc = resume(run_dir, faults).wait()
        signame = faults.rsplit(":", 1)[1]
        assert proc.code == 128 + getattr(signal, signame), (proc.code, proc.err)
        assert f"received {signame}: finishing this step" in proc.err
        assert f"--resume {run_dir}" in proc.err
        s = summary(run_dir)
        assert s["status"] == "interrupted"
        last = load_checkpoint(run_dir / "checkpoints" / "last.pt")
        assert last["epoch"] == s["epochs_run"] == len(metric_table(run_dir))
        check_run_folder(run_dir)
    if case == "sigterm-mid-epoch-2":
        last = load_checkpoint(run_dir / "checkpoints" / "last.pt")
        assert last["epoch"] == 1 and last["partial"]["epoch"] == 2 and last["partial"]["progress"]["batches"] == 2
    if case == "sigint-after-epoch-1":
        last = load_checkpoint(run_dir / "checkpoints" / "last.pt")
        assert last["epoch"] == 1 and last["partial"] is None
    final = resume(run_dir).wait()
    assert final.code == 0, final.err
    assert "status: completed" in final.out
    assert_same_as_reference(run_dir, reference)
    assert check_run_folder(run_dir) == []


def events_left(events: list[str], steps_done: int) -> int:
    """How many of the reference run's events come after its `steps_done`-th optimiser step.

    A session resumed from a checkpoint taken after that step replays at least these (the
    same epochs, writes and test pass; resuming only adds writes), so a kill aimed at any
    of them is sure to land, whatever the machine's speed."""
    if steps_done == 0:
        return len(events)
    at = [i for i, e in enumerate(events) if e == "step"][steps_done - 1]
    return len(events) - at - 1


def test_sigkills_at_random_moments(reference_run: tuple[Path, list[str]], synthetic_root: Path,
                                    tmp_path: Path) -> None:
    """SIGKILL at seeded random events: after each kill every file in the run folder parses
    (config.yaml, metrics.csv, summary.json when present, every checkpoint with
    weights_only=True) and the only other files are hidden `.*.tmp` leftovers of cut-short
    atomic writes. Resumed after each kill, the run ends equal to the uninterrupted one.

    Kills are aimed at events the driver counts (optimiser steps, and every rename of a record
    into place, just before it happens), drawn among those the session is sure to reach, so
    exactly four kills land on any machine: the first anywhere in a fresh run from fit's first
    write (config.yaml) on (training, checkpoints, test, final writes), later ones in what a
    resumed session has left. summary.json is the last file a run writes, so a killed run has none: resume it.
    """
    reference, events = reference_run
    rng = random.Random(20261124)
    kills, run_dir, temporaries = 0, None, 0
    for session in range(8):
        if run_dir is not None and (run_dir / "summary.json").exists():
            break
        last = None if run_dir is None else run_dir / "checkpoints" / "last.pt"
        if last is None or not last.exists():
            if run_dir is not None:  # killed before its first checkpoint: nothing to resume
                assert resume(run_dir).wait().code == 2
                shutil.rmtree(run_dir)
            done, start = 0, lambda faults: new_run(synthetic_root, tmp_path / "results", faults)
        else:
            state = load_checkpoint(last)
            partial = state["partial"]["progress"]["batches"] if state["partial"] else 0
            done = state["epoch"] * STEPS_PER_EPOCH + partial
            start = lambda faults, run_dir=run_dir: resume(run_dir, faults)
        if kills == 4:  # enough: let this session finish the run
            proc = start("").wait()
            assert proc.code == 0, proc.err
            run_dir = run_dir or proc.run_dir()
            break
        at = rng.randint(1, events_left(events, done))
        proc = start(f"event:{at}:SIGKILL").wait()
        assert proc.code == -signal.SIGKILL, (at, done, proc.code, proc.err)
        kills += 1
        run_dir = run_dir or proc.run_dir()
        if run_dir is not None and run_dir.exists():
            temporaries += len(check_run_folder(run_dir))
            if (run_dir / "summary.json").exists():  # killed after the run's record was complete
                assert summary(run_dir)["status"] == "completed"
        else:
            run_dir = None  # killed before fit created the folder
    assert kills == 4
    assert run_dir is not None and (run_dir / "summary.json").exists()
    assert_same_as_reference(run_dir, reference)
    assert check_run_folder(run_dir) == []


def test_second_signal_exits_at_once(reference: Path, synthetic_root: Path, tmp_path: Path) -> None:
    """A second Ctrl-C while the first is being honoured exits at once (130): no mid-epoch
    checkpoint is saved, last.pt stays the previous epoch's, summary.json says interrupted."""
    at = STEPS_PER_EPOCH + 2
    proc = new_run(synthetic_root, tmp_path, f"step:{at}:SIGINT;step:{at}:SIGINT").wait()
    assert proc.code == 130, proc.err
    assert "received SIGINT again: exiting now" in proc.err
    run_dir = proc.run_dir()
    s = summary(run_dir)
    assert s["status"] == "interrupted" and "second signal" in s["error"] and s["epochs_run"] == 1
    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert last["epoch"] == 1 and last["partial"] is None
    check_run_folder(run_dir)
    assert resume(run_dir).wait().code == 0
    assert_same_as_reference(run_dir, reference)


def test_resume_after_the_run_ended(reference: Path, tmp_path: Path, cli) -> None:
    """A completed run: --resume says there is nothing to resume (exit 0) and changes nothing.
    Killed after its last epoch (during the test, so no summary.json): resume only re-tests,
    trains no further epoch, and ends completed with the same results."""
    before = folder_digest(reference)
    result = cli("run.py", "--resume", reference)
    assert result.code == 0 and "nothing to resume" in result.out and "(completed)" in result.out
    assert folder_digest(reference) == before

    killed = tmp_path / "runs" / "quickstart" / reference.name
    shutil.copytree(reference, killed)
    for name in ("summary.json", "test_per_image.csv", "predictions.png"):
        (killed / name).unlink()
    proc = resume(killed).wait()
    assert proc.code == 0, proc.err
    assert "train/loss" not in proc.out  # no epoch trained again
    assert_same_as_reference(killed, reference)


@pytest.mark.parametrize("how", ["early-stopping", "pruned-by-hook"])
def test_resume_after_an_early_stop_only_retests(tiny_spec, tmp_path: Path, how: str) -> None:
    """A run that stopped early (patience, or a sweep's pruning hook) and was killed while
    testing: last.pt carries the stop, so resuming trains no further epoch and ends with the
    same status and reason."""
    if how == "early-stopping":  # lr ~ 0: val/dice never improves after epoch 1
        spec, hook = tiny_spec(**{"train.epochs": 6, "optim.lr": 1e-12, "train.early_stopping_patience": 1}), None
    else:
        spec = tiny_spec(**{"train.epochs": 6})

        def hook(epoch: int, metrics: dict) -> None:
            if epoch == 2:
                raise StopTraining("pruned", "pruned by test")
    first = fit(spec, tmp_path / "run", on_epoch_end=hook)
    assert first.metrics["epochs_run"] == 2 and first.metrics["stopped_early"]
    (tmp_path / "run" / "summary.json").unlink()  # as if killed while testing
    again = fit(spec, tmp_path / "run", on_epoch_end=hook, resume=True)
    assert again.status == first.status == ("completed" if how == "early-stopping" else "pruned")
    for key in ("epochs_run", "best_epoch", "val/dice", "test/dice", "stopped_early"):
        assert again.metrics[key] == first.metrics[key], key
    assert len(metric_table(tmp_path / "run")) == 2


def test_resume_needs_last_checkpoint(reference: Path, tmp_path: Path, cli) -> None:
    """A run folder without checkpoints/last.pt (killed before its first epoch ended): one line
    on stderr, exit 2, nothing written."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copy(reference / "config.yaml", run_dir / "config.yaml")
    result = cli("run.py", "--resume", run_dir)
    assert result.code == 2
    assert result.err.strip().count("\n") == 0 and "last.pt" in result.err and str(run_dir) in result.err
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.yaml"]


# --------------------------------------------------------------------------- disk, errors, statuses


def _full_disk_for(monkeypatch, name: str, nth: int) -> None:
    """From the `nth` temporary file made for `name` on, that file is /dev/full (every write
    fails with a real ENOSPC from the kernel), as on a disk that has just filled up."""
    import segsweep.record as record

    if not Path("/dev/full").exists():
        pytest.skip("/dev/full is needed to simulate a full disk")
    real, seen = record.tempfile.mkstemp, {"n": 0}

    def mkstemp(*args, prefix: str = "", **kwargs):
        fd, tmp = real(*args, prefix=prefix, **kwargs)
        if prefix == f".{name}.":
            seen["n"] += 1
            if seen["n"] >= nth:
                os.close(fd)
                os.unlink(tmp)
                os.symlink("/dev/full", tmp)
                fd = os.open(tmp, os.O_WRONLY)
        return fd, tmp

    monkeypatch.setattr(record.tempfile, "mkstemp", mkstemp)


def test_full_disk_while_saving_keeps_the_previous_checkpoint(tiny_spec, tmp_path: Path, cli, monkeypatch) -> None:
    """The disk fills up while last.pt of epoch 2 is written (a real ENOSPC through torch.save):
    the run fails with one line naming the file and saying the previous checkpoint is intact;
    last.pt still loads and holds epoch 1; no temporary file is left; summary.json says failed."""
    from segsweep.spec import spec_to_yaml

    _full_disk_for(monkeypatch, "last.pt", nth=2)
    (tmp_path / "spec.yaml").write_text(spec_to_yaml(tiny_spec(**{"train.epochs": 3})))
    result = cli("run.py", tmp_path / "spec.yaml", "--results", tmp_path / "results")
    assert result.code == 2, result.err
    line = result.err.strip()
    assert "\n" not in line and "last.pt" in line and "no space left on device" in line
    assert "the previous last.pt is intact" in line
    run_dir = next((tmp_path / "results" / "runs").glob("*/*"))
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["epoch"] == 1
    assert check_run_folder(run_dir) == []
    s = summary(run_dir)
    assert s["status"] == "failed" and "no space left" in s["error"] and s["epochs_run"] == 2


def test_full_disk_for_records_and_first_checkpoints(tmp_path: Path, monkeypatch) -> None:
    """The same for any record (here metrics.csv) and for a checkpoint with no previous file."""
    from segsweep.errors import SegsweepError
    from segsweep.record import write_metrics

    write_metrics(tmp_path, [{"epoch": 1, "train/loss": 0.5}])
    before = (tmp_path / "metrics.csv").read_bytes()
    _full_disk_for(monkeypatch, "metrics.csv", nth=1)
    _full_disk_for(monkeypatch, "last.pt", nth=1)
    with pytest.raises(SegsweepError, match="metrics.csv: no space left on device .* previous metrics.csv is intact"):
        write_metrics(tmp_path, [{"epoch": 1, "train/loss": 0.5}, {"epoch": 2, "train/loss": 0.4}])
    assert (tmp_path / "metrics.csv").read_bytes() == before
    with pytest.raises(CheckpointError, match="no last.pt was written"):
        save_checkpoint({"model": {"w": torch.zeros(10_000)}}, tmp_path / "last.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]


@pytest.mark.parametrize("where", ["hook", "test-phase", "keyboard-interrupt"])
def test_python_errors_end_in_a_final_status(tiny_spec, tmp_path: Path, monkeypatch, where: str) -> None:
    """An exception anywhere after the run folder exists (here: in the epoch hook, or while
    testing the best checkpoint) leaves summary.json as failed with the error, then re-raises;
    a KeyboardInterrupt raised in-process (not a signal) leaves it as interrupted."""
    import segsweep.train.loop as trainer

    hook = None
    if where == "hook":
        def hook(epoch, metrics):
            raise RuntimeError("hook exploded")
        expected, error = RuntimeError, "hook exploded"
    elif where == "keyboard-interrupt":
        def hook(epoch, metrics):
            raise KeyboardInterrupt
        expected, error = KeyboardInterrupt, "KeyboardInterrupt"
    else:
        real = trainer.evaluate

        def evaluate(*args, desc="eval", **kwargs):
            if desc == "test":
                raise RuntimeError("test split exploded")
            return real(*args, desc=desc, **kwargs)

        monkeypatch.setattr(trainer, "evaluate", evaluate)
        expected, error = RuntimeError, "test split exploded"
    with pytest.raises(expected):
        fit(tiny_spec(**{"train.epochs": 1}), tmp_path / "run", on_epoch_end=hook)
    s = summary(tmp_path / "run")
    assert s["status"] == ("interrupted" if where == "keyboard-interrupt" else "failed")
    assert error in s["error"] and s["epochs_run"] == 1
    check_run_folder(tmp_path / "run")


def test_diverged_run_exits_1_and_records_where(tiny_spec, tmp_path: Path, cli, monkeypatch) -> None:
    """A non-finite loss ends the run as diverged (epoch and step in summary.json), exit 1;
    --resume then says there is nothing to resume."""
    import segsweep.train.state as trainer  # where the loss is built

    real = trainer.build_loss

    def exploding(spec, head):
        loss, calls = real(spec, head), {"n": 0}

        def forward(output, mask):
            calls["n"] += 1
            return loss(output, mask) * (float("inf") if calls["n"] == 9 else 1.0)

        return forward

    monkeypatch.setattr(trainer, "build_loss", exploding)
    from segsweep.spec import spec_to_yaml

    (tmp_path / "spec.yaml").write_text(spec_to_yaml(tiny_spec(**{"train.epochs": 3})))
    result = cli("run.py", tmp_path / "spec.yaml", "--results", tmp_path / "results")
    assert result.code == 1 and "run diverged: non-finite loss" in result.err
    run_dir = next((tmp_path / "results" / "runs").glob("*/*"))
    s = summary(run_dir)
    # 5 training steps and 1 validation batch per epoch: call 9 is epoch 2's third step (global step 7).
    assert (s["status"], s["diverged_epoch"], s["diverged_step"], s["epochs_run"]) == ("diverged", 2, 7, 1)
    again = cli("run.py", "--resume", run_dir)
    assert again.code == 0 and "nothing to resume" in again.out


# --------------------------------------------------------------------------- top-k after a kill


def _fake(epoch: int) -> dict:
    return {"model": {"w": torch.full((2,), float(epoch))}, "epoch": epoch}


def _epochs(directory: Path) -> dict[str, int]:
    return {p.name: torch.load(p, weights_only=True)["epoch"] for p in sorted(directory.glob("best*.pt"))}


@pytest.mark.parametrize("kill_at", ["after-shift", "after-save"])
def test_topk_files_agree_with_last_checkpoint_after_a_kill(tmp_path: Path, monkeypatch, kill_at: str) -> None:
    """A SIGKILL inside `TopK.offer` (after moving best.pt to best-2.pt, or after saving the new
    best.pt) leaves files ahead of last.pt's entries; `restore` puts them back, and re-offering
    the epoch (as the resumed run does) gives what an uninterrupted offer gives."""
    import segsweep.checkpoint as checkpoint

    clean, crashed = TopK(tmp_path / "clean", 2), TopK(tmp_path / "crashed", 2)
    for topk in (clean, crashed):
        topk.directory.mkdir()
        for epoch, score in ((1, 0.5), (2, 0.6)):
            topk.offer(score, epoch, _fake(epoch))
    saved_entries = list(crashed.entries)  # what last.pt of epoch 2 holds
    clean.offer(0.7, 3, _fake(3))

    class Killed(Exception):
        pass

    real_save = checkpoint.save_checkpoint

    def dying_save(payload, path):
        if kill_at == "after-save":
            real_save(payload, path)
        raise Killed

    monkeypatch.setattr(checkpoint, "save_checkpoint", dying_save)
    with pytest.raises(Killed):
        crashed.offer(0.7, 3, _fake(3))
    monkeypatch.setattr(checkpoint, "save_checkpoint", real_save)
    atomic_write_text(crashed.directory / ".best.pt.abc123.tmp", "half a checkpoint")  # a cut-short write
    assert _epochs(crashed.directory) != {"best.pt": 2, "best-2.pt": 1}

    resumed = TopK(crashed.directory, 2)
    resumed.restore(saved_entries)
    # best-2.pt (epoch 1) was overwritten by the shift: dropped, as re-offering epoch 3 would.
    assert _epochs(crashed.directory) == {"best.pt": 2} and resumed.entries == [(0.6, 2)]
    assert (crashed.directory / ".best.pt.abc123.tmp").exists()  # not taken for a checkpoint
    resumed.offer(0.7, 3, _fake(3))
    assert resumed.entries == clean.entries == [(0.7, 3), (0.6, 2)]
    assert _epochs(crashed.directory) == _epochs(clean.directory) == {"best.pt": 3, "best-2.pt": 2}


@pytest.mark.parametrize("kill_at", ["before-shift", "after-shift"])
def test_a_best_linked_from_last_survives_a_kill_before_the_link(tmp_path: Path, monkeypatch, kill_at: str) -> None:
    """The trainer saves last.pt, then makes a new best a hard link to it. A SIGKILL before the
    link leaves last.pt's entries naming an epoch no best file holds: `restore` links it again
    from last.pt, so the resumed run has exactly the uninterrupted run's files."""
    import segsweep.checkpoint as checkpoint

    clean, crashed = TopK(tmp_path / "clean", 2), TopK(tmp_path / "crashed", 2)
    for topk in (clean, crashed):
        topk.directory.mkdir()
        for epoch, score in ((1, 0.5), (2, 0.6)):
            save_checkpoint(_fake(epoch), topk.directory / "last.pt")
            topk.offer(score, epoch, _fake(epoch), same_as=topk.directory / "last.pt")
    assert os.path.samefile(clean.directory / "best.pt", clean.directory / "last.pt")
    entries = crashed.after_offer(0.7, 3)  # what last.pt of epoch 3 holds
    for topk in (clean, crashed):
        save_checkpoint(_fake(3), topk.directory / "last.pt")
    clean.offer(0.7, 3, _fake(3), same_as=clean.directory / "last.pt")

    class Killed(Exception):
        pass

    def dying_link(source, target):
        raise Killed

    if kill_at == "after-shift":
        monkeypatch.setattr(checkpoint, "_link", dying_link)
        with pytest.raises(Killed):
            crashed.offer(0.7, 3, _fake(3), same_as=crashed.directory / "last.pt")
        monkeypatch.undo()
        assert _epochs(crashed.directory) == {"best-2.pt": 2}
    resumed = TopK(crashed.directory, 2)
    resumed.restore(entries, last=crashed.directory / "last.pt")
    assert resumed.entries == clean.entries == [(0.7, 3), (0.6, 2)]
    assert _epochs(crashed.directory) == _epochs(clean.directory) == {"best.pt": 3, "best-2.pt": 2}
    # Saving the next last.pt replaces it atomically: the best file linked to the old one keeps epoch 3.
    save_checkpoint(_fake(4), crashed.directory / "last.pt")
    assert _epochs(crashed.directory)["best.pt"] == 3


def test_a_mid_epoch_last_is_never_linked_as_a_best(tmp_path: Path) -> None:
    topk = TopK(tmp_path, 1)
    save_checkpoint({**_fake(2), "partial": {"epoch": 3}}, tmp_path / "last.pt")
    topk.restore([(0.6, 2)], last=tmp_path / "last.pt")
    assert topk.entries == [] and not (tmp_path / "best.pt").exists()


def test_an_epochs_checkpoint_is_synced_while_the_next_epoch_trains(tiny_spec, tmp_path: Path, monkeypatch) -> None:
    """last.pt of epoch 1 is serialised in line, then fsynced and renamed into place on a
    background thread: that half is held until an optimiser step of epoch 2 has run (in line it
    would never see one), and it is done before epoch 2's record is made."""
    import threading

    import segsweep.train.callbacks as callbacks
    from torch.optim.optimizer import register_optimizer_step_post_hook

    stepped = threading.Event()
    holding = threading.Event()
    real_stage = callbacks.stage_checkpoint

    def held_stage(payload, path):
        rename = real_stage(payload, path)
        if payload["epoch"] != 1:
            return rename

        def held_rename() -> None:
            assert threading.current_thread() is not threading.main_thread()
            holding.set()
            assert stepped.wait(timeout=120), "no optimiser step ran while last.pt was being synced"
            rename()
        return held_rename

    monkeypatch.setattr(callbacks, "stage_checkpoint", held_stage)
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    records: list[int | None] = []
    handle = register_optimizer_step_post_hook(lambda *args: stepped.set() if holding.is_set() else None)
    try:
        result = fit(tiny_spec(**{"train.epochs": 2, "checkpoint.keep_best": 1}), tmp_path / "run",
                     on_epoch_end=lambda epoch, metrics: records.append(
                         load_checkpoint(last)["epoch"] if last.exists() else None))
    finally:
        handle.remove()
    assert result.status == "completed" and stepped.is_set()
    assert records == [None, 1]  # at epoch 2's end last.pt is epoch 1's, complete (epoch 2's comes after)
    assert load_checkpoint(last)["epoch"] == 2 and load_checkpoint(last.with_name("best.pt"))["epoch"] in (1, 2)
    assert check_run_folder(tmp_path / "run") == []


def test_where_hard_links_fail_a_best_is_a_copy_of_last(tmp_path: Path, monkeypatch) -> None:
    """On a file system without hard links the new best is a copy of last.pt's file (not a
    second serialisation of a state the training thread may be changing)."""
    import segsweep.checkpoint as checkpoint

    monkeypatch.setattr(checkpoint, "_link", lambda source, target: False)
    topk = TopK(tmp_path, 2)
    save_checkpoint(_fake(1), tmp_path / "last.pt")
    assert topk.offer(0.5, 1, None, same_as=tmp_path / "last.pt")
    assert (tmp_path / "best.pt").read_bytes() == (tmp_path / "last.pt").read_bytes()
    assert not os.path.samefile(tmp_path / "best.pt", tmp_path / "last.pt")
    save_checkpoint(_fake(2), tmp_path / "last.pt")
    assert topk.offer(0.6, 2, None, same_as=tmp_path / "last.pt")
    assert _epochs(tmp_path) == {"best.pt": 2, "best-2.pt": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best-2.pt", "best.pt", "last.pt"]
