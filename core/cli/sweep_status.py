"""`segsweep sweep SWEEP --status`: the sweep's cells done / running / waiting / failed, per cell
(arm), and the worker or SLURM job holding each running trial; read from the sweep's storage
(--storage, the sweep file's optuna.storage, or <results>/sweeps/<name>/journal.log)."""
from __future__ import annotations

import argparse
from pathlib import Path


def show_status(args: argparse.Namespace) -> int:
    from ..sweeps import load_sweep
    from ..sweeps.status import status_lines, status_location, sweep_status

    sweep = load_sweep(args.sweep, args.overrides)
    status = sweep_status(sweep, status_location(sweep, args.storage, Path(args.results)))
    for line in status_lines(status):
        print(line)
    return 0
