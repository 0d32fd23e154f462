"""`TrainState`: the parts a run trains (built from the spec) and how far it has got.

It owns everything resume needs: `checkpoint()` is the payload of last.pt / best.pt (its own
state plus each callback's `state_dict`), `load_state_dict()` puts a saved payload back.
"""
from __future__ import annotations

import itertools
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from ..checkpoint import load_model_state
from ..data import build_data
from ..distributed import convert_sync_batchnorm, main_value
from ..losses import build_loss, uses_double_sigmoid
from ..models import build_model
from ..optim import LrSchedule, build_optimizer
from ..record import git_sha, library_versions, read_metrics
from ..spec import ExperimentSpec, arm_hash, config_hash, spec_to_dict
from .device import dist_info, resolve_device, resolve_precision, unwrap
from .memory import check_memory
from .seeding import rng_state, seed_everything, set_rng_state
from .speed import SpeedChoice, resolve_speed

# The resume state inside a checkpoint (`payload["state"]`): the run's own, then each callback's
# under its `state_key`. Checkpoints written before held the callbacks' keys (topk, stop) flat
# in it; they still load (`CallbackList.load_state_dict`).
STATE_KEYS = ("best_val", "best_epoch", "bad_epochs", "step", "history", "elapsed_s", "speed", "callbacks")


@dataclass
class EpochProgress:
    """How far the training pass of one epoch has got: enough to continue it bit-exactly."""

    batches: int = 0  # batches done this epoch
    images: int = 0
    loss_sum: float = 0.0  # sum over batches of loss x batch size (float64, exact in a Python float)
    train_s: float = 0.0  # seconds spent on them (wall clock, informative only)


@dataclass(eq=False)
class TrainState:
    """The run's parts (spec, data, model, optimiser, ...) and its position in training."""

    spec: ExperimentSpec
    run_dir: Path
    rank: int
    world: int
    device: torch.device
    precision: str
    data: Any
    model: nn.Module  # the plain model (checkpoints, predictions); `train_model` may wrap it
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    loss_fn: nn.Module
    schedule: LrSchedule
    started: float  # perf_counter() at the start, minus the time earlier sessions trained
    train_model: nn.Module | None = None
    callbacks: Any = None  # the CallbackList whose state_dicts join the checkpoint
    epoch: int = 0  # epochs completed
    step: int = 0  # optimiser steps taken
    # The best epoch kept so far by `checkpoint.monitor` (above `checkpoint.floor`); epoch 0: none yet
    best: dict[str, float] = field(default_factory=lambda: {"score": -math.inf, "epoch": 0})
    bad_epochs: int = 0  # epochs since the best
    history: list[dict[str, float]] = field(default_factory=list)  # metrics.csv rows
    progress: EpochProgress = field(default_factory=EpochProgress)  # into epoch `epoch + 1`
    rng: dict[str, Any] | None = None  # the RNG states where a resumed partial epoch stopped
    resumed: bool = False
    meta: dict[str, str] = field(default_factory=dict)  # git_sha, config_hash, arm_hash
    summary: dict[str, Any] = field(default_factory=dict)  # what summary.json will say, so far
    speed: SpeedChoice = field(default_factory=lambda: SpeedChoice(False, "spec"))  # the memory format used

    @property
    def channels_last(self) -> bool:
        return self.speed.channels_last

    @classmethod
    def build(cls, spec: ExperimentSpec, run_dir: Path, started: float,
              speed: SpeedChoice | None = None) -> "TrainState":
        """Seed and build every part (before anything is written: bad input leaves no run folder).
        `speed`: the memory format a resumed run was started with (else the spec's, the sweep's or a probe's)."""
        rank, world = dist_info()
        if spec.train.threads:
            torch.set_num_threads(spec.train.threads)
        if spec.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        device = resolve_device(spec.train.device)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = not spec.train.deterministic
        precision = resolve_precision(spec.train.precision, device)
        check_memory(spec, device)  # before the data are decoded: a run that cannot fit is refused here
        # Before seeding (a probe draws random numbers); under DDP rank 0 decides for every rank.
        chosen = main_value(resolve_speed(spec, device, precision, speed) if rank == 0 else None)
        speed = chosen if chosen is not None else resolve_speed(spec, device, precision, speed)
        seed_everything(spec.seed)
        data = build_data(spec, rank=rank, world_size=world)
        model = build_model(spec.model).to(device)
        if speed.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if spec.train.sync_batchnorm:  # several ranks on GPUs (refused on CPU); one process: unchanged
            model = convert_sync_batchnorm(model, device, world)
        optimizer = build_optimizer(spec, model.parameters())
        scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
        loss_fn = build_loss(spec.loss, spec.model.head)
        schedule = LrSchedule(spec, len(data.train))
        state = cls(spec, run_dir, rank, world, device, precision, data, model, optimizer, scaler, loss_fn,
                    schedule, started)
        state.speed = speed
        state.meta = {"git_sha": git_sha(), "config_hash": config_hash(spec), "arm_hash": arm_hash(spec)}
        state.summary = {
            "name": spec.name, "seed": spec.seed, "run_dir": str(run_dir),
            "device": str(device), "precision": precision, "versions": library_versions(),
            "time_budget_s": spec.train.time_budget_s, "world_size": world, **state.meta,
            "double_sigmoid": uses_double_sigmoid(spec),  # the study's BCE on a sigmoid output, on purpose
            **speed.summary(),  # channels_last or NCHW, and why (spec, probe, cache, sweep, checkpoint)
            **data.summary(),  # test/images, test/empty_masks: where per-image Dice's both-empty rule decides
        }
        return state

    def wrap_model(self) -> None:
        """The model as trained: DDP over several ranks, compiled if asked (after loading weights:
        DDP starts every rank from rank 0's)."""
        train_model: nn.Module = self.model
        if self.world > 1:
            train_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if self.spec.train.compile:
            train_model = torch.compile(train_model)
        self.train_model = train_model

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def elapsed(self) -> float:
        """Seconds this run has trained, earlier sessions included."""
        return time.perf_counter() - self.started

    def eval_kwargs(self) -> dict[str, Any]:
        return dict(head=self.spec.model.head, device=self.device, precision=self.precision,
                    channels_last=self.channels_last, tta=self.spec.train.tta)

    # ----------------------------------------------------------------------- epochs

    def epoch_loader(self) -> Any:
        """The training batches of epoch `epoch + 1`: all of them, or what a stopped epoch left
        (with the RNG states where it stopped)."""
        if not self.progress.batches:
            return self.data.train
        set_rng_state(self.rng)
        return remaining_batches(self.data.train, self.data.train_sampler, self.progress.batches)

    def end_epoch(self, row: dict[str, float]) -> None:
        """Record a finished epoch: its metrics row, the LR schedule's view of it, the best so far."""
        self.history.append(row)
        self.epoch = row["epoch"]
        self.progress = EpochProgress()
        self.schedule.end_epoch(row["val/dice"])
        score = self.score(row)
        if self.keeps(score) and score > self.best["score"]:
            self.best = {"score": score, "epoch": row["epoch"]}
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1

    def score(self, row: dict[str, float]) -> float:
        """The epoch's `checkpoint.monitor` value (higher is better)."""
        return float(row[self.spec.checkpoint.monitor])

    def keeps(self, score: float) -> bool:
        """Whether an epoch with this score may be kept: above `checkpoint.floor`, if set (the
        study kept an epoch only when its validation Dice was above 0.7)."""
        floor = self.spec.checkpoint.floor
        return floor is None or score > floor

    def best_row(self) -> dict[str, float] | None:
        """The metrics.csv row of the best epoch kept, or None when none was."""
        return next((r for r in self.history if r["epoch"] == self.best["epoch"]), None)

    def partial(self, epoch: int) -> dict[str, Any]:
        """How far a stopped epoch got (saved in last.pt: the resumed run continues from it)."""
        return {"epoch": epoch, "progress": asdict(self.progress), "rng": rng_state()}

    # ----------------------------------------------------------------------- checkpoints

    def checkpoint(self, partial: dict[str, Any] | None = None) -> dict[str, Any]:
        """last.pt / best.pt contents after `epoch` epochs (+ `partial` progress into the next)."""
        own = {"best_val": self.best["score"], "best_epoch": self.best["epoch"], "bad_epochs": self.bad_epochs,
               "step": self.step, "history": [dict(r) for r in self.history], "elapsed_s": self.elapsed(),
               "speed": {"channels_last": self.speed.channels_last, "source": self.speed.source,
                         "ratio": self.speed.ratio, "key": self.speed.key}}
        own["callbacks"] = self.callbacks.state_dict() if self.callbacks is not None else {}
        train = self.data.datasets["train"]
        return {
            "model": unwrap(self.model).state_dict(), "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "schedule": self.schedule.state_dict(), "epoch": self.epoch,
            "metrics": dict(self.history[-1]) if self.history else {},
            "spec": spec_to_dict(self.spec), "rng_torch": torch.get_rng_state(),
            "normalization": {"mean": train.mean.tolist(), "std": train.std.tolist()},
            "state": {key: own[key] for key in STATE_KEYS},
            "partial": partial,
        }

    def load_state_dict(self, payload: dict[str, Any], source: Path) -> None:
        """Continue from a saved `checkpoint()` (last.pt): weights, optimiser, schedule, scaler,
        position, best so far, history and each callback's state."""
        load_model_state(self.model, payload["model"], source)
        self.optimizer.load_state_dict(payload["optimizer"])
        if self.scaler is not None and payload.get("scaler"):
            self.scaler.load_state_dict(payload["scaler"])
        self.schedule.load_state_dict(payload["schedule"])
        s = payload["state"]
        self.best = {"score": float(s["best_val"]), "epoch": int(s["best_epoch"])}
        self.bad_epochs, self.step = int(s["bad_epochs"]), int(s["step"])
        self.epoch = int(payload["epoch"])
        self.history = ([dict(r) for r in s["history"]] if "history" in s
                        else [r for r in read_metrics(self.run_dir) if r["epoch"] <= self.epoch])
        if self.callbacks is not None:
            self.callbacks.load_state_dict(s)
        self.started -= float(s.get("elapsed_s", 0.0))
        self.resumed = True
        self.summary["resumed_from_epoch"] = self.epoch
        partial = payload.get("partial")
        if partial:
            assert int(partial["epoch"]) == self.epoch + 1, "last.pt: partial epoch does not follow the saved one"
            self.progress, self.rng = EpochProgress(**partial["progress"]), partial["rng"]
            self.summary["resumed_at_batch"] = self.progress.batches


class _SkipSampler(torch.utils.data.Sampler):
    """The items of `sampler`'s current epoch after the first `skip` (for a resumed epoch)."""

    def __init__(self, sampler: Any, skip: int):
        self.sampler, self.skip = sampler, skip

    def __iter__(self) -> Iterator[Any]:
        return itertools.islice(iter(self.sampler), self.skip, None)

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)


def remaining_batches(loader: torch.utils.data.DataLoader, sampler: Any, batches: int) -> Any:
    """A loader over what is left of the epoch after `batches` batches (same batches as `loader`)."""
    if batches == 0:
        return loader
    return torch.utils.data.DataLoader(
        loader.dataset, batch_size=loader.batch_size, sampler=_SkipSampler(sampler, batches * loader.batch_size),
        collate_fn=loader.collate_fn, num_workers=loader.num_workers, pin_memory=loader.pin_memory,
        worker_init_fn=loader.worker_init_fn, drop_last=loader.drop_last,
        generator=torch.Generator().manual_seed(0),  # keeps the global torch RNG untouched
    )
