"""Run a sweep file: an ablation grid (every cell x seed exactly once) or a random/TPE search.

    python scripts/sweep.py sweeps/quickstart_grid.yaml --workers 2
    python scripts/sweep.py sweeps/lr_wd_tpe.yaml train.epochs=4            # overrides apply to the experiment
    python scripts/sweep.py SWEEP --storage postgresql://user@host/db --workers 4   # on every machine
    python scripts/sweep.py SWEEP --engine wandb [--sweep-id ID]            # W&B's sweep server (needs network)

Rerunning the same command resumes: finished cells are skipped, trials of dead workers retried.
Results: <results>/sweeps/<name>/ (sweep.yaml, journal.log, trials.csv, runs/).
"""
from __future__ import annotations

import argparse

from _cli import Parser, run_main


def main() -> int:
    parser = Parser(prog="sweep.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", help="sweep spec (YAML)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides of the base experiment")
    parser.add_argument("--workers", type=int, default=1, help="worker processes on this machine (default 1)")
    parser.add_argument("--storage", help="Optuna storage: an RDB URL (postgresql://...) or a journal file; "
                        "default <results>/sweeps/<name>/journal.log")
    parser.add_argument("--results", default="results", help="results root (default: results)")
    parser.add_argument("--engine", choices=("optuna", "wandb"), default="optuna", help="default: optuna")
    parser.add_argument("--sweep-id", help="join this W&B sweep (--engine wandb)")
    args = parser.parse_intermixed_args()  # overrides may follow options

    from core.sweeps import run_sweep

    outcome = run_sweep(args.sweep, args.overrides, workers=args.workers, storage=args.storage,
                        results=args.results, engine=args.engine, sweep_id=args.sweep_id)
    return outcome.exit_code


if __name__ == "__main__":
    run_main(main)
