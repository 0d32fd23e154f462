"""Speed of the training path against its ceiling, a naive baseline and a peer stack (issue 6).

    python scripts/benchmark.py                 # full run, about six minutes on 2 quiet cores
    python scripts/benchmark.py --quick         # smoke run, about a minute; no thresholds
    python scripts/benchmark.py --out bench.json --cache-dir /tmp/segsweep-cache

Every ratio is measured side by side in one process: the two (or more) contenders alternate,
repetition by repetition (A B, then B A, ...), and each figure is the median of the paired
per-repetition ratios, so a neighbour's load that comes and goes hits both sides alike. The
JSON (default `results/benchmarks/<stamp>.json`) holds every repetition; the table printed at
the end is the one `BENCHMARKS.md` keeps. Data: the real 3-breed pets subset beside the repo
(`../shared/data/oxford-iiit-pet-mini`) when present, else the synthetic set. Nothing here
asserts a time: `tests/test_benchmark.py` only checks that `--quick` runs and what it writes.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from _cli import REPO, Parser, run_main

import torch

from core.spec import ExperimentSpec, override_spec

PETS_MINI = REPO.parent / "shared" / "data" / "oxford-iiit-pet-mini"
FIGURES = ("raw_step", "trainer_vs_raw", "fast_vs_naive", "cache_vs_uncached", "mfu", "peer_ratio",
           "trial_overhead", "study_trial_overhead", "memory")
TARGETS = {
    "trainer_vs_raw": (">=", 0.95), "fast_vs_naive": (">=", 2.0), "cache_vs_uncached": (">=", 5.0),
    "mfu": (">=", 0.4), "peer_ratio": ("<=", 1.0), "trial_overhead": ("<", 0.05),
}
NAIVE = {"data.cache": False, "train.channels_last": False, "train.precision": "fp32"}


@dataclass(frozen=True)
class Plan:
    """What one run measures. `full` is the issue's setting (128 px, batch 8, the real models);
    `quick` shrinks everything so the smoke test finishes in about a minute."""

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


FULL = Plan(
    main_model={"model.name": "resnet34_unet", "model.base_channels": 64},
    naive_models={"resnet34_unet": {"model.name": "resnet34_unet", "model.base_channels": 64},
                  "unet": {"model.name": "unet", "model.base_channels": 64}},
    image_size=128, batch_size=8, batches=4, naive_batches=2, reps=5, loader_images=64,
    trial_budget_s=60.0, workers=2, bf16_probe=True,
)
QUICK = Plan(
    main_model={"model.name": "unet", "model.base_channels": 16},
    naive_models={"resnet34_unet": {"model.name": "resnet34_unet", "model.base_channels": 16},
                  "unet": {"model.name": "unet", "model.base_channels": 16}},
    image_size=64, batch_size=4, batches=2, naive_batches=1, reps=2, loader_images=24,
    trial_budget_s=3.0, workers=2, bf16_probe=False,
)


# --------------------------------------------------------------------------- machine & memory


def machine_info() -> dict[str, Any]:
    from core.trainer import cpu_has_fast_bf16

    model, flags = platform.processor() or platform.machine(), set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("", platform.machine(), platform.processor()):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    relevant = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile", "avx_vnni")
    return {
        "cpu": model, "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "flags": {flag: flag in flags for flag in relevant},
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "fast_bf16": cpu_has_fast_bf16(),
        "cuda": torch.cuda.is_available(), "python": platform.python_version(),
    }


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else []


def _proc_kb(pid: int | str, name: str, key: str) -> int | None:
    """A `key: <n> kB` line of /proc/<pid>/<name> (None where /proc does not say)."""
    try:
        for line in Path(f"/proc/{pid}/{name}").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_rss_mb() -> float | None:
    kb = _proc_kb("self", "status", "VmHWM")
    if kb is None:  # not Linux: the process's lifetime peak
        import resource

        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // (1 if sys.platform != "darwin" else 1024)
    return round(kb / 1024, 1)


def mapping_kb(pid: int | str, paths: set[str]) -> dict[str, int]:
    """Rss / Pss / private kB of the mappings of `paths` in a process (from /proc/<pid>/smaps)."""
    totals = {"Rss": 0, "Pss": 0, "Private": 0}
    inside = False
    try:
        for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
            fields = line.split()
            if len(fields) >= 5 and "-" in fields[0] and not fields[0].endswith(":"):
                inside = len(fields) >= 6 and fields[5] in paths
            elif inside and fields[0] in ("Rss:", "Pss:"):
                totals[fields[0][:-1]] += int(fields[1])
            elif inside and fields[0] in ("Private_Clean:", "Private_Dirty:"):
                totals["Private"] += int(fields[1])
    except (OSError, ValueError, IndexError):
        pass
    return totals


def child_pids() -> list[int]:
    pids: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path("/proc/self/task").iterdir():
            pids += [int(p) for p in (task / "children").read_text().split()]
    return pids


# --------------------------------------------------------------------------- measuring


def interleaved(contenders: dict[str, Callable[[], float]], reps: int) -> dict[str, list[float]]:
    """Each contender once per repetition, the order reversed every other repetition."""
    names = list(contenders)
    results: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(reps):
        for name in names if rep % 2 == 0 else reversed(names):
            results[name].append(contenders[name]())
    return results


def paired_ratio(top: list[float], bottom: list[float]) -> float:
    """Median of the per-repetition ratios top[i] / bottom[i]."""
    return statistics.median(a / b for a, b in zip(top, bottom))


def median(values: list[float]) -> float:
    return statistics.median(values)


def verdict(figure: str, value: float | None) -> bool | None:
    if value is None or not math.isfinite(value):
        return None
    op, target = TARGETS[figure]
    return {">=": value >= target, "<=": value <= target, "<": value < target}[op]


def target_text(figure: str) -> str:
    op, target = TARGETS[figure]
    return f"{op} {target:g}"


def figure(name: str, value: float | None, unit: str, **details: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"value": None if value is None else round(value, 4), "unit": unit}
    if name in TARGETS:
        out.update(target=target_text(name), met=verdict(name, value))
    return {**out, **details}


def isolated(group: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """Run one group of figures in a fresh interpreter, so each peak RSS is its own (torch
    import included) and nothing one group allocated slows or bloats the next."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    started = time.perf_counter()
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        figures = pool.submit(group, *args).result()
    print(f"  {group.__name__}: {time.perf_counter() - started:.0f}s", file=sys.stderr, flush=True)
    return figures


def with_peak_rss(figures: dict[str, Any]) -> dict[str, Any]:
    """Stamp each figure (not already stamped) with this process's peak RSS so far."""
    peak = peak_rss_mb()
    for f in figures.values():
        if isinstance(f, dict) and "value" in f:
            f.setdefault("peak_rss_mb", peak)
    return figures


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
        from core.data import build_data
        from core.losses import build_loss
        from core.models import build_model
        from core.trainer import LrSchedule, build_optimizer, resolve_device, resolve_precision, seed_everything

        self.spec = spec
        self.device = resolve_device(spec.train.device)
        self.precision = resolve_precision(spec.train.precision, self.device)
        seed_everything(spec.seed)
        self.data = build_data(spec)
        self.model = build_model(spec.model).to(self.device)
        if spec.train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = build_optimizer(spec, self.model.parameters())
        self.loss_fn = build_loss(spec.loss, spec.model.head)
        self.schedule = LrSchedule(spec, len(self.data.train))
        self.epoch_no, self.step = 0, 0

    def describe(self) -> dict[str, Any]:
        return {"precision": self.precision, "channels_last": self.spec.train.channels_last,
                "cache": self.spec.data.cache, "workers": self.data.num_workers}

    def epoch(self) -> float:
        from core.trainer import derive_seed, seed_everything, train_one_epoch

        self.epoch_no += 1
        seed_everything(derive_seed(self.spec.seed, self.epoch_no))
        self.data.train_sampler.set_epoch(self.epoch_no)
        started = time.perf_counter()
        _, seen, self.step = train_one_epoch(
            self.model, self.data.train, self.loss_fn, self.optimizer, self.schedule, None,
            epoch=self.epoch_no, step=self.step, device=self.device, precision=self.precision,
            channels_last=self.spec.train.channels_last, grad_clip=None, should_stop=lambda: False,
        )
        return seen / (time.perf_counter() - started)

    def validate(self) -> float:
        """Seconds for one evaluation pass over the validation split."""
        from core.trainer import evaluate

        started = time.perf_counter()
        evaluate(self.model, self.data.val, self.loss_fn, head=self.spec.model.head, device=self.device,
                 precision=self.precision, channels_last=self.spec.train.channels_last,
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
        from core.losses import build_loss
        from core.models import build_model
        from core.trainer import build_optimizer, resolve_device, resolve_precision

        self.device = resolve_device(spec.train.device)
        self.precision = precision or resolve_precision(spec.train.precision, self.device)
        self.channels_last = spec.train.channels_last if channels_last is None else channels_last
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
        from core.trainer import autocast

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


# --------------------------------------------------------------------------- figures
# Each `bench_*` runs in its own process (see `isolated`) and returns {figure name: figure}.


def bench_training(plan: Plan, cache_dir: Path) -> dict[str, Any]:
    """raw_step, trainer_vs_raw, mfu and the main model's fast_vs_naive, from one loop in which
    the raw step, the trainer (fast path), the naive trainer and a matmul take turns."""
    spec = base_spec(plan, cache_dir, plan.main_model)
    raw = RawStep(spec)
    raw.run(1)  # warm: first-call allocations, oneDNN kernel selection
    trainer = TrainerRun(spec)
    trainer.epoch()
    naive = TrainerRun(override_spec(spec, NAIVE))
    naive.epoch()  # also starts its persistent loader worker
    dtype = torch.bfloat16 if trainer.precision == "bf16" else torch.float32
    reps = interleaved({
        "raw": lambda: raw.run(plan.batches),
        "trainer": trainer.epoch,
        "naive": naive.epoch,
        "matmul_gflops": lambda: matmul_peak(dtype),
    }, plan.reps)
    flops_per_image, by_op = training_flops(spec)
    trainer_flops = flops_per_image * median(reps["trainer"]) / 1e9
    raw_flops = flops_per_image * median(reps["raw"]) / 1e9
    peak = max(reps["matmul_gflops"])
    figures = {
        "raw_step": figure(
            "raw_step", median(reps["raw"]), "img/s", model=dict(plan.main_model), image_size=plan.image_size,
            batch_size=plan.batch_size, precision=raw.precision, channels_last=raw.channels_last,
            steps_per_rep=plan.batches, reps=[round(x, 3) for x in reps["raw"]],
            note="ceiling: the model alone on tensors in memory, with the trainer's loss and optimiser"),
        "trainer_vs_raw": figure(
            "trainer_vs_raw", paired_ratio(reps["trainer"], reps["raw"]), "ratio",
            trainer_img_s=round(median(reps["trainer"]), 3), raw_img_s=round(median(reps["raw"]), 3),
            reps=[round(x, 3) for x in reps["trainer"]], workers=trainer.data.num_workers,
            note=f"train_one_epoch over {plan.batches} batches an epoch (cached loader, augmentation, "
                 f"{trainer.data.num_workers} workers) vs raw_step: same model, size, batch, precision"),
        "mfu": figure(
            "mfu", trainer_flops / peak, "ratio", achieved_gflops=round(trainer_flops, 2),
            raw_achieved_gflops=round(raw_flops, 2), raw_mfu=round(raw_flops / peak, 4),
            peak_matmul_gflops=round(peak, 2), peak_dtype=str(dtype).replace("torch.", ""),
            gflop_per_image=round(flops_per_image / 1e9, 3),
            gflop_by_op={k: round(v / 1e9, 3) for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])},
            matmul_reps=[round(x, 1) for x in reps["matmul_gflops"]],
            note="trainer FLOP/s (convolution and matmul FLOPs from FlopCounterMode) over the best "
                 "2048x2048 matmul in the same dtype, measured in the same loop"),
        "_main_naive": {plan.main_model["model.name"]: {
            "fast_img_s": round(median(reps["trainer"]), 3), "naive_img_s": round(median(reps["naive"]), 3),
            "ratio": round(paired_ratio(reps["trainer"], reps["naive"]), 4),
            "fast": trainer.describe(), "naive": naive.describe(), "base_channels": spec.model.base_channels,
            "fast_reps": [round(x, 3) for x in reps["trainer"]], "naive_reps": [round(x, 3) for x in reps["naive"]],
        }},
    }
    return with_peak_rss(figures)


def bench_fast_vs_naive(plan: Plan, cache_dir: Path, done: dict[str, Any]) -> dict[str, Any]:
    """The default fast path over fp32 NCHW with an uncached loader, per model, and what each
    part (memory format; bf16 where worth a look) does to the raw step."""
    per_model = dict(done)
    small = dataclasses.replace(plan, batches=plan.naive_batches)
    for label, model in plan.naive_models.items():
        if label in per_model and per_model[label]["base_channels"] == model["model.base_channels"]:
            continue
        spec = base_spec(small, cache_dir, model)
        fast, naive = TrainerRun(spec), TrainerRun(override_spec(spec, NAIVE))
        fast.epoch()
        naive.epoch()
        reps = interleaved({"fast": fast.epoch, "naive": naive.epoch}, max(2, plan.reps - 2))
        per_model[label] = {
            "fast_img_s": round(median(reps["fast"]), 3), "naive_img_s": round(median(reps["naive"]), 3),
            "ratio": round(paired_ratio(reps["fast"], reps["naive"]), 4),
            "fast": fast.describe(), "naive": naive.describe(), "base_channels": spec.model.base_channels,
            "fast_reps": [round(x, 3) for x in reps["fast"]], "naive_reps": [round(x, 3) for x in reps["naive"]],
        }
        del fast, naive
        gc.collect()
    spec = base_spec(plan, cache_dir, plan.main_model)
    parts = {"fp32_nchw": RawStep(spec, "fp32", False), "fp32_channels_last": RawStep(spec, "fp32", True)}
    for raw in parts.values():
        raw.run(1)
    part_reps = interleaved({k: (lambda r=r: r.run(plan.batches)) for k, r in parts.items()}, plan.reps)
    components: dict[str, Any] = {k: round(median(v), 3) for k, v in part_reps.items()}
    components["channels_last_over_nchw"] = round(
        paired_ratio(part_reps["fp32_channels_last"], part_reps["fp32_nchw"]), 4)
    del parts
    if plan.bf16_probe:
        # Without bf16 units autocast runs emulated kernels: one step of 2 images shows it.
        probe = {"fp32_channels_last": RawStep(spec, "fp32", True, batch_size=2),
                 "bf16_channels_last": RawStep(spec, "bf16", True, batch_size=2)}
        for raw in probe.values():
            raw.run(1)
        probe_reps = interleaved({k: (lambda r=r: r.run(1)) for k, r in probe.items()}, 1)
        components["bf16_probe_batch2_img_s"] = {k: round(v[0], 3) for k, v in probe_reps.items()}
        components["bf16_over_fp32"] = round(
            probe_reps["bf16_channels_last"][0] / probe_reps["fp32_channels_last"][0], 4)
        del probe
    return with_peak_rss({"fast_vs_naive": figure(
        "fast_vs_naive", min(m["ratio"] for m in per_model.values()), "ratio (min over models)",
        per_model=per_model, raw_step_parts=components,
        note="fast = the defaults (cache, channels_last, precision auto); naive = data.cache=false "
             "train.channels_last=false train.precision=fp32 (workers auto); both through "
             "train_one_epoch, side by side")})


def bench_loader(plan: Plan, cache_dir: Path, trainer_img_s: float) -> dict[str, Any]:
    """img/s out of the training DataLoader (augmentation included), cached vs uncached, with
    the same worker count (0: in this process) on both sides so only the cache differs."""
    from core.data import build_data

    loaders = {}
    no_augment = {"data.augment.affine_p": 0.0, "data.augment.hflip_p": 0.0}
    for name, cache, extra in (("cached", True, {}), ("uncached", False, {}),
                               ("cached_no_aug", True, no_augment), ("uncached_no_aug", False, no_augment)):
        spec = base_spec(plan, cache_dir, plan.main_model, **{
            "data.limit_train": plan.loader_images, "data.cache": cache, "data.num_workers": 0, **extra})
        loaders[name] = build_data(spec)
    epochs = {name: 0 for name in loaders}

    def drain(name: str) -> float:
        bundle = loaders[name]
        epochs[name] += 1
        bundle.train_sampler.set_epoch(epochs[name])
        started, seen = time.perf_counter(), 0
        for images, _, _ in bundle.train:
            seen += len(images)
        return seen / (time.perf_counter() - started)

    for name in loaders:
        drain(name)  # warm: page cache, albumentations import
    reps = interleaved({name: (lambda n=name: drain(n)) for name in loaders}, plan.reps)
    cached_img_s = median(reps["cached"])
    return with_peak_rss({"cache_vs_uncached": figure(
        "cache_vs_uncached", paired_ratio(reps["cached"], reps["uncached"]), "ratio",
        cached_img_s=round(cached_img_s, 1), uncached_img_s=round(median(reps["uncached"]), 1),
        cached_reps=[round(x, 1) for x in reps["cached"]], uncached_reps=[round(x, 1) for x in reps["uncached"]],
        without_augmentation={"cached_img_s": round(median(reps["cached_no_aug"]), 1),
                              "uncached_img_s": round(median(reps["uncached_no_aug"]), 1),
                              "ratio": round(paired_ratio(reps["cached_no_aug"], reps["uncached_no_aug"]), 2)},
        trainer_img_s=trainer_img_s, cached_over_trainer=round(cached_img_s / trainer_img_s, 1),
        cached_over_trainer_target=">= 3", cached_over_trainer_met=cached_img_s / trainer_img_s >= 3,
        images_per_rep=plan.loader_images, workers=0,
        note="train loader with the default augmentation (affine p=0.5, flip p=0.5), 0 workers on both "
             "sides; without_augmentation: the cache's own gain; cached_over_trainer: the cached "
             "loader's img/s over what the trainer consumes (trainer_vs_raw)")})


def bench_memory(plan: Plan, cache_dir: Path) -> dict[str, Any]:
    """RSS, PSS and USS of N persistent loader workers over the cached memory map, forked (as in
    `fit`) from a process that already holds the model and optimiser. PSS splits shared pages
    between the processes mapping them; USS is what each worker holds alone."""
    from core.data import build_data
    from core.models import build_model
    from core.trainer import build_optimizer

    spec = base_spec(plan, cache_dir, plan.main_model, **{"data.num_workers": plan.workers, "data.limit_train": None})
    model = build_model(spec.model)
    optimizer = build_optimizer(spec, model.parameters())

    def workers_after_two_epochs(freeze: bool) -> tuple[Any, list[dict[str, Any]]]:
        bundle = build_data(spec)
        if freeze:
            gc.freeze()  # objects alive now are never traversed by a worker's GC: no copy-on-write
        for epoch in (1, 2):
            bundle.train_sampler.set_epoch(epoch)
            for _ in bundle.train:
                pass
        cache = bundle.datasets["train"].cache
        paths = {str(cache.images_path), str(cache.masks_path)} if cache is not None else set()
        rows = []
        for pid in child_pids():
            rollup = {k: (_proc_kb(pid, "smaps_rollup", k) or 0) / 1024 for k in ("Pss", "Private_Clean", "Private_Dirty")}
            rows.append({"pid": pid, "rss_mb": round((_proc_kb(pid, "status", "VmRSS") or 0) / 1024, 1),
                         "peak_rss_mb": round((_proc_kb(pid, "status", "VmHWM") or 0) / 1024, 1),
                         "pss_mb": round(rollup["Pss"], 1),
                         "uss_mb": round(rollup["Private_Clean"] + rollup["Private_Dirty"], 1),
                         "cache_map_mb": {k: round(v / 1024, 1) for k, v in mapping_kb(pid, paths).items()}})
        return bundle, rows

    bundle, rows = workers_after_two_epochs(freeze=False)
    main_rss = round((_proc_kb("self", "status", "VmRSS") or 0) / 1024, 1)
    cache = bundle.datasets["train"].cache
    train_images = len(bundle.datasets["train"])
    del bundle  # its workers exit
    gc.collect()
    _, frozen = workers_after_two_epochs(freeze=True)
    gc.unfreeze()
    cache_mb = round((cache.images_path.stat().st_size + cache.masks_path.stat().st_size) / 2**20, 1) if cache else None
    figures = {"memory": figure(
        "memory", sum(r["peak_rss_mb"] for r in rows), "MB (peak RSS of the workers together)",
        workers=len(rows), per_worker=rows, workers_rss_mb=round(sum(r["rss_mb"] for r in rows), 1),
        workers_pss_mb=round(sum(r["pss_mb"] for r in rows), 1), workers_uss_mb=round(sum(r["uss_mb"] for r in rows), 1),
        main_rss_mb=main_rss, train_cache_files_mb=cache_mb, train_images=train_images,
        with_gc_freeze={"workers_uss_mb": round(sum(r["uss_mb"] for r in frozen), 1),
                        "workers_pss_mb": round(sum(r["pss_mb"] for r in frozen), 1),
                        "workers_peak_rss_mb": round(sum(r["peak_rss_mb"] for r in frozen), 1)},
        note=f"{plan.workers} persistent workers after two epochs over the whole cached train split, "
             "forked from a process holding the model; cache_map_mb: each worker's resident pages "
             "of the cache files, and how many of them are its own (Private); with_gc_freeze: the "
             "same with gc.freeze() in the parent before the workers start")}
    del model, optimizer
    return with_peak_rss(figures)


PEER_ARCHITECTURE = {"model.name": "resnet34_unet", "model.base_channels": 64, "model.decoder": "smp"}


def bench_peer(plan: Plan, cache_dir: Path) -> dict[str, Any]:
    """Our epoch (train_one_epoch + evaluate) over a typical user stack's: PyTorch Lightning with
    segmentation_models_pytorch `Unet("resnet34")`, same loaders, size, batch and precision.

    The figure trains the same network on both sides (`model.decoder: smp` is smp's decoder), so
    it compares the stacks. Our study-faithful decoder (heavier) and Lightning driving it are
    timed alongside, to separate what the architecture costs from what the loop costs."""
    try:
        import lightning as L
        import segmentation_models_pytorch as smp
    except ImportError as exc:
        return {"peer_ratio": figure(
            "peer_ratio", None, "ratio", skipped=True,
            note=f"skipped: the bench extra is not installed ({exc.name}); pip install -e '.[bench]'")}
    from core.models import build_model

    same = TrainerRun(base_spec(plan, cache_dir, PEER_ARCHITECTURE))
    spec = base_spec(plan, cache_dir, plan.main_model)
    study = TrainerRun(spec)
    precision = {"fp32": "32-true", "bf16": "bf16-mixed"}[same.precision]
    torch.manual_seed(0)
    peers = {"peer": _peer_module(L, smp, smp.Unet("resnet34", encoder_weights=None, in_channels=3, classes=1),
                                  spec.optim.lr),
             # The same loop around our own model: what the loop costs, apart from the architecture.
             "lightning_our_model": _peer_module(L, smp, build_model(spec.model), spec.optim.lr)}
    timer = _EpochTimer(L)

    def peer_epoch(name: str) -> float:
        trainer = L.Trainer(
            accelerator="cpu", devices=1, max_epochs=1, precision=precision, logger=False,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            num_sanity_val_steps=0, use_distributed_sampler=False, callbacks=[timer],
        )
        trainer.fit(peers[name], train_dataloaders=same.data.train, val_dataloaders=same.data.val)
        return timer.seconds

    with warnings.catch_warnings(), _quiet_lightning():
        warnings.simplefilter("ignore")
        same.epoch_seconds()
        study.epoch_seconds()
        for name in peers:
            peer_epoch(name)
        reps = interleaved({"ours": same.epoch_seconds, "ours_study_decoder": study.epoch_seconds,
                            **{n: (lambda n=n: peer_epoch(n)) for n in peers}}, max(2, plan.reps - 2))
    peer_flops = _peer_flops(smp, spec)
    same_flops, _ = training_flops(same.spec)
    study_flops, _ = training_flops(spec)
    ratio = paired_ratio(reps["ours"], reps["peer"])
    return with_peak_rss({"peer_ratio": figure(
        "peer_ratio", ratio, "ratio (our epoch s / peer epoch s)",
        ours_epoch_s=round(median(reps["ours"]), 3), peer_epoch_s=round(median(reps["peer"]), 3),
        ours_model=dict(PEER_ARCHITECTURE), ours_gflop_per_image=round(same_flops / 1e9, 3),
        peer_gflop_per_image=round(peer_flops / 1e9, 3),
        study_decoder={"model": dict(plan.main_model), "epoch_s": round(median(reps["ours_study_decoder"]), 3),
                       "gflop_per_image": round(study_flops / 1e9, 3),
                       "ratio_to_peer": round(paired_ratio(reps["ours_study_decoder"], reps["peer"]), 4),
                       "lightning_epoch_s": round(median(reps["lightning_our_model"]), 3),
                       "loop_ratio": round(paired_ratio(reps["ours_study_decoder"], reps["lightning_our_model"]), 4)},
        reps={k: [round(x, 3) for x in v] for k, v in reps.items()},
        train_images=spec.data.limit_train, val_images=len(same.data.datasets["val"]),
        peer={"lightning": L.__version__, "smp": smp.__version__, "precision": precision,
              "model": 'smp.Unet("resnet34", encoder_weights=None, classes=1)'},
        note="one epoch = training pass + validation pass on the same loaders; ours trains smp's network "
             "(model.decoder: smp); study_decoder: our default decoder (256/128/64/64/32, transposed convs), "
             "its ratio to the peer and to Lightning driving it (loop_ratio)")})


def _peer_module(L: Any, smp: Any, net: torch.nn.Module, lr: float) -> Any:
    class PeerModule(L.LightningModule):
        """What a user typically writes: a network, BCE + Dice from smp.losses, Adam."""

        def __init__(self) -> None:
            super().__init__()
            self.net = net
            self.dice = smp.losses.DiceLoss("binary", from_logits=True, ignore_index=255)
            self.bce = smp.losses.SoftBCEWithLogitsLoss(ignore_index=255)

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.net(images)

        def _loss(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            images, masks, _ = batch
            logits = self(images)  # (B, 1, H, W)
            target = masks[:, None].float()
            return self.bce(logits, target) + self.dice(logits, masks[:, None].long()), logits, masks

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            loss, _, _ = self._loss(batch)
            self.log("train/loss", loss, on_step=True, on_epoch=True)
            return loss

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            loss, logits, masks = self._loss(batch)
            stats = smp.metrics.get_stats(logits.sigmoid(), masks[:, None].long(), mode="binary", threshold=0.5)
            dice = smp.metrics.f1_score(*stats, reduction="micro-imagewise")
            self.log_dict({"val/loss": loss, "val/dice": dice}, on_epoch=True)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.parameters(), lr=lr)

    return PeerModule()


def _peer_flops(smp: Any, spec: ExperimentSpec) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    net = smp.Unet("resnet34", encoder_weights=None, in_channels=3, classes=1)
    s = spec.data.image_size
    with FlopCounterMode(display=False) as counter:
        net(torch.randn(2, 3, s, s)).sum().backward()
    return counter.get_total_flops() / 2


class _EpochTimer:
    """A Lightning callback: seconds from the start of a training epoch to the end of its
    validation (Lightning validates inside the training epoch)."""

    def __new__(cls, L: Any) -> Any:
        class EpochTimer(L.Callback):
            seconds = float("nan")

            def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
                self.started = time.perf_counter()

            def on_validation_epoch_end(self, trainer: Any, module: Any) -> None:
                self.seconds = time.perf_counter() - self.started

        return EpochTimer()


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    import logging

    loggers = [logging.getLogger(n) for n in ("lightning", "lightning.pytorch", "lightning.fabric",
                                              "pytorch_lightning")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def bench_trial(plan: Plan, cache_dir: Path) -> dict[str, Any]:
    """Sweep trials as a sweep worker runs them: in a process whose first trial has already paid
    the imports (a short warm-up trial here). Two timed trials of `trial_budget_s`: an ablation
    trial (tests its best checkpoint: `trial_overhead`, the issue's figure) and a study trial
    that tunes on val only (`train.final_test: false`, as sweeps/pets_mini_recipe.yaml does)."""
    import core.trainer as trainer_module

    spec = base_spec(plan, cache_dir, plan.main_model, **{
        "name": "benchmark-trial", "data.limit_train": None, "train.epochs": 1000,
        "train.time_budget_s": plan.trial_budget_s,
    })
    with tempfile.TemporaryDirectory(prefix="segsweep-bench-") as tmp, contextlib.redirect_stdout(sys.stderr):
        warm = override_spec(spec, {"data.limit_train": plan.batch_size, "train.epochs": 1,
                                    "train.time_budget_s": None, "train.final_test": False})
        trainer_module.fit(warm, trainer_module.new_run_dir(tmp, "warm-up"))
    ablation = _timed_trial(trainer_module, spec)
    study = _timed_trial(trainer_module, override_spec(spec, {"train.final_test": False}))
    note = ("fit() with train.time_budget_s and no tracker, after a warm-up trial in the same process; "
            "overhead = wall - training passes, the first batch of each epoch counted at the median batch time")
    return with_peak_rss({
        "trial_overhead": figure("trial_overhead", ablation.pop("share"), "share of the trial's wall time",
                                 **ablation, note=note),
        "study_trial_overhead": figure("study_trial_overhead", study.pop("share"), "share of the trial's wall time",
                                       **study, note=note + "; train.final_test: false (no test pass)"),
    })


def _timed_trial(trainer_module: Any, spec: ExperimentSpec) -> dict[str, Any]:
    """One `fit()`, split into training passes, validation, test and the rest (start-up,
    checkpoints, records, plots) by wrapping the trainer's `train_one_epoch`, `evaluate` and
    `build_data` (measurement only: nothing else changes)."""
    spans = {"train": 0.0, "val": 0.0, "test": 0.0}
    marks: list[list[float]] = []  # per epoch: start, each batch's arrival, end
    original_train, original_evaluate, original_build = (
        trainer_module.train_one_epoch, trainer_module.evaluate, trainer_module.build_data)

    class TimedLoader:
        def __init__(self, loader: Any):
            self.loader = loader

        def __len__(self) -> int:
            return len(self.loader)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.loader, name)

        def __iter__(self) -> Iterator[Any]:
            for batch in self.loader:
                marks[-1].append(time.perf_counter())
                yield batch

    def train_one_epoch(*args: Any, **kwargs: Any) -> Any:
        marks.append([time.perf_counter()])
        try:
            return original_train(*args, **kwargs)
        finally:
            marks[-1].append(time.perf_counter())
            spans["train"] += marks[-1][-1] - marks[-1][0]

    def evaluate(*args: Any, desc: str = "eval", **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original_evaluate(*args, desc=desc, **kwargs)
        finally:
            spans["test" if desc == "test" else "val"] += time.perf_counter() - started

    sizes: dict[str, int] = {}

    def build_data(*args: Any, **kwargs: Any) -> Any:
        bundle = original_build(*args, **kwargs)
        sizes.update({split: len(dataset) for split, dataset in bundle.datasets.items()})
        return dataclasses.replace(bundle, train=TimedLoader(bundle.train))

    trainer_module.train_one_epoch, trainer_module.evaluate, trainer_module.build_data = (
        train_one_epoch, evaluate, build_data)
    try:
        with tempfile.TemporaryDirectory(prefix="segsweep-bench-") as tmp:
            run_dir = trainer_module.new_run_dir(tmp, spec.name)
            started = time.perf_counter()
            with contextlib.redirect_stdout(sys.stderr):
                result = trainer_module.fit(spec, run_dir)
            wall = time.perf_counter() - started
    finally:
        trainer_module.train_one_epoch, trainer_module.evaluate, trainer_module.build_data = (
            original_train, original_evaluate, original_build)
    # A batch's time: from its arrival to the next one's (its step, then loading the next).
    steps = [b - a for m in marks for a, b in zip(m[1:-1], m[2:])][1:]  # the very first is warm-up
    typical = median(steps) if steps else 0.0
    firsts = [m[2] - m[0] for m in marks if len(m) > 2]  # epoch start to the second batch
    first_batches = sum(max(0.0, f - typical) for f in firsts)
    training = spans["train"] - first_batches
    overhead = wall - training
    return dict(
        share=overhead / wall, wall_s=round(wall, 2), time_budget_s=spec.train.time_budget_s, status=result.status,
        epochs=len(marks), training_s=round(training, 2), overhead_s=round(overhead, 2),
        median_batch_s=round(typical, 3),
        breakdown_s={"first_batches": round(first_batches, 2), "validation": round(spans["val"], 2),
                     "test": round(spans["test"], 2),
                     "startup_checkpoints_records": round(wall - spans["train"] - spans["val"] - spans["test"], 2)},
        images=sizes,
    )


# --------------------------------------------------------------------------- report


def table(results: dict[str, Any]) -> str:
    """The markdown table BENCHMARKS.md keeps."""
    lines = ["| figure | value | target | met | peak RSS MB | detail |", "|---|---|---|---|---|---|"]
    for name in FIGURES:
        f = results.get(name, {})
        value = "skipped" if f.get("skipped") else ("n/a" if f.get("value") is None else f"{f['value']:.4g}")
        met = {True: "yes", False: "**no**", None: "-"}[f.get("met")]
        lines.append(f"| {name} | {value} {f.get('unit', '') if f.get('value') is not None else ''} | "
                     f"{f.get('target', '-')} | {met} | {f.get('peak_rss_mb', '-')} | {_detail(name, f)} |")
    return "\n".join(lines)


def _detail(name: str, f: dict[str, Any]) -> str:
    if f.get("skipped") or not f:
        return f.get("note", "")
    if name == "raw_step":
        return f"{f['model']['model.name']} {f['image_size']}px b{f['batch_size']} {f['precision']} " \
               f"{'channels_last' if f['channels_last'] else 'NCHW'}"
    if name == "trainer_vs_raw":
        return f"trainer {f['trainer_img_s']} img/s vs raw {f['raw_img_s']} img/s"
    if name == "fast_vs_naive":
        per = "; ".join(f"{k}: {v['fast_img_s']} vs {v['naive_img_s']} img/s ({v['ratio']:.2f}x)"
                        for k, v in f["per_model"].items())
        parts = f["raw_step_parts"]
        extra = f"; raw channels_last/NCHW {parts['channels_last_over_nchw']:.2f}x"
        if "bf16_over_fp32" in parts:
            extra += f", raw bf16/fp32 {parts['bf16_over_fp32']:.2f}x"
        return per + extra
    if name == "cache_vs_uncached":
        return f"{f['cached_img_s']} vs {f['uncached_img_s']} img/s (no augmentation: " \
               f"{f['without_augmentation']['ratio']}x); cached/trainer " \
               f"{f['cached_over_trainer']}x (target >= 3: {'met' if f['cached_over_trainer_met'] else 'not met'})"
    if name == "mfu":
        return f"{f['achieved_gflops']} GFLOP/s of {f['peak_matmul_gflops']} ({f['peak_dtype']} matmul); " \
               f"raw step {f['raw_mfu']:.2f}"
    if name == "peer_ratio":
        d = f["study_decoder"]
        return f"same network (smp's Unet): ours {f['ours_epoch_s']} s vs peer {f['peer_epoch_s']} s an epoch; " \
               f"our study decoder {d['epoch_s']} s ({d['ratio_to_peer']:.2f}x the peer, " \
               f"{d['loop_ratio']:.2f}x Lightning driving it)"
    if name in ("trial_overhead", "study_trial_overhead"):
        b = f["breakdown_s"]
        return f"{f['overhead_s']} of {f['wall_s']} s: first batches {b['first_batches']}, val {b['validation']}, " \
               f"test {b['test']}, start-up/records {b['startup_checkpoints_records']}"
    if name == "memory":
        private = sum(w["cache_map_mb"]["Private"] for w in f["per_worker"])
        return f"{f['workers']} workers: peak RSS {f['value']} MB, PSS {f['workers_pss_mb']}, USS " \
               f"{f['workers_uss_mb']} MB; cache files {f['train_cache_files_mb']} MB, of which the " \
               f"workers hold {private} MB privately; with gc.freeze() USS {f['with_gc_freeze']['workers_uss_mb']} MB"
    return ""


def main() -> int:
    parser = Parser(prog="benchmark.py", description=__doc__,
                    formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small models and few repetitions (smoke test)")
    parser.add_argument("--out", type=Path, help="JSON file (default: results/benchmarks/<stamp>.json)")
    parser.add_argument("--cache-dir", type=Path, default=REPO / "results" / "cache",
                        help="writable folder for the data cache (and synthetic data); default results/cache")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's, one per core)")
    parser.add_argument("--only", nargs="+", choices=FIGURES,
                        help="measure only these figures (raw_step, trainer_vs_raw and mfu always run)")
    args = parser.parse_args()

    os.environ.setdefault("WANDB_MODE", "disabled")
    if args.threads:
        if args.threads < 1:
            parser.error("--threads must be at least 1")
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the measuring processes inherit it
        torch.set_num_threads(args.threads)
    plan = QUICK if args.quick else FULL
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.out or REPO / "results" / "benchmarks" / f"{stamp}{'-quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    cache_dir = args.cache_dir.resolve()
    cache_dir.mkdir(parents=True, exist_ok=True)
    wanted = set(args.only or FIGURES)
    report: dict[str, Any] = {
        "schema": 1, "stamp": stamp, "quick": args.quick,
        "command": " ".join(["python scripts/benchmark.py"] + (["--quick"] if args.quick else [])
                            + ([f"--threads {args.threads}"] if args.threads else [])),
        "machine": machine_info(), "load_average_before": load_average(),
        "data": "oxford-iiit-pet-mini" if PETS_MINI.is_dir() else "synthetic", "plan": dataclasses.asdict(plan),
    }
    print(f"benchmark ({'quick' if args.quick else 'full'}) on {report['machine']['cpu']}, "
          f"{report['machine']['torch_threads']} threads, load {report['load_average_before']}",
          file=sys.stderr, flush=True)
    started = time.perf_counter()
    results = isolated(bench_training, plan, cache_dir)  # the others compare with it
    main_naive = results.pop("_main_naive")
    if "fast_vs_naive" in wanted:
        results.update(isolated(bench_fast_vs_naive, plan, cache_dir, main_naive))
    if "cache_vs_uncached" in wanted:
        results.update(isolated(bench_loader, plan, cache_dir, results["trainer_vs_raw"]["trainer_img_s"]))
    if "memory" in wanted:
        results.update(isolated(bench_memory, plan, cache_dir))
    if "peer_ratio" in wanted:
        results.update(isolated(bench_peer, plan, cache_dir))
    if wanted & {"trial_overhead", "study_trial_overhead"}:
        results.update(isolated(bench_trial, plan, cache_dir))
    report.update(
        load_average_after=load_average(), total_s=round(time.perf_counter() - started, 1),
        figures={name: results.get(name, {"value": None, "skipped": True, "note": "not measured (--only)"})
                 for name in FIGURES},
    )
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(table(report["figures"]))
    print(f"\n{report['command']}: {report['total_s']:.0f}s, load average {report['load_average_before']} "
          f"-> {report['load_average_after']}; wrote {out}")
    return 0


if __name__ == "__main__":
    run_main(main)
