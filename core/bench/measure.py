"""Measuring speed fairly: interleaved repetitions, paired ratios, figures with targets, each
group of figures in its own process, and what the machine and its memory say."""
from __future__ import annotations

import contextlib
import logging
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from . import FIGURES, TARGETS  # noqa: F401  (FIGURES: part of this module's API)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- machine & memory


def machine_info() -> dict[str, Any]:
    from ..train.device import cpu_has_fast_bf16, cpu_info

    cpu = cpu_info()
    relevant = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile", "avx_vnni")
    return {
        "cpu": cpu.model, "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "flags": {flag: flag in cpu.flag_set for flag in relevant},
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


def median_ci(values: list[float], confidence: float = 0.95) -> tuple[float, float] | None:
    """A distribution-free confidence interval for the median: the order statistics x(j), x(n+1-j)
    with the largest j for which Binomial(n, 1/2) puts at least `confidence` on j..n-j (None
    when n is too small for any; n >= 6 at 95%)."""
    xs, n = sorted(values), len(values)
    cdf, j = 0.0, 0  # cdf = P(B < j + 1): coverage of [x(j+1), x(n-j)] is 1 - 2 P(B <= j)
    for k in range(n // 2):
        cdf += math.comb(n, k) / 2**n
        if 1 - 2 * cdf < confidence:
            break
        j = k + 1
    return (xs[j - 1], xs[n - j]) if j else None


def step_pairs(pairs: list[tuple[float, float]], images: int) -> dict[str, Any]:
    """trainer_vs_raw from steps paired as they ran (`TrainerRun.epoch(raw)`): the median of the
    per-step ratios raw s / trainer s (= trainer img/s over raw img/s) with its 95% interval, and
    each side's img/s from its median step of `images` images; `step_pairs_s` keeps every pair."""
    ratios = [r / t for t, r in pairs]
    low_high = median_ci(ratios)
    return {"ratio": median(ratios), "ci95": None if low_high is None else [round(x, 4) for x in low_high],
            "pairs": len(pairs), "trainer_img_s": round(images / median([t for t, _ in pairs]), 3),
            "raw_img_s": round(images / median([r for _, r in pairs]), 3),
            "step_pairs_s": [[round(t, 4), round(r, 4)] for t, r in pairs]}


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


def isolated(group: Callable[..., dict[str, Any]], *args: Any,
             initializer: Callable[[], None] | None = None) -> dict[str, Any]:
    """Run one group of figures in a fresh interpreter, so each peak RSS is its own (torch
    import included) and nothing one group allocated slows or bloats the next. `initializer`
    runs first in that interpreter (the command passes its log handler)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    started = time.perf_counter()
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=initializer) as pool:
        figures = pool.submit(group, *args).result()
    log.warning(f"  {group.__name__}: {time.perf_counter() - started:.0f}s")
    return figures


def with_peak_rss(figures: dict[str, Any]) -> dict[str, Any]:
    """Stamp each figure (not already stamped) with this process's peak RSS so far."""
    peak = peak_rss_mb()
    for f in figures.values():
        if isinstance(f, dict) and "value" in f:
            f.setdefault("peak_rss_mb", peak)
    return figures

