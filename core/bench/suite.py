"""The whole benchmark: each group of figures in its own process, in order, into one report."""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from ..record import git_sha
from .contenders import PETS_MINI, REPO, Plan
from . import FIGURES, STUDY_FIGURES
from .figures import bench_fast_vs_naive, bench_loader, bench_memory, bench_training
from .measure import isolated, load_average, machine_info
from .peer import bench_peer
from .study import bench_study
from .trial import bench_trial

log = logging.getLogger(__name__)


def default_out(stamp: str, quick: bool) -> Path:
    """Where a run's JSON goes unless told: results/benchmarks/<stamp>[-quick].json."""
    return REPO / "results" / "benchmarks" / f"{stamp}{'-quick' if quick else ''}.json"


def run_benchmark(plan: Plan, cache_dir: Path, *, quick: bool, stamp: str, command: str,
                  only: Sequence[str] | None = None,
                  initializer: Callable[[], None] | None = None) -> dict[str, Any]:
    """Measure every figure (or `only` these; raw_step, trainer_vs_raw and mfu always run) and
    return the report: machine, load before and after, plan, and {figure name: figure}."""
    wanted = set(only or FIGURES)
    report: dict[str, Any] = {
        "schema": 1, "stamp": stamp, "quick": quick, "command": command, "code": git_sha(),
        "machine": machine_info(), "load_average_before": load_average(),
        "data": "oxford-iiit-pet-mini" if PETS_MINI.is_dir() else "synthetic", "plan": dataclasses.asdict(plan),
    }
    log.warning(f"benchmark ({'quick' if quick else 'full'}) on {report['machine']['cpu']}, "
                f"{report['machine']['torch_threads']} threads, load {report['load_average_before']}")
    started = time.perf_counter()

    def measure(group: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
        return isolated(group, *args, initializer=initializer)

    results = measure(bench_training, plan, cache_dir, "fast_vs_naive" in wanted)  # the others compare with it
    if "fast_vs_naive" in wanted:
        results.update(measure(bench_fast_vs_naive, plan, cache_dir, results.pop("_main_naive")))
    if "cache_vs_uncached" in wanted:
        results.update(measure(bench_loader, plan, cache_dir, results["trainer_vs_raw"]["trainer_img_s"]))
    if "memory" in wanted:
        results.update(measure(bench_memory, plan, cache_dir))
    if "peer_ratio" in wanted:
        results.update(measure(bench_peer, plan, cache_dir))
    if wanted & {"trial_overhead", "study_trial_overhead"}:
        results.update(measure(bench_trial, plan, cache_dir))
    if wanted & set(STUDY_FIGURES):  # its own worker processes, two at a time
        started_study = time.perf_counter()
        results.update(bench_study(plan, cache_dir, initializer))
        log.warning(f"  bench_study: {time.perf_counter() - started_study:.0f}s")
    report.update(
        load_average_after=load_average(), total_s=round(time.perf_counter() - started, 1),
        figures={name: results.get(name, {"value": None, "skipped": True, "note": "not measured (--only)"})
                 for name in FIGURES},
    )
    return report
