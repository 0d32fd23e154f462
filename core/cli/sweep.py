"""Run a sweep file: an ablation grid (every cell x seed exactly once) or a random/TPE search.

    segsweep sweep sweeps/quickstart_grid.yaml --workers 2
    segsweep sweep sweeps/lr_wd_tpe.yaml train.epochs=4            # overrides apply to the experiment
    segsweep sweep SWEEP --storage postgresql://user@host/db --workers 4   # on every machine
    segsweep sweep SWEEP --engine wandb [--sweep-id ID]            # W&B's sweep server (needs network)

Rerunning the same command resumes: finished cells are skipped, trials of dead workers retried.
Results: <results>/sweeps/<name>/ (sweep.yaml, journal.log, trials.csv, runs/).
"""
from __future__ import annotations

import argparse

from ..sweeps import SWEEP_ENGINES, run_sweep


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sweep", help="sweep spec (YAML)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides of the base experiment")
    parser.add_argument("--workers", type=int, default=1, help="worker processes on this machine (default 1)")
    parser.add_argument("--storage", help="Optuna storage: an RDB URL (postgresql://...) or a journal file; "
                        "default <results>/sweeps/<name>/journal.log")
    parser.add_argument("--results", default="results", help="results root (default: results)")
    parser.add_argument("--engine", choices=SWEEP_ENGINES.names(), default="optuna", help="default: optuna")
    parser.add_argument("--sweep-id", help="join this W&B sweep (--engine wandb)")


def main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    outcome = run_sweep(args.sweep, args.overrides, workers=args.workers, storage=args.storage,
                        results=args.results, engine=args.engine, sweep_id=args.sweep_id)
    return outcome.exit_code
