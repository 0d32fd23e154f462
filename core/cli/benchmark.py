"""Speed of the training path against its ceiling, a naive baseline and a peer stack (issue 6).

    segsweep benchmark                 # full run, 20-24 min on a quiet 2-core AVX2-only AMD EPYC
    segsweep benchmark --quick         # smoke run, about 3 min there; no thresholds
    segsweep benchmark --out bench.json --cache-dir /tmp/segsweep-cache

Every ratio is measured side by side in one process: the two (or more) contenders alternate,
repetition by repetition (A B, then B A, ...), and each figure is the median of the paired
per-repetition ratios, so a neighbour's load that comes and goes hits both sides alike.
trainer_vs_raw pairs closer still: a raw step runs as each trainer batch arrives, and the figure
is the median of the per-step ratios, with a distribution-free 95% interval. The
JSON (default `results/benchmarks/<stamp>.json`) holds every repetition; the table printed at
the end is the one `BENCHMARKS.md` keeps. Data: the real 3-breed pets subset beside the repo
(`../shared/data/oxford-iiit-pet-mini`) when present, else the synthetic set. Nothing here
asserts a time: `tests/test_benchmark.py` only checks that `--quick` runs and what it writes.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

from ..bench import FIGURES  # names only: the measuring code is imported when the command runs

INTERMIXED = False  # no positional arguments: plain parsing, as before


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="small models and few repetitions (smoke test)")
    parser.add_argument("--out", type=Path, help="JSON file (default: results/benchmarks/<stamp>.json)")
    parser.add_argument("--cache-dir", type=Path,
                        help="writable folder for the data cache (and synthetic data); default results/cache")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's, one per core)")
    parser.add_argument("--reps", type=int,
                        help="repetitions of each paired figure (default: 5 full, 2 quick; the study's 8 full): "
                             "more give trainer_vs_raw more step pairs and a narrower interval")
    parser.add_argument("--only", nargs="+", choices=FIGURES,
                        help="measure only these figures (raw_step, trainer_vs_raw and mfu always run)")


def main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import torch

    from ..bench.contenders import FULL, QUICK, REPO
    from ..bench.report import table
    from ..bench.suite import default_out, run_benchmark
    from ..record import atomic_write_text
    from ..logs import install_log_handler

    os.environ.setdefault("WANDB_MODE", "disabled")
    if args.threads:
        if args.threads < 1:
            parser.error("--threads must be at least 1")
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the measuring processes inherit it
        torch.set_num_threads(args.threads)
    if args.reps is not None and args.reps < 2:
        parser.error(f"--reps: expected an integer of at least 2 (repetitions are paired A B, B A), got {args.reps}")
    plan = QUICK if args.quick else FULL
    if args.reps is not None:
        plan = dataclasses.replace(plan, reps=args.reps, study_reps=args.reps)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.out or default_out(stamp, args.quick)
    out.parent.mkdir(parents=True, exist_ok=True)
    cache_dir = (args.cache_dir or REPO / "results" / "cache").resolve()
    cache_dir.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python scripts/benchmark.py"] + (["--quick"] if args.quick else [])
                       + ([f"--threads {args.threads}"] if args.threads else [])
                       + ([f"--reps {args.reps}"] if args.reps is not None else [])
                       + (["--only", *args.only] if args.only else []))
    report = run_benchmark(plan, cache_dir, quick=args.quick, stamp=stamp, command=command,
                           only=args.only, initializer=install_log_handler)
    atomic_write_text(out, json.dumps(report, indent=2) + "\n")
    print(table(report["figures"]))
    print(f"\n{report['command']}: {report['total_s']:.0f}s, load average {report['load_average_before']} "
          f"-> {report['load_average_after']}; wrote {out}")
    return 0
