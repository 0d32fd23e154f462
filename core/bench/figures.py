"""The benchmark's figures from the trainer's own pieces: raw step, trainer vs raw, MFU, fast
vs naive, cached vs uncached loader, loader workers' memory. Each `bench_*` runs in its own
process (see `measure.isolated`) and returns {figure name: figure}."""
from __future__ import annotations

import dataclasses
import gc
import time
from pathlib import Path
from typing import Any

import torch

from ..data import build_data
from ..models import build_model
from ..optim import build_optimizer
from ..spec import override_spec
from .contenders import NAIVE, Plan, RawStep, TrainerRun, base_spec, matmul_peak, training_flops
from .measure import (_proc_kb, child_pids, figure, interleaved, mapping_kb, median, paired_ratio, step_pairs,
                      with_peak_rss)


def bench_training(plan: Plan, cache_dir: Path, with_naive: bool = True) -> dict[str, Any]:
    """raw_step, trainer_vs_raw, mfu and (`with_naive`) the main model's fast_vs_naive. The
    trainer's epochs carry a raw step beside each of their own (`TrainerRun.epoch(raw)`:
    step-paired trainer_vs_raw); they take turns with the naive trainer and a matmul."""
    spec = base_spec(plan, cache_dir, plan.main_model)
    raw = RawStep(spec)
    raw.run(1)  # warm: first-call allocations, oneDNN kernel selection
    trainer = TrainerRun(spec)
    trainer.epoch()
    contenders: dict[str, Any] = {"trainer": lambda: trainer.epoch(raw)}
    if with_naive:
        naive = TrainerRun(override_spec(spec, NAIVE))
        naive.epoch()  # also starts its persistent loader worker
        contenders["naive"] = naive.epoch
    dtype = torch.bfloat16 if trainer.precision == "bf16" else torch.float32
    reps = interleaved({**contenders, "matmul_gflops": lambda: matmul_peak(dtype)}, plan.reps)
    paired = step_pairs(trainer.pairs, plan.batch_size)
    flops_per_image, by_op = training_flops(spec)
    trainer_flops = flops_per_image * paired["trainer_img_s"] / 1e9
    raw_flops = flops_per_image * paired["raw_img_s"] / 1e9
    peak = max(reps["matmul_gflops"])
    figures = {
        "raw_step": figure(
            "raw_step", paired["raw_img_s"], "img/s", model=dict(plan.main_model), image_size=plan.image_size,
            batch_size=plan.batch_size, precision=raw.precision, channels_last=raw.channels_last,
            steps=paired["pairs"], note="ceiling: the model alone on tensors in memory, with the trainer's loss "
            "and optimiser; img/s of its median step"),
        "trainer_vs_raw": figure(
            "trainer_vs_raw", paired["ratio"], "ratio", trainer_img_s=paired["trainer_img_s"],
            raw_img_s=paired["raw_img_s"], ci95=paired["ci95"], pairs=paired["pairs"],
            step_pairs_s=paired["step_pairs_s"],
            epoch_img_s=[round(x, 3) for x in reps["trainer"]], workers=trainer.data.num_workers,
            note=f"train_one_epoch ({plan.batches} batches an epoch, cached loader, augmentation, "
                 f"{trainer.data.num_workers} workers) with a raw step (same model, size, batch, precision) run "
                 "as each batch arrives: the median over steps of raw s / trainer s, where a trainer step runs "
                 "from one batch's arrival to the next's, raw step excluded; ci95 distribution-free"),
        "mfu": figure(
            "mfu", trainer_flops / peak, "ratio", achieved_gflops=round(trainer_flops, 2),
            raw_achieved_gflops=round(raw_flops, 2), raw_mfu=round(raw_flops / peak, 4),
            peak_matmul_gflops=round(peak, 2), peak_dtype=str(dtype).replace("torch.", ""),
            gflop_per_image=round(flops_per_image / 1e9, 3),
            gflop_by_op={k: round(v / 1e9, 3) for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])},
            matmul_reps=[round(x, 1) for x in reps["matmul_gflops"]],
            note="trainer FLOP/s (convolution and matmul FLOPs from FlopCounterMode) over the best "
                 "2048x2048 matmul in the same dtype, measured in the same loop"),
    }
    if with_naive:
        figures["_main_naive"] = {plan.main_model["model.name"]: {
            "fast_img_s": round(median(reps["trainer"]), 3), "naive_img_s": round(median(reps["naive"]), 3),
            "ratio": round(paired_ratio(reps["trainer"], reps["naive"]), 4),
            "fast": trainer.describe(), "naive": naive.describe(), "base_channels": spec.model.base_channels,
            "fast_reps": [round(x, 3) for x in reps["trainer"]], "naive_reps": [round(x, 3) for x in reps["naive"]],
        }}
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
