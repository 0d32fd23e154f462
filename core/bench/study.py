"""The study workload: the committed claims study's recipe (experiments/pets_mini_claims.yaml: a
width-8 UNet at 128 px, batch 8, one thread a run) measured as a sweep runs it, two workers side
by side, each timing its contenders in turns. Figures: raw step, trainer vs raw, fast vs naive,
MFU, the overhead share of a whole run (start-up, validation, checkpoints, test pass, records),
and `torch.compile` with a warm compile cache against eager.

Each worker process reports its own paired ratios; a figure's value is the lower of the two
workers' (the target must hold for both), and both are kept in the JSON.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable

import torch

from ..spec import ExperimentSpec, load_spec, override_spec
from .contenders import NAIVE, PETS_MINI, REPO, Plan, RawStep, TrainerRun, matmul_peak, training_flops
from .measure import figure, interleaved, median, paired_ratio, peak_rss_mb, step_pairs

RECIPE = REPO / "experiments" / "pets_mini_claims.yaml"
WORKERS = 2  # as the claims study ran: `segsweep sweep ... --workers 2` on two cores


def study_spec(cache_dir: Path, **overrides: Any) -> ExperimentSpec:
    """The claims study's recipe as committed, on the pets subset (else synthetic data), one thread."""
    data = ({"data.root": str(PETS_MINI)} if PETS_MINI.is_dir() else
            {"data.name": "synthetic", "data.root": str(cache_dir / "synthetic")})
    return load_spec(RECIPE, {**data, "data.cache_dir": str(cache_dir), "tracking.wandb.mode": "disabled",
                              "tracking.tensorboard": False, "train.threads": 1, **overrides})


def side_by_side(task: Callable[..., dict[str, Any]], *args: Any, initializer: Callable[[], None] | None = None,
                 workers: int = WORKERS) -> list[dict[str, Any]]:
    """`task(worker, *args)` in `workers` fresh processes at once (one torch thread each), as
    sweep workers share the machine; returns each worker's result."""
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=initializer) as pool:
        futures = [pool.submit(task, worker, *args) for worker in range(workers)]
        return [f.result() for f in futures]


def _training_worker(worker: int, cache_dir: Path, batches: int, reps: int, barrier: Any) -> dict[str, Any]:
    """One worker's figures, in two phases that both workers start together (`barrier`): the
    trainer with a raw step beside each of its steps (trainer vs raw), then the trainer and the
    naive trainer in turns, with a matmul (fast vs naive, MFU's peak). Apart, because the naive
    trainer's loader process would be a third process on the two cores during the first."""
    torch.set_num_threads(1)
    spec = study_spec(cache_dir)
    spec = override_spec(spec, {"data.limit_train": spec.train.batch_size * batches})
    with contextlib.redirect_stdout(sys.stderr):
        raw, trainer, naive = RawStep(spec), TrainerRun(spec), TrainerRun(override_spec(spec, NAIVE))
        raw.run(1)
        trainer.epoch()
        naive.epoch()
        barrier.wait()
        for _ in range(reps):
            trainer.epoch(raw)
        barrier.wait()
        times = interleaved({"trainer": trainer.epoch, "naive": naive.epoch,
                             "matmul_gflops": lambda: matmul_peak(torch.float32, n=1024)}, reps)
    flops, _ = training_flops(spec)
    return {"worker": worker, "reps": times, "pairs": trainer.pairs, "batch_size": spec.train.batch_size,
            "flops_per_image": flops, "fast": trainer.describe(), "naive": naive.describe(),
            "raw_channels_last": raw.channels_last, "peak_rss_mb": peak_rss_mb()}


def _run_worker(worker: int, cache_dir: Path, epochs: int | None) -> dict[str, Any]:
    """One whole run of the recipe (its epochs, validation, checkpoints, test pass, records)."""
    from .trial import _timed_trial

    torch.set_num_threads(1)
    spec = study_spec(cache_dir, **{"name": f"study-run-{worker}", "seed": worker,
                                    **({"train.epochs": epochs} if epochs else {})})
    with contextlib.redirect_stdout(sys.stderr):
        timed = _timed_trial(spec)
    return {"worker": worker, **timed, "peak_rss_mb": peak_rss_mb()}


def _compile_worker(worker: int, cache_dir: Path, inductor_cache: str, batches: int, reps: int) -> dict[str, Any]:
    """Compile the recipe's model with the compile cache at `inductor_cache` (the first process
    fills it, the second finds it warm), then time compiled and eager training steps in turns."""
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = inductor_cache
    torch.set_num_threads(1)
    spec = study_spec(cache_dir)
    eager = RawStep(spec)
    compiled = RawStep(spec)
    started = time.perf_counter()
    compiled.model = torch.compile(compiled.model)
    compiled.run(1)  # the compile happens at the first call
    compile_s = time.perf_counter() - started
    eager.run(1)
    times = interleaved({"compiled": lambda: compiled.run(batches), "eager": lambda: eager.run(batches)}, reps)
    return {"worker": worker, "compile_s": round(compile_s, 2), "reps": times, "peak_rss_mb": peak_rss_mb()}


def _worker_figures(r: dict[str, Any]) -> dict[str, Any]:
    """One worker's figures: trainer vs raw from its step pairs, fast vs naive from its epochs."""
    reps, paired = r["reps"], step_pairs(r["pairs"], r["batch_size"])
    return {
        "worker": r["worker"], "raw_img_s": paired["raw_img_s"], "trainer_img_s": paired["trainer_img_s"],
        "naive_img_s": round(median(reps["naive"]), 3),
        "trainer_vs_raw": round(paired["ratio"], 4), "trainer_vs_raw_ci95": paired["ci95"], "pairs": paired["pairs"],
        "fast_vs_naive": round(paired_ratio(reps["trainer"], reps["naive"]), 4),
        "mfu": round(r["flops_per_image"] * paired["trainer_img_s"] / 1e9 / max(reps["matmul_gflops"]), 4),
        "fast": r["fast"], "naive": r["naive"], "reps": {k: [round(x, 3) for x in v] for k, v in reps.items()},
        "step_pairs_s": paired["step_pairs_s"], "peak_rss_mb": r["peak_rss_mb"],
    }


def bench_study(plan: Plan, cache_dir: Path, initializer: Callable[[], None] | None = None) -> dict[str, Any]:
    """The study workload's figures (see the module's docstring); `plan.study_*` sizes them."""
    spec = study_spec(cache_dir)
    batches, reps = plan.study_batches, plan.study_reps
    with multiprocessing.Manager() as manager:
        barrier = manager.Barrier(WORKERS)
        results = side_by_side(_training_worker, cache_dir, batches, reps, barrier, initializer=initializer)
    per = [_worker_figures(r) for r in results]
    rss = max(p["peak_rss_mb"] or 0 for p in per)
    where = (f"{spec.model.name} width {spec.model.base_channels}, {spec.data.image_size} px, batch "
             f"{spec.train.batch_size}, 1 thread, {WORKERS} workers side by side")
    lowest = {key: min(p[key] for p in per) for key in ("raw_img_s", "trainer_vs_raw", "fast_vs_naive", "mfu")}
    figures = {
        "study_raw_step": figure("study_raw_step", lowest["raw_img_s"], "img/s per worker", workers=per,
                                 peak_rss_mb=rss, note=f"{where}: the model alone on tensors in memory"),
        "study_trainer_vs_raw": figure("study_trainer_vs_raw", lowest["trainer_vs_raw"], "ratio", peak_rss_mb=rss,
                                       note=f"{where}; the lower of the workers' step-paired ratios (a raw step "
                                       "beside each trainer step, as in trainer_vs_raw), each with its 95% interval"),
        "study_fast_vs_naive": figure("study_fast_vs_naive", lowest["fast_vs_naive"], "ratio", peak_rss_mb=rss,
                                      note=f"{where}; defaults (cache, channels_last auto) vs uncached fp32 NCHW"),
        "study_mfu": figure("study_mfu", lowest["mfu"], "ratio", peak_rss_mb=rss,
                            note=f"{where}; trainer FLOP/s over the best 1024x1024 fp32 matmul of the same worker"),
    }
    runs = side_by_side(_run_worker, cache_dir, plan.study_epochs, initializer=initializer)
    figures["study_run_overhead"] = figure(
        "study_run_overhead", max(r["share"] for r in runs), "share of a run's wall time", runs=runs,
        peak_rss_mb=max(r["peak_rss_mb"] or 0 for r in runs),
        note=f"{where}: one whole run of the recipe ({plan.study_epochs or spec.train.epochs} epochs) per worker, "
             "overhead = wall - training passes; the higher share")
    if not plan.study_compile:
        figures["study_compile"] = {"value": None, "skipped": True, "note": "not measured with --quick (a cold "
                                    "compile takes about a minute on 2 cores)"}
        return figures
    with tempfile.TemporaryDirectory(prefix="segsweep-inductor-") as inductor:
        cold = side_by_side(_compile_worker, cache_dir, inductor, batches, reps, initializer=initializer, workers=1)
        warm = side_by_side(_compile_worker, cache_dir, inductor, batches, reps, initializer=initializer)
    ratios = [paired_ratio(w["reps"]["compiled"], w["reps"]["eager"]) for w in warm]
    figures["study_compile"] = figure(
        "study_compile", min(ratios), "ratio (compiled / eager img/s)",
        peak_rss_mb=max(w["peak_rss_mb"] or 0 for w in warm),
        cold_compile_s=cold[0]["compile_s"], warm_compile_s=[w["compile_s"] for w in warm],
        workers=[{"worker": w["worker"], "ratio": round(r, 4), "reps": w["reps"]} for w, r in zip(warm, ratios)],
        note=f"{where}: training steps of torch.compile(model) (inductor) vs eager in turns, after the "
             "compile cache was filled by a first process (cold_compile_s) and found warm (warm_compile_s)")
    return figures
