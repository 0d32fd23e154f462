"""Run a sweep file: an ablation grid (every cell x seed exactly once) or a random/TPE search.

    segsweep sweep sweeps/quickstart_grid.yaml --workers 2
    segsweep sweep sweeps/lr_wd_tpe.yaml train.epochs=4            # overrides apply to the experiment
    segsweep sweep SWEEP --storage postgresql://user@host/db --workers 4   # on every machine
    segsweep sweep SWEEP --engine wandb [--sweep-id ID]            # W&B's sweep server (needs network)
    segsweep sweep SWEEP --launcher slurm --workers 8 --storage postgresql://user@host/db \
        --slurm partition=gpu --slurm gpus_per_task=1 --slurm time=04:00:00   # a SLURM job array
    segsweep sweep SWEEP --status                                   # done/running/waiting/failed per cell

Rerunning the same command resumes: finished cells are skipped, trials of dead workers retried.
Results: <results>/sweeps/<name>/ (sweep.yaml, journal.log, trials.csv, runs/).
A grid with `seeds: {initial: [0, 1, 2], max: 12, step: 3, until: conclusive}` runs in rounds,
adding seeds only to arms whose comparisons are still open (sequential.json records the looks).
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
    parser.add_argument("--launcher", choices=("local", "slurm"), default="local",
                        help="local: worker processes here (default); slurm: submit --workers array tasks and return")
    parser.add_argument("--slurm", action="append", default=[], metavar="KEY=VALUE",
                        help="a key of the sweep file's slurm: block (partition, time, cpus_per_task, gpus_per_task, "
                        "mem, account, qos, array_parallelism, signal_delay_s, setup, extra); repeatable")
    parser.add_argument("--status", action="store_true",
                        help="print the sweep's cells done/running/waiting/failed (and who runs what), then exit")


def main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.status:
        from .sweep_status import show_status

        return show_status(args)
    if args.slurm and args.launcher != "slurm":
        parser.error("--slurm KEY=VALUE needs --launcher slurm")
    outcome = run_sweep(args.sweep, args.overrides, workers=args.workers, storage=args.storage,
                        results=args.results, engine=args.engine, sweep_id=args.sweep_id,
                        launcher=args.launcher, slurm=args.slurm)
    return outcome.exit_code
