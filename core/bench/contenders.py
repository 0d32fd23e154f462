"""What the benchmark runs: its plans (full and quick), its spec, and the contenders timed
against each other: the trainer's own pieces, the raw step (the ceiling), a matmul (the peak)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data import build_data
from ..losses import build_loss
from ..models import build_model
from ..optim import LrSchedule, build_optimizer
from ..spec import ExperimentSpec, override_spec
from ..train.speed import resolve_speed
from ..train.device import autocast, resolve_device, resolve_precision
from ..train.loop import evaluate, train_one_epoch
from ..train.seeding import derive_seed, seed_everything

REPO = Path(__file__).resolve().parents[2]  # the checkout (results/ and ../shared/data beside it)
PETS_MINI = REPO.parent / "shared" / "data" / "oxford-iiit-pet-mini"
NAIVE = {"data.cache": False, "train.channels_last": False, "train.precision": "fp32"}


@dataclass(frozen=True)
class Plan:
    """What one run measures. `full` is the issue's setting (128 px, batch 8, the real models);
    `quick` shrinks everything so the smoke test finishes in a few minutes."""
    main_model: dict[str, Any]  # model.* of the model behind raw_step, trainer_vs_raw, mfu, peer
    naive_models: dict[str, dict[str, Any]]  # label -> model.* for fast_vs_naive
    image_size: int
    batch_size: int
    batches: int  # training batches per repetition
    naive_batches: int  # ... for the slower fast_vs_naive models
    reps: int
    loader_images: int  # images per repetition of cache_vs_uncached
    trial_budget_s: float  # the sweep trial's time budget (one minute in the issue)
    workers: int  # loader processes for the memory figure
    bf16_probe: bool  # also time one bf16 step (diagnostic; minutes on CPUs without bf16 units)
    study_batches: int = 12  # the study workload (bench/study.py): training batches per repetition
    study_reps: int = 8
    study_epochs: int | None = None  # epochs of its whole run (None: the recipe's)
    study_compile: bool = True  # time torch.compile (a cold compile is about a minute on 2 cores)


def _model(name: str, width: int) -> dict[str, Any]:
    return {"model.name": name, "model.base_channels": width}


FULL = Plan(main_model=_model("resnet34_unet", 64),
            naive_models={name: _model(name, 64) for name in ("resnet34_unet", "unet")},
            image_size=128, batch_size=8, batches=6, naive_batches=2, reps=5, loader_images=64,
            trial_budget_s=60.0, workers=2, bf16_probe=True)
QUICK = Plan(main_model=_model("unet", 16), naive_models={name: _model(name, 16) for name in ("resnet34_unet", "unet")},
             image_size=64, batch_size=4, batches=2, naive_batches=1, reps=2, loader_images=24,
             trial_budget_s=3.0, workers=2, bf16_probe=False, study_batches=2, study_reps=2, study_epochs=1,
             study_compile=False)


# --------------------------------------------------------------------------- specs & contenders


def base_spec(plan: Plan, cache_dir: Path, model: dict[str, Any], **overrides: Any) -> ExperimentSpec:
    """The benchmark's experiment: default training settings (the fast path) on the pets subset."""
    if PETS_MINI.is_dir():
        data = {"data.name": "oxford_pet", "data.root": str(PETS_MINI)}
    else:
        data = {"data.name": "synthetic", "data.root": str(cache_dir / "synthetic")}
    tree = {
        "name": "benchmark", **data, "data.image_size": plan.image_size, "data.cache_dir": str(cache_dir),
        "data.limit_train": plan.batch_size * plan.batches, "train.batch_size": plan.batch_size,
        "tracking.wandb.mode": "disabled", **model, **overrides,
    }
    return override_spec(ExperimentSpec(), tree)


class TrainerRun:
    """The real trainer pieces (`build_data`, `train_one_epoch`, `evaluate`) for one spec; each
    call of `epoch()` trains one epoch of `data.limit_train` images and returns img/s."""
    def __init__(self, spec: ExperimentSpec):
        self.spec = spec
        self.device = resolve_device(spec.train.device)
        self.precision = resolve_precision(spec.train.precision, self.device)
        self.speed = resolve_speed(spec, self.device, self.precision)  # `auto`: as a run decides it
        seed_everything(spec.seed)
        self.data = build_data(spec)
        self.model = build_model(spec.model).to(self.device)
        if self.speed.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = build_optimizer(spec, self.model.parameters())
        self.loss_fn = build_loss(spec.loss, spec.model.head)
        self.schedule = LrSchedule(spec, len(self.data.train))
        self.epoch_no, self.step = 0, 0
        self.pairs: list[tuple[float, float]] = []  # (trainer s, raw s) per batch of `epoch(raw)`

    def describe(self) -> dict[str, Any]:
        return {"precision": self.precision, "channels_last": self.speed.channels_last,
                "cache": self.spec.data.cache, "workers": self.data.num_workers}

    def epoch(self, raw: RawStep | None = None) -> float:
        """Train one epoch; img/s of the trainer alone.

        With `raw`, one raw step runs as each batch arrives, before the trainer's own step (the
        trainer's `on_batch` hook), and its time is kept out of the epoch's. Each batch then adds
        a pair to `pairs`: (the trainer's seconds for that batch: its step and the loading of the
        next, the raw step's seconds). Neighbouring steps share the machine's state, so load that
        comes and goes over seconds hits both sides of a pair alike (`step_pairs`)."""
        self.epoch_no += 1
        seed_everything(derive_seed(self.spec.seed, self.epoch_no))
        self.data.train_sampler.set_epoch(self.epoch_no)
        marks: list[float] = []
        raw_s: list[float] = []

        def on_batch() -> None:
            marks.append(time.perf_counter())
            if raw is not None:
                raw.step()
                raw_s.append(time.perf_counter() - marks[-1])

        started = time.perf_counter()
        _, seen, self.step = train_one_epoch(
            self.model, self.data.train, self.loss_fn, self.optimizer, self.schedule, None,
            epoch=self.epoch_no, step=self.step, device=self.device, precision=self.precision,
            channels_last=self.speed.channels_last, grad_clip=None, should_stop=lambda: False,
            on_batch=on_batch,
        )
        ended = time.perf_counter()
        if raw is not None:
            marks.append(ended)
            self.pairs += [(b - a - r, r) for a, b, r in zip(marks, marks[1:], raw_s)]
        return seen / (ended - started - sum(raw_s))

    def validate(self) -> float:
        """Seconds for one evaluation pass over the validation split."""
        started = time.perf_counter()
        evaluate(self.model, self.data.val, self.loss_fn, head=self.spec.model.head, device=self.device,
                 precision=self.precision, channels_last=self.speed.channels_last,
                 ids=self.data.datasets["val"].ids)
        return time.perf_counter() - started

    def epoch_seconds(self) -> float:
        """A whole epoch as the trainer runs it: the training pass, then validation."""
        seen = self.spec.data.limit_train or len(self.data.datasets["train"])
        return seen / self.epoch() + self.validate()


class RawStep:
    """The ceiling: forward + backward + optimiser step of the model alone on tensors in memory,
    with the trainer's loss, optimiser, precision and memory format."""
    def __init__(self, spec: ExperimentSpec, precision: str | None = None, channels_last: bool | None = None,
                 batch_size: int | None = None):

        self.device = resolve_device(spec.train.device)
        self.precision = precision or resolve_precision(spec.train.precision, self.device)
        if channels_last is None:
            channels_last = resolve_speed(spec, self.device, self.precision).channels_last
        self.channels_last = channels_last
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        torch.manual_seed(spec.seed)
        self.model = build_model(spec.model).to(self.device, memory_format=fmt).train()
        self.optimizer = build_optimizer(spec, self.model.parameters())
        self.loss_fn = build_loss(spec.loss, spec.model.head)
        b, s = batch_size or spec.train.batch_size, spec.data.image_size
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randn(b, 3, s, s, generator=generator).to(self.device, memory_format=fmt)
        self.masks = (torch.rand(b, s, s, generator=generator) > 0.5).to(self.device, torch.uint8)

    def step(self) -> None:
        with autocast(self.device, self.precision):
            output = self.model(self.images)  # (B, 1, H, W)
        loss = self.loss_fn(output.float(), self.masks)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def run(self, steps: int) -> float:
        """img/s over `steps` steps."""
        started = time.perf_counter()
        for _ in range(steps):
            self.step()
        return steps * len(self.images) / (time.perf_counter() - started)


def training_flops(spec: ExperimentSpec) -> tuple[float, dict[str, float]]:
    """FLOPs of one training step per image (forward + backward, counted by torch's
    FlopCounterMode: 2 per multiply-add of convolutions and matrix products; element-wise
    ops, BatchNorm and the optimiser are not counted, so MFU is a lower bound)."""
    from torch.utils.flop_counter import FlopCounterMode

    raw = RawStep(spec, precision="fp32", batch_size=2)
    with FlopCounterMode(display=False) as counter:
        output = raw.model(raw.images)
        raw.loss_fn(output.float(), raw.masks).backward()
    by_op = {str(op): float(n) / 2 for op, n in counter.get_flop_counts()["Global"].items()}
    return counter.get_total_flops() / 2, by_op


def matmul_peak(dtype: torch.dtype, n: int = 2048, tries: int = 3) -> float:
    """Best GFLOP/s of an n x n matrix product in `dtype` (the machine's practical peak)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm
    best = 0.0
    for _ in range(tries):
        started = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - started) / 1e9)
    return best
