"""DDP with torchrun on CPU (gloo, 2 processes): one run folder written by rank 0 only, SIGTERM
and resume, metrics over the whole split, shards that cover every image once, a failing rank.

The multi-process tests start `python -m torch.distributed.run`, either on scripts/run.py or
on this file, whose `__main__` block holds the per-rank workers.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

QUICKSTART = REPO / "experiments" / "quickstart.yaml"
# Odd validation split (9 images: trainval lines 0, 5, ..., 40) in batches of one: the ranks get
# 4 and 5 images, so they run different numbers of evaluation batches.
ODD_VAL = {"data.synthetic.num_trainval": 45, "data.val_every": 5, "train.eval_batch_size": 1}


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: Any, timeout: float = 180, env: dict | None = None, wait: bool = True) -> Any:
    """`torchrun --nproc_per_node=2 ARGS` on a free port (subprocess.CompletedProcess, or a Popen)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={free_port()}", *map(str, args)]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    if not wait:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=full_env, cwd=REPO)
    return subprocess.run(command, capture_output=True, text=True, env=full_env, cwd=REPO, timeout=timeout)


def as_args(overrides: dict) -> list[str]:
    return [f"{k}={v}" for k, v in overrides.items()]


@pytest.fixture(scope="module")
def odd_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("odd") / "synthetic"


@pytest.fixture
def odd_spec(tiny_overrides: dict, odd_root: Path) -> Any:
    from segsweep.spec import load_spec

    return load_spec(QUICKSTART, {**tiny_overrides, **ODD_VAL, "data.root": str(odd_root),
                                  "data.cache_dir": str(odd_root.parent / "cache"), "train.device": "cpu",
                                  "train.precision": "fp32"})


# --------------------------------------------------------------------------- single process


def test_eval_shards_cover_every_validation_image_exactly_once(odd_spec: Any) -> None:
    """Contiguous, unpadded shards for val/test (DistributedSampler pads with duplicates); train padded."""
    from segsweep.data import build_data

    n = len(build_data(odd_spec).datasets["val"])
    assert n % 2 == 1 and n == 9
    for world in (2, 3, 4):
        seen: list[int] = []
        lengths = []
        for rank in range(world):
            bundle = build_data(odd_spec, rank=rank, world_size=world)
            indices = [int(i) for _, _, batch in bundle.val for i in batch]
            assert len(indices) == len(bundle.val.sampler)
            seen += indices
            lengths.append(len(bundle.train_sampler))
        assert sorted(seen) == list(range(n)), f"world {world}: {sorted(seen)}"
        assert seen == list(range(n))  # rank 0's slice, then rank 1's: the single-process order
        assert len(set(lengths)) == 1  # every rank runs the same number of training steps
    # The test split as well, with the smallest odd case: 3 images on 2 ranks.
    from segsweep.data.pipeline import EpochSampler

    shards = [EpochSampler(3, 0, shuffle=False, rank=r, world_size=2, pad=False).indices() for r in range(2)]
    assert shards == [[0], [1, 2]]


def test_setup_without_torchrun_is_a_single_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.distributed as dist

    from segsweep.distributed import main_value, setup, threads_per_process

    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    ranks = setup("cpu")
    assert (ranks.rank, ranks.world_size, ranks.backend, ranks.is_main) == (0, 1, None, True)
    assert not dist.is_initialized() and main_value("x") == "x"
    assert [threads_per_process(n, cores=16) for n in (1, 2, 3, 16, 32)] == [16, 8, 5, 1, 1]


def test_sync_batchnorm_converts_only_for_several_ranks_and_refuses_cpu() -> None:
    from segsweep.distributed import convert_sync_batchnorm
    from segsweep.errors import SpecError
    from segsweep.models import build_model
    from segsweep.spec import ModelSpec

    model = build_model(ModelSpec(base_channels=8, batchnorm=True))
    keys = list(model.state_dict())
    assert convert_sync_batchnorm(model, torch.device("cpu"), 1) is model
    with pytest.raises(SpecError, match=r"train.sync_batchnorm: .*GPUs.*train.sync_batchnorm=false"):
        convert_sync_batchnorm(model, torch.device("cpu"), 2)
    synced = convert_sync_batchnorm(model, torch.device("cuda"), 2)  # converting needs no GPU; running does
    kinds = {type(m) for m in synced.modules()}
    assert torch.nn.SyncBatchNorm in kinds and torch.nn.BatchNorm2d not in kinds
    assert list(synced.state_dict()) == keys  # checkpoints load into a plain model


# --------------------------------------------------------------------------- torchrun


def test_two_ranks_evaluate_a_checkpoint_exactly_like_one(odd_spec: Any, tmp_path: Path) -> None:
    """segsweep.train.evaluate on 2 gloo ranks (each its shard, reduced) == on one process."""
    from segsweep.data import build_data
    from segsweep.losses import build_loss
    from segsweep.models import build_model
    from segsweep.spec import spec_to_dict
    from segsweep.train.loop import evaluate
    from segsweep.train.seeding import seed_everything

    seed_everything(3)
    model, data = build_model(odd_spec.model).eval(), build_data(odd_spec)
    loss_fn = build_loss(odd_spec.loss, odd_spec.model.head)
    # Centre the last layer's output on the validation pixels, so that about half of them come
    # out foreground and per-image Dice varies (an untrained net predicts all one class).
    last = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    outputs: list[torch.Tensor] = []
    handle = last.register_forward_hook(lambda module, args, out: outputs.append(out.detach()))
    with torch.no_grad():
        for images, _, _ in data.val:
            model(images)
        handle.remove()
        last.bias -= torch.cat(outputs).median()
    checkpoint = tmp_path / "fixed.pt"
    torch.save({"model": model.state_dict(), "spec": spec_to_dict(odd_spec)}, checkpoint)
    one = evaluate(model, data.val, loss_fn, head=odd_spec.model.head,
                   device=torch.device("cpu"), precision="fp32", channels_last=odd_spec.train.channels_last,
                   ids=data.datasets["val"].ids)
    assert len({round(d, 6) for _, d, _ in one.per_image}) > 2  # an informative model: Dice varies by image

    proc = torchrun(__file__, "evaluate", checkpoint, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["images"] for r in ranks] == [4, 5]  # unequal shards, unequal batch counts
    for r in ranks:  # every rank holds the reduced result
        assert (r["dice"], r["dice_global"], r["iou"]) == (one.dice, one.dice_global, one.iou)
        assert [tuple(x) for x in r["per_image"]] == [tuple(x) for x in one.per_image]
        assert r["loss"] == pytest.approx(one.loss, rel=1e-6)


def test_torchrun_trains_with_one_run_folder_stops_on_sigterm_and_resumes(tiny_overrides: dict, tmp_path: Path) -> None:
    """SIGTERM to torchrun once epoch 1 is recorded (rank 0's first step after it sends it, see
    `_sigterm_worker`): torchrun forwards it to both ranks, which stop together and record."""
    results = tmp_path / "results"
    overrides = {**tiny_overrides, "train.epochs": 4, "train.device": "cpu", "train.precision": "fp32",
                 "train.deterministic": True, "name": "ddp"}
    proc = torchrun(__file__, "sigterm", QUICKSTART, *as_args(overrides), "--results", results, wait=False)
    runs = results / "runs" / "ddp"
    try:
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0, out[-3000:]
    folders = [p for p in runs.iterdir()]
    assert len(folders) == 1, folders  # rank 0 named it, rank 1 used the same
    run_dir = folders[0]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["world_size"] == 2, out[-3000:]
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    assert out.count("run folder:") == 1 and out.count("resume with:") == 1, out[-3000:]  # rank 0 speaks

    proc = torchrun("-m", "segsweep", "run", "--resume", run_dir, timeout=600)  # torchrun -m segsweep
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert [p.name for p in runs.iterdir()] == [run_dir.name]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_run"] == 4 and summary["world_size"] == 2
    header, *rows = (run_dir / "metrics.csv").read_text().splitlines()
    assert header.startswith("epoch,train/loss,val/loss,val/dice") and [r.split(",")[0] for r in rows] == ["1", "2", "3", "4"]
    test_rows = (run_dir / "test_per_image.csv").read_text().splitlines()[1:]
    assert len(test_rows) == tiny_overrides["data.synthetic.num_test"]  # both ranks' test images, once each
    assert len({r.split(",")[0] for r in test_rows}) == len(test_rows)
    for name in ("config.yaml", "curves.png", "predictions.png", "checkpoints/best.pt"):
        assert (run_dir / name).is_file(), name
    assert not list(run_dir.rglob("*.tmp*"))


def test_a_failing_rank_ends_the_run_instead_of_hanging(tiny_overrides: dict, tmp_path: Path) -> None:
    """The collective timeout (an hour) is far beyond the guard (10 min): the run can only end
    within the guard if the dead peer is noticed."""
    spec_args = as_args({**tiny_overrides, "train.epochs": 3, "train.device": "cpu", "train.precision": "fp32"})
    proc = torchrun(__file__, "fail", tmp_path, *spec_args, timeout=600, env={"SEGSWEEP_DIST_TIMEOUT_S": "3600"})
    assert proc.returncode != 0
    assert "injected failure on rank 1" in proc.stdout + proc.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())  # rank 0 recorded the end
    assert summary["status"] in ("failed", "interrupted") and summary["epochs_run"] <= 1


# --------------------------------------------------------------------------- workers (under torchrun)


def _evaluate_worker(checkpoint: str, out: str) -> None:
    from segsweep.data import build_data
    from segsweep.distributed import process_group
    from segsweep.losses import build_loss
    from segsweep.models import build_model
    from segsweep.spec import spec_from_dict
    from segsweep.train.loop import evaluate

    state = torch.load(checkpoint, weights_only=True)
    spec = spec_from_dict(state["spec"])
    with process_group("cpu", threads=1) as ranks:
        data = build_data(spec, ranks.rank, ranks.world_size)
        model = build_model(spec.model)
        model.load_state_dict(state["model"])
        ddp = torch.nn.parallel.DistributedDataParallel(model)  # as fit evaluates
        result = evaluate(ddp, data.val, build_loss(spec.loss, spec.model.head), head=spec.model.head,
                          device=torch.device("cpu"), precision="fp32", channels_last=spec.train.channels_last,
                          ids=data.datasets["val"].ids)
        payload = {"dice": result.dice, "dice_global": result.dice_global, "iou": result.iou, "loss": result.loss,
                   "per_image": result.per_image, "images": len(data.val.sampler)}
        Path(out, f"rank{ranks.rank}.json").write_text(json.dumps(payload))


def _fail_worker(out: str, *overrides: str) -> None:
    from segsweep.distributed import process_group
    from segsweep.spec import load_spec
    from segsweep.train.loop import fit

    spec = load_spec(QUICKSTART, list(overrides))
    with process_group("cpu", threads=1) as ranks:
        def hook(epoch: int, metrics: dict) -> None:
            if ranks.rank == 1:
                raise RuntimeError("injected failure on rank 1")

        fit(spec, Path(out, "run"), on_epoch_end=hook)


def _sigterm_worker(*args: str) -> None:
    """`run.py ARGS` on this rank, SIGTERM blocked until the rank's first optimiser step after
    epoch 1's metrics.csv exists; there rank 0 sends SIGTERM to torchrun (its parent), and each
    rank waits for the copy torchrun forwards to it, then lets the trainer's handler take it."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # before any thread starts
    results = Path(args[list(args).index("--results") + 1])
    done = []

    def after_step(*_: Any) -> None:
        if done or not any(len(p.read_text().splitlines()) >= 2 for p in results.glob("runs/*/*/metrics.csv")):
            return
        done.append(True)
        if os.environ["RANK"] == "0":
            os.kill(os.getppid(), signal.SIGTERM)
        signal.sigwait({signal.SIGTERM})
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        signal.raise_signal(signal.SIGTERM)

    register_optimizer_step_post_hook(after_step)
    from segsweep.cli import main

    main(["run", *args])


if __name__ == "__main__":
    mode, *rest = sys.argv[1:]
    {"evaluate": _evaluate_worker, "fail": _fail_worker, "sigterm": _sigterm_worker}[mode](*rest)
