"""Run a sweep file: an ablation grid (every cell x seed exactly once) or a random/TPE search.

    python scripts/sweep.py sweeps/quickstart_grid.yaml --workers 2
    python scripts/sweep.py sweeps/lr_wd_tpe.yaml train.epochs=4            # overrides apply to the experiment
    python scripts/sweep.py SWEEP --storage postgresql://user@host/db --workers 4   # on every machine
    python scripts/sweep.py SWEEP --engine wandb [--sweep-id ID]            # W&B's sweep server (needs network)

Rerunning the same command resumes: finished cells are skipped, trials of dead workers retried.
Results: <results>/sweeps/<name>/ (sweep.yaml, journal.log, trials.csv, runs/).
"""
import sys

from segsweep.cli import main

if __name__ == "__main__":
    main(["sweep", *sys.argv[1:]])
