"""The one training loop: `fit(spec, run_dir, tracker, on_epoch_end) -> RunResult`.

It reads top to bottom: seed, build, loop over epochs (train, evaluate, log, checkpoint, hook),
test the best checkpoint, return. Sweep drivers hook in through `on_epoch_end(epoch, metrics)`
and may raise `StopTraining` (pruning, early stopping); nothing else reaches inside.
"""
from __future__ import annotations

import contextlib
import itertools
import math
import os
import random
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
from torch import nn

from core.checkpoint import TopK, load_checkpoint, load_model_state, save_checkpoint
from core.data import build_data
from core.distributed import agree_stop, broadcast_module, convert_sync_batchnorm, main_value
from core.errors import CheckpointError, SegsweepError
from core.losses import build_loss
from core.metrics import SegmentationMeter, probabilities
from core.models import build_model, predict_batch
from core.record import (  # noqa: F401  (new_run_dir is part of the trainer's API)
    atomic_write_text, git_sha, library_versions, new_run_dir, plot_curves, prediction_grid, read_metrics,
    remove_temporaries, save_prediction_png, write_json, write_metrics, write_per_image,
)
from core.spec import ExperimentSpec, arm_hash, config_hash, spec_from_dict, spec_to_dict, spec_to_yaml

EpochHook = Callable[[int, dict[str, float]], None]


class StopTraining(Exception):
    """Raised by an `on_epoch_end` hook to end training early with a given status."""

    def __init__(self, status: str = "completed", reason: str = ""):
        super().__init__(reason or status)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class EvalResult:
    loss: float
    dice: float
    dice_global: float
    iou: float
    per_image: list[tuple[str, float, float]] = field(default_factory=list)

    def metrics(self, split: str) -> dict[str, float]:
        return {f"{split}/loss": self.loss, f"{split}/dice": self.dice,
                f"{split}/dice_global": self.dice_global, f"{split}/iou": self.iou}


@dataclass(frozen=True)
class RunResult:
    status: str  # completed | diverged | interrupted | pruned | failed
    run_dir: Path
    best_epoch: int
    metrics: dict[str, Any]  # the summary.json contents
    signal: int | None = None  # the signal that interrupted the run, if any


# --------------------------------------------------------------------------- devices & precision


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise SegsweepError("train.device: 'cuda' requested but no CUDA device is available; valid here: auto, cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> str:
    """`auto`: bf16 where the hardware runs it fast (CUDA with bf16, CPUs with AVX-512/AMX bf16)."""
    if name == "fp16" and device.type != "cuda":
        raise SegsweepError("train.precision: fp16 needs CUDA (a gradient scaler on GPU); on CPU use bf16 or fp32")
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with native bf16 matrix instructions (AVX512-BF16 or AMX).

    Without them PyTorch emulates bf16 convolutions and they run far slower than fp32
    (measured on an AVX2-only EPYC: 0.3 vs 8 img/s for ResNet34-UNet at 128 px).
    """
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return "AMX" in torch.backends.cpu.get_cpu_capability().upper()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


# --------------------------------------------------------------------------- seeding


def derive_seed(*parts: int) -> int:
    """A stable 31-bit seed from integers (same on every platform and run)."""
    value = 0x9E3779B9
    for part in parts:
        value = (value * 1_000_003 + int(part) + 0x7F4A7C15) % (2**61 - 1)
    return value % (2**31 - 1)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- learning rate


class LrSchedule:
    """Per-step learning rate from the spec; its state is two numbers, saved in checkpoints.

    `cosine` and `onecycle` need the total number of steps: from `train.epochs`, or, with a
    time budget, planned from the measured speed of the first epoch (`plan`).
    """

    def __init__(self, spec: ExperimentSpec, steps_per_epoch: int):
        self.o = spec.optim
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.total_steps = spec.train.epochs * self.steps_per_epoch
        self.plateau_scale = 1.0
        self.plateau_best = -math.inf
        self.plateau_bad = 0

    def plan(self, epochs: int) -> None:
        self.total_steps = max(1, epochs) * self.steps_per_epoch

    def lr(self, step: int) -> float:
        o, base = self.o, self.o.lr
        warm = o.warmup_epochs * self.steps_per_epoch
        if warm and step < warm:
            return base * (step + 1) / warm
        t = min(1.0, (step - warm) / max(1, self.total_steps - warm))
        if o.scheduler == "cosine":
            return o.min_lr + (base - o.min_lr) * 0.5 * (1 + math.cos(math.pi * t))
        if o.scheduler == "onecycle":
            # 25% rise from base/25 to base, then cosine down to base/1e4 (torch's OneCycleLR shape).
            rise = 0.25
            if t < rise:
                return base / 25 + (base - base / 25) * 0.5 * (1 - math.cos(math.pi * t / rise))
            return base / 1e4 + (base - base / 1e4) * 0.5 * (1 + math.cos(math.pi * (t - rise) / (1 - rise)))
        if o.scheduler == "step":
            return base * o.gamma ** (step // (o.step_size * self.steps_per_epoch))
        if o.scheduler == "plateau":
            return base * self.plateau_scale
        return base

    def end_epoch(self, val_dice: float) -> None:
        if self.o.scheduler != "plateau":
            return
        if val_dice > self.plateau_best:
            self.plateau_best, self.plateau_bad = val_dice, 0
        else:
            self.plateau_bad += 1
            if self.plateau_bad > self.o.plateau_patience:
                self.plateau_scale *= self.o.gamma
                self.plateau_bad = 0

    def state_dict(self) -> dict[str, float]:
        return {"total_steps": self.total_steps, "plateau_scale": self.plateau_scale,
                "plateau_best": self.plateau_best, "plateau_bad": self.plateau_bad}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.total_steps = int(state["total_steps"])
        self.plateau_scale = float(state["plateau_scale"])
        self.plateau_best = float(state["plateau_best"])
        self.plateau_bad = int(state["plateau_bad"])


def build_optimizer(spec: ExperimentSpec, params: Iterator[nn.Parameter]) -> torch.optim.Optimizer:
    """The spec's optimiser, with PyTorch's fused kernels: one pass over every parameter per step
    instead of a chain of elementwise ops (measured +2% img/s on the 2-core CPU for Adam on
    resnet34_unet; fused kernels exist for floating-point parameters on CPU and CUDA)."""
    o, params = spec.optim, list(params)
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params) or None
    if o.name == "adam":
        return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay, fused=fused)
    if o.name == "adamw":
        return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay, fused=fused)
    return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, nesterov=True,
                           fused=fused)


# --------------------------------------------------------------------------- signals


class _Interrupts:
    """First SIGINT/SIGTERM: finish the current step, save, stop cleanly (exit 130/143).

    A second signal exits at once with 128 + its number, after `on_exit_now` (which writes
    summary.json as `interrupted`; last.pt then holds the last completed epoch).
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.on_exit_now: Callable[[], None] | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_Interrupts":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            print(f"\nreceived {signal.Signals(signum).name} again: exiting now", file=sys.stderr, flush=True)
            try:
                if self.on_exit_now is not None:
                    self.on_exit_now()
            finally:
                os._exit(128 + signum)
        self.signum = signum
        print(f"\nreceived {signal.Signals(signum).name}: finishing this step, then saving and stopping "
              "(Ctrl-C again to exit at once)", file=sys.stderr, flush=True)

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# --------------------------------------------------------------------------- the loop


class _Diverged(Exception):
    def __init__(self, epoch: int, step: int, loss: float):
        super().__init__(f"non-finite loss {loss} at epoch {epoch}, step {step}")
        self.epoch, self.step = epoch, step


def _progress(iterable: Any, desc: str, total: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True,
                disable=not sys.stderr.isatty())


@dataclass
class EpochProgress:
    """How far the training pass of one epoch has got: enough to continue it bit-exactly."""

    batches: int = 0  # batches done this epoch
    images: int = 0
    loss_sum: float = 0.0  # sum over batches of loss x batch size (float64, exact in a Python float)
    train_s: float = 0.0  # seconds spent on them (wall clock, informative only)


def train_one_epoch(
    model: nn.Module, loader: Any, loss_fn: nn.Module, optimizer: torch.optim.Optimizer,
    schedule: LrSchedule, scaler: torch.amp.GradScaler | None, *, epoch: int, step: int,
    device: torch.device, precision: str, channels_last: bool, grad_clip: float | None,
    should_stop: Callable[[], bool], progress: EpochProgress | None = None,
) -> tuple[float, int, int]:
    """One pass over the training loader. Returns (mean loss, images seen, global step).

    `progress` (updated in place) carries the running totals, so an epoch interrupted after
    some batches continues from them when `loader` yields only the remaining batches.
    """
    model.train()
    progress = progress if progress is not None else EpochProgress()
    total, images = torch.tensor(progress.loss_sum, dtype=torch.float64), progress.images
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    for batch_images, masks, _ in _progress(loader, f"epoch {epoch} train", len(loader)):
        lr = schedule.lr(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch_images = batch_images.to(device, non_blocking=True, memory_format=memory_format)
        masks = masks.to(device, non_blocking=True)
        with autocast(device, precision):
            output = model(batch_images)  # (B, 1, H, W)
        loss = loss_fn(output.float(), masks)
        if not torch.isfinite(loss):
            raise _Diverged(epoch, step, float(loss.detach()))
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        total += loss.detach().double() * len(batch_images)
        images += len(batch_images)
        step += 1
        progress.batches += 1
        if should_stop():
            break
    progress.loss_sum, progress.images = float(total), images
    return float(total) / max(1, images), images, step


class _SkipSampler(torch.utils.data.Sampler):
    """The items of `sampler`'s current epoch after the first `skip` (for a resumed epoch)."""

    def __init__(self, sampler: Any, skip: int):
        self.sampler, self.skip = sampler, skip

    def __iter__(self) -> Iterator[Any]:
        return itertools.islice(iter(self.sampler), self.skip, None)

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)


def _remaining_batches(loader: torch.utils.data.DataLoader, sampler: Any, batches: int) -> Any:
    """A loader over what is left of the epoch after `batches` batches (same batches as `loader`)."""
    if batches == 0:
        return loader
    return torch.utils.data.DataLoader(
        loader.dataset, batch_size=loader.batch_size, sampler=_SkipSampler(sampler, batches * loader.batch_size),
        collate_fn=loader.collate_fn, num_workers=loader.num_workers, pin_memory=loader.pin_memory,
        worker_init_fn=loader.worker_init_fn, drop_last=loader.drop_last,
        generator=torch.Generator().manual_seed(0),  # keeps the global torch RNG untouched
    )


def _rng_state() -> dict[str, Any]:
    """Every global RNG (plain types and tensors only, for `weights_only` checkpoints)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(), "numpy": [name, keys.tolist(), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: Any, loss_fn: nn.Module, *, head: str, device: torch.device,
    precision: str, channels_last: bool, ids: list[str], desc: str = "eval",
    should_stop: Callable[[], bool] | None = None, tta: str = "none",
) -> EvalResult:
    """Loss and Dice/IoU over a whole split (no training augmentation; `tta` as in
    `predict_batch`). Reduced over ranks under DDP.

    `should_stop` is checked after each batch; when it says stop, the result is partial and
    the caller must discard it.
    """
    model.eval()
    meter = SegmentationMeter()
    loss_sum, count = torch.zeros((), dtype=torch.float64), 0
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    for images, masks, index in _progress(loader, desc, len(loader)):
        images = images.to(device, non_blocking=True, memory_format=memory_format)
        masks = masks.to(device, non_blocking=True)
        with autocast(device, precision):
            output = predict_batch(model, images, tta)
        output = output.float()
        loss_sum += loss_fn(output, masks).double() * len(images)
        count += len(images)
        meter.update(output, masks, head, [ids[int(i)] for i in index])
        if should_stop is not None and should_stop():
            break
    loss_sum, count = _all_reduce_sum(loss_sum, count, device)
    result = meter.sync().compute()  # every rank's images, once each
    return EvalResult(float(loss_sum) / max(1, count), result["dice"], result["dice_global"], result["iou"],
                      result["per_image"])


def _all_reduce_sum(loss_sum: torch.Tensor, count: int, device: torch.device) -> tuple[torch.Tensor, int]:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return loss_sum, count
    totals = torch.tensor([float(loss_sum), float(count)], dtype=torch.float64, device=device)
    dist.all_reduce(totals)
    return totals[0].cpu(), int(totals[1].item())


def _dist_info() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "module", model)  # DDP
    return getattr(model, "_orig_mod", model)  # torch.compile


def _prediction_grid(model: nn.Module, dataset: Any, head: str, device: torch.device, precision: str, n: int = 4) -> np.ndarray:
    model.eval()
    picks = list(range(min(n, len(dataset))))
    images, truths, preds = [], [], []
    with torch.no_grad():
        batch = torch.stack([dataset[i][0] for i in picks]).to(device)
        with autocast(device, precision):
            out = model(batch)
        probs = probabilities(out.float(), head)[:, 0].cpu().numpy()
    for i, prob in zip(picks, probs):
        image, mask = dataset.raw(i)
        images.append(image)
        truths.append(mask)
        preds.append(prob >= 0.5)
    return prediction_grid(images, truths, preds)


def fit(
    spec: ExperimentSpec,
    run_dir: str | Path,
    tracker: Any = None,
    on_epoch_end: EpochHook | None = None,
    *,
    resume: bool = False,
) -> RunResult:
    """Train `spec` into `run_dir`, keep the best checkpoint, test it, and return the result.

    Checkpoints: `last.pt` after every epoch, and also when SIGINT/SIGTERM stops the run
    mid-epoch (then with the batches done, running loss and RNG states). `resume=True`
    continues from `run_dir/checkpoints/last.pt`: weights, optimiser, LR schedule, gradient
    scaler, epoch, global step and position in the epoch, early-stopping, top-k and metrics
    history. Data order, augmentation and dropout derive from (seed, epoch), so with
    `train.deterministic` on CPU a resumed run's metrics.csv equals an uninterrupted one's in
    every column but the wall-clock `epoch_s` and `img_per_s`. After a SIGKILL the run resumes
    from the last saved point (end of an epoch, or an interruption), redoing what came after.

    summary.json is written once, when the run ends, with status completed, failed, diverged,
    interrupted or pruned (a Python-level error is `failed`, then re-raised). A run folder
    without summary.json is still running or was killed (SIGKILL, power loss): resume it.
    """
    run_dir = Path(run_dir)
    started = time.perf_counter()
    rank, world = _dist_info()
    is_main = rank == 0
    ckpt_dir = run_dir / "checkpoints"
    last_path = ckpt_dir / "last.pt"

    # Seed and build (before anything is written, so bad input leaves no run folder).
    state = load_checkpoint(last_path) if resume else None
    if spec.train.threads:
        torch.set_num_threads(spec.train.threads)
    if spec.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    device = resolve_device(spec.train.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not spec.train.deterministic
    precision = resolve_precision(spec.train.precision, device)
    seed_everything(spec.seed)
    data = build_data(spec, rank=rank, world_size=world)
    model = build_model(spec.model).to(device)
    if spec.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if spec.train.sync_batchnorm:  # several ranks on GPUs (refused on CPU); one process: unchanged
        model = convert_sync_batchnorm(model, device, world)
    optimizer = build_optimizer(spec, model.parameters())
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    loss_fn = build_loss(spec.loss, spec.model.head)
    schedule = LrSchedule(spec, len(data.train))
    topk = TopK(ckpt_dir, spec.checkpoint.keep_best)
    head = spec.model.head
    meta = {"git_sha": git_sha(), "config_hash": config_hash(spec), "arm_hash": arm_hash(spec)}
    summary: dict[str, Any] = {
        "name": spec.name, "seed": spec.seed, "run_dir": str(run_dir),
        "device": str(device), "precision": precision, "versions": library_versions(),
        "time_budget_s": spec.train.time_budget_s, "world_size": world, **meta,
    }
    rows: list[dict[str, float]] = []
    best = {"val/dice": -math.inf, "epoch": 0}
    bad_epochs, start_epoch, step = 0, 1, 0
    progress, rng, stop = EpochProgress(), None, None  # stop: (status, reason) that ended training
    if state is not None:
        load_model_state(model, state["model"], last_path)
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        schedule.load_state_dict(state["schedule"])
        s = state["state"]
        best = {"val/dice": float(s["best_val"]), "epoch": int(s["best_epoch"])}
        bad_epochs, step = int(s["bad_epochs"]), int(s["step"])
        start_epoch = int(state["epoch"]) + 1
        rows = ([dict(r) for r in s["history"]] if "history" in s
                else [r for r in read_metrics(run_dir) if r["epoch"] < start_epoch])
        stop = tuple(s["stop"]) if s.get("stop") else None
        started -= float(s.get("elapsed_s", 0.0))
        summary["resumed_from_epoch"] = start_epoch - 1
        partial = state.get("partial")
        if partial:
            assert int(partial["epoch"]) == start_epoch, "last.pt: partial epoch does not follow the saved one"
            progress, rng = EpochProgress(**partial["progress"]), partial["rng"]
            summary["resumed_at_batch"] = progress.batches
        topk.entries = [(float(a), int(b)) for a, b in s["topk"]]
    train_model: nn.Module = model
    if world > 1:
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if spec.train.compile:
        train_model = torch.compile(train_model)

    def checkpoint(epoch_done: int, partial: dict[str, Any] | None = None) -> dict[str, Any]:
        """last.pt / best.pt contents after `epoch_done` epochs (+ `partial` progress into the next)."""
        return {
            "model": _unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else {},
            "schedule": schedule.state_dict(), "epoch": epoch_done, "metrics": dict(rows[-1]) if rows else {},
            "spec": spec_to_dict(spec), "rng_torch": torch.get_rng_state(),
            "normalization": {"mean": data.datasets["train"].mean.tolist(),
                              "std": data.datasets["train"].std.tolist()},
            "state": {"best_val": best["val/dice"], "best_epoch": best["epoch"], "bad_epochs": bad_epochs,
                      "step": step, "topk": [list(e) for e in topk.entries], "history": [dict(r) for r in rows],
                      "stop": None, "elapsed_s": time.perf_counter() - started},
            "partial": partial,
        }

    status, error, signum = "completed", None, None
    budget = spec.train.time_budget_s
    eval_kw = dict(head=head, device=device, precision=precision, channels_last=spec.train.channels_last,
                   tta=spec.train.tta)
    with _Interrupts() as interrupts:
        peer_signal: list[int] = []  # DDP: a signal another rank received stops this rank too

        def interrupted() -> bool:
            return interrupts.signum is not None or bool(peer_signal)

        def agreed(over_budget: bool = False) -> tuple[bool, bool]:
            """(interrupted, over budget) as every rank sees them. Under DDP a collective, called at
            the same points on every rank: decisions that lead to collectives use it."""
            if world == 1:
                return interrupted(), over_budget
            signum, over_budget = agree_stop(interrupts.signum or (peer_signal or [None])[0], over_budget)
            if signum and not interrupted():
                peer_signal.append(signum)
            return signum is not None, over_budget

        def should_stop() -> bool:  # after every step, on every rank: all leave the epoch together
            return any(agreed(budget is not None and time.perf_counter() - started >= budget))

        interrupts.on_exit_now = lambda: _finish(run_dir, summary, rows, best, started, "interrupted",
                                                 "a second signal: exited at once", is_main, None, spec, quick=True)
        try:
            if is_main:
                ckpt_dir.mkdir(parents=True, exist_ok=True)
                if state is not None:  # undo what a SIGKILL may have left ahead of last.pt
                    remove_temporaries(run_dir)  # writes cut short
                    (run_dir / "summary.json").unlink(missing_ok=True)  # rewritten when this session ends
                    topk.restore(topk.entries, last=last_path)
                    if rows:
                        write_metrics(run_dir, rows)
                    else:
                        (run_dir / "metrics.csv").unlink(missing_ok=True)
                atomic_write_text(run_dir / "config.yaml", spec_to_yaml(spec))
            if tracker is not None and is_main:
                tracker.start(spec, run_dir, meta)
            try:
                for epoch in range(start_epoch, spec.train.epochs + 1):
                    if stop is not None or agreed()[0]:
                        break
                    # Data order, augmentation and dropout all derive from (seed, epoch): resumable.
                    seed_everything(derive_seed(spec.seed, epoch))
                    data.train_sampler.set_epoch(epoch)
                    loader = data.train
                    if progress.batches:  # continue an epoch that a signal stopped part-way
                        _set_rng_state(rng)
                        loader = _remaining_batches(data.train, data.train_sampler, progress.batches)
                    t0 = time.perf_counter() - progress.train_s
                    train_loss, seen, step = train_one_epoch(
                        train_model, loader, loss_fn, optimizer, schedule, scaler, epoch=epoch, step=step,
                        device=device, precision=precision, channels_last=spec.train.channels_last,
                        grad_clip=spec.train.grad_clip, should_stop=should_stop, progress=progress,
                    )
                    progress.train_s = time.perf_counter() - t0
                    if not agreed()[0]:
                        val = evaluate(train_model, data.val, loss_fn, ids=data.datasets["val"].ids,
                                       desc=f"epoch {epoch} val", should_stop=interrupted, **eval_kw)
                    if agreed()[0]:
                        # Keep the batches done: the resumed run continues with the next one.
                        if is_main and spec.checkpoint.save_last:
                            save_checkpoint(checkpoint(epoch - 1, {"epoch": epoch, "progress": asdict(progress),
                                                                   "rng": _rng_state()}), last_path)
                        break
                    if world > 1:  # over every rank's images, not rank 0's shard alone
                        loss_sum, seen_all = _all_reduce_sum(torch.tensor(train_loss * seen, dtype=torch.float64), seen, device)
                        train_loss = float(loss_sum) / max(1, seen_all)
                    row = {"epoch": epoch, "train/loss": train_loss, **val.metrics("val"),
                           "lr": optimizer.param_groups[0]["lr"], "epoch_s": time.perf_counter() - t0,
                           "img_per_s": seen * world / max(progress.train_s, 1e-9)}
                    rows.append(row)
                    progress = EpochProgress()
                    schedule.end_epoch(val.dice)
                    if epoch == 1 and budget is not None:
                        # Plan cosine/one-cycle over the epochs the budget affords at the measured speed.
                        remaining = budget - (time.perf_counter() - started)
                        schedule.plan(min(spec.train.epochs, epoch + int(remaining / max(row["epoch_s"], 1e-9))))
                    improved = val.dice > best["val/dice"]
                    if improved:
                        best = {"val/dice": val.dice, "epoch": epoch}
                        bad_epochs = 0
                    else:
                        bad_epochs += 1
                    payload = checkpoint(epoch) if is_main else {}
                    if is_main:
                        payload["state"]["topk"] = [list(e) for e in topk.after_offer(val.dice, epoch)]
                        write_metrics(run_dir, rows)  # before last.pt: a kill in between redoes this epoch
                        _print_epoch(row, spec.train.epochs, improved)
                        if tracker is not None:
                            tracker.log_epoch(epoch, row)
                            if epoch % spec.train.predictions_every == 0:
                                tracker.log_predictions(epoch, _prediction_grid(_unwrap(model), data.datasets["val"], head, device, precision))
                    try:
                        if on_epoch_end is not None:
                            on_epoch_end(epoch, dict(row))
                    except StopTraining as exc:
                        stop = (exc.status, exc.reason)
                    if stop is None and spec.train.early_stopping_patience and bad_epochs >= spec.train.early_stopping_patience:
                        stop = ("completed", f"no better val/dice for {bad_epochs} epochs")
                    if stop is None and budget is not None and time.perf_counter() - started >= budget:
                        stop = ("completed", "time budget spent")
                    if world > 1:  # rank 0's clock and hook decide for every rank
                        stop = main_value(stop)
                    if is_main and spec.checkpoint.save_last:
                        # A final stop is part of the state: resuming a finished run only re-tests it.
                        payload["state"]["stop"] = list(stop) if stop and stop[0] != "interrupted" else None
                        payload["state"]["elapsed_s"] = time.perf_counter() - started
                        save_checkpoint(payload, last_path)
                    if is_main:  # a new best is a hard link to last.pt: no second write of the same state
                        topk.offer(val.dice, epoch, payload, same_as=last_path if spec.checkpoint.save_last else None)
            except _Diverged as exc:
                status, error = "diverged", str(exc)
                summary.update({"diverged_epoch": exc.epoch, "diverged_step": exc.step})
            if stop is not None:
                status = stop[0]
                if stop[1]:
                    summary["stopped_early"] = stop[1]
            elif agreed()[0] and status == "completed":
                status = "interrupted"

            # Test the best checkpoint (chosen on validation) once, unless the spec keeps the test
            # split out (a study tuning on val). Rank 0 decides and loads best.pt; the other ranks
            # get its weights (no shared disk needed).
            if main_value(spec.train.final_test and status in ("completed", "diverged", "pruned")
                          and (ckpt_dir / "best.pt").exists()):
                if is_main:
                    best_state = load_checkpoint(ckpt_dir / "best.pt")
                    load_model_state(_unwrap(model), best_state["model"], ckpt_dir / "best.pt")
                broadcast_module(_unwrap(model))
                test = evaluate(train_model, data.test, loss_fn, ids=data.datasets["test"].ids, desc="test",
                                should_stop=interrupted, **eval_kw)
                if agreed()[0]:  # resuming will test again
                    status = "interrupted"
                else:
                    summary.update({k: v for k, v in test.metrics("test").items() if k != "test/loss"})
                    if is_main:
                        write_per_image(run_dir, test.per_image)
                        save_prediction_png(run_dir, _prediction_grid(_unwrap(model), data.datasets["val"], head, device, precision))
            signum = (interrupts.signum or (peer_signal or [None])[0]) if status == "interrupted" else None
        except BaseException as exc:  # recorded (failed, or interrupted by KeyboardInterrupt), then re-raised
            interrupts.on_exit_now = None
            if isinstance(exc, Exception):
                status, error = "failed", f"{type(exc).__name__}: {exc}"
            else:
                status, error = "interrupted", type(exc).__name__
            _finish(run_dir, summary, rows, best, started, status, error, is_main, tracker, spec, quick=True)
            raise
        interrupts.on_exit_now = None  # a signal from here on changes nothing: the run has ended
        summary = _finish(run_dir, summary, rows, best, started, status, error, is_main, tracker, spec)
    return RunResult(status=status, run_dir=run_dir, best_epoch=best["epoch"], metrics=summary, signal=signum)


def _finish(run_dir: Path, summary: dict[str, Any], rows: list[dict[str, float]], best: dict[str, float],
            started: float, status: str, error: str | None, is_main: bool, tracker: Any,
            spec: ExperimentSpec, quick: bool = False) -> dict[str, Any]:
    """Write summary.json (and curves.png, the tracker's finish unless `quick`); returns the summary.

    `quick` is for runs ending in an error or a second signal: plots are skipped and a failure
    to write (a full disk) is reported on stderr rather than hiding the original error.
    """
    summary = {**summary}
    summary.update({
        "status": status, "best_epoch": best["epoch"],
        "val/dice": best["val/dice"] if best["epoch"] else float("nan"),
        "epochs_run": len(rows), "wall_s": round(time.perf_counter() - started, 3),
    })
    for key in ("test/dice", "test/dice_global", "test/iou"):
        summary.setdefault(key, float("nan"))
    if error:
        summary["error"] = error
    if not is_main:
        return summary
    try:
        if rows and not quick:
            plot_curves(run_dir, rows, f"{spec.name} (seed {spec.seed})")
        write_json(run_dir / "summary.json", summary)  # last: its presence means the run ended
    except (OSError, SegsweepError) as exc:
        if not quick:
            raise
        print(f"warning: could not write {run_dir / 'summary.json'}: {exc}", file=sys.stderr, flush=True)
    if tracker is not None:
        best_ckpt = run_dir / "checkpoints" / "best.pt"
        tracker.finish(summary, best_ckpt if best_ckpt.exists() else None)
    return summary


def _print_epoch(row: dict[str, float], epochs: int, improved: bool) -> None:
    mark = " *" if improved else ""
    print(f"epoch {row['epoch']:>3}/{epochs}  train/loss {row['train/loss']:.4f}  val/loss {row['val/loss']:.4f}  "
          f"val/dice {row['val/dice']:.4f}  val/dice_global {row['val/dice_global']:.4f}  "
          f"{row['img_per_s']:.1f} img/s  {row['epoch_s']:.1f}s{mark}", flush=True)


def load_run_spec(run_dir: Path) -> ExperimentSpec:
    """The resolved spec a run folder was trained with (from its last checkpoint)."""
    last = run_dir / "checkpoints" / "last.pt"
    if not last.exists():
        raise CheckpointError(f"{run_dir}: cannot resume: no checkpoints/last.pt (the run saved no epoch yet)")
    return spec_from_dict(load_checkpoint(last).get("spec"), str(last))


def evaluate_checkpoint(
    checkpoint: str | Path, split: str = "test", overrides: Any = (),
) -> tuple[ExperimentSpec, EvalResult]:
    """Recompute a split's metrics from a checkpoint (a run folder means its `best.pt`).

    `overrides` may change where the data lives (`data.root=...`), not what was trained:
    the model section must stay as stored.
    """
    from core.errors import SpecError
    from core.spec import override_spec, parse_override

    path = Path(checkpoint)
    if path.is_dir():
        path = path / "checkpoints" / "best.pt"
        if not path.exists():
            raise CheckpointError(f"{checkpoint}: no checkpoints/best.pt in this run folder")
    typed = dict(overrides.items()) if isinstance(overrides, Mapping) else dict(map(parse_override, overrides))
    fixed = [key for key in typed if key == "model" or key.startswith("model.")]
    if fixed:
        raise SpecError(f"override {fixed[0]}: the model is fixed by the checkpoint's weights ({path}); "
                        "only data and evaluation settings (data.*, train.device, ...) may be overridden")
    state = load_checkpoint(path)
    spec = override_spec(spec_from_dict(state.get("spec"), str(path)), typed)
    device = resolve_device(spec.train.device)
    precision = resolve_precision(spec.train.precision, device)
    data = build_data(spec)
    model = build_model(spec.model).to(device)
    load_model_state(model, state["model"], path)
    if spec.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loader = {"train": data.train, "val": data.val, "test": data.test}[split]
    result = evaluate(model, loader, build_loss(spec.loss, spec.model.head), head=spec.model.head, device=device,
                      precision=precision, channels_last=spec.train.channels_last,
                      ids=data.datasets[split].ids, desc=split, tta=spec.train.tta)
    return spec, result
