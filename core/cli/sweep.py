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

from ..names import names
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
    parser.add_argument("--launcher", choices=names("launcher"), default="local",
                        help="local: worker processes here (default); slurm: submit --workers array tasks and return")
    parser.add_argument("--slurm", action="append", default=[], metavar="KEY=VALUE",
                        help="a key of the sweep file's slurm: block (partition, time, cpus_per_task, gpus_per_task, "
                        "mem, account, qos, array_parallelism, signal_delay_s, setup, extra); repeatable")
    parser.add_argument("--status", action="store_true",
                        help="print the sweep's cells done/running/waiting/failed (and who runs what), then exit")
    parser.add_argument("--plan", action="store_true",
                        help="a sweep in rounds: print its design, runs, the power of each claim at the margin and "
                        "the expected time, then exit (trains one run to time it unless --run-s is given)")
    parser.add_argument("--sd", type=float, help="--plan: the seed sd of test Dice (default: measured from the "
                        "sweep's own complete rounds)")
    parser.add_argument("--run-s", type=float, help="--plan: seconds one run takes (default: time one run)")


def main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.plan:
        return show_plan(args)
    if args.sd is not None or args.run_s is not None:
        parser.error("--sd and --run-s go with --plan")
    if args.status:
        from .sweep_status import show_status

        return show_status(args)
    if args.slurm and args.launcher != "slurm":
        parser.error("--slurm KEY=VALUE needs --launcher slurm")
    outcome = run_sweep(args.sweep, args.overrides, workers=args.workers, storage=args.storage,
                        results=args.results, engine=args.engine, sweep_id=args.sweep_id,
                        launcher=args.launcher, slurm=args.slurm)
    return outcome.exit_code


def show_plan(args: argparse.Namespace) -> int:
    """`--plan`: one line of the design, its runs, power and time at a time."""
    import math
    from pathlib import Path

    from ..errors import SpecError
    from ..sweeps.forecast import measured_sd, plan_lines, time_one_run
    from ..sweeps.spec import load_sweep

    sweep = load_sweep(args.sweep, args.overrides)
    if sweep.design is None or not sweep.rounds:
        raise SpecError(f"{args.sweep}: --plan is for a sweep in rounds (a seed schedule or a fraction's `factors:`); "
                        "this one runs its cells x seeds once")
    results = Path(args.results)
    for name, value, low, high in (("--sd", args.sd, 0.0, 0.5), ("--run-s", args.run_s, 0.0, 1e7)):
        if value is not None and not (math.isfinite(value) and low < value <= high):
            raise SpecError(f"{name}: expected a number in ({low:g}, {high:g}], got {value!r}")
    sd, where = args.sd, "given"
    if sd is None:
        sd, where = measured_sd(sweep, results / "sweeps" / sweep.name), "measured on this sweep's complete rounds"
    if sd is None:
        raise SpecError(f"{args.sweep}: --plan needs the seed sd of test Dice: give --sd (e.g. --sd 0.01), or run "
                        "the sweep's first rounds so it can be measured")
    run_s = args.run_s if args.run_s is not None else time_one_run(sweep, results)
    for line in plan_lines(sweep, sd, run_s, args.workers, where):
        print(line)
    return 0
