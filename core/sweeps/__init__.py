"""Sweeps: a sweep file becomes Optuna trials (or a W&B sweep), each cell x seed exactly once.

    spec      the sweep file's schema and `load_sweep`
    cells     the resolved `Sweep`, its grid cells and their config hashes
    engines   `SWEEP_ENGINES` (optuna, wandb), `run_sweep`, `SweepOutcome`
    storage   journal/RDB storages, heartbeats, claims (the one place touching Optuna internals)
    study, trial, optuna_engine   the Optuna engine: the study, one trial, the workers
    wandb_engine                  the W&B engine and the translation to W&B's sweep config
    outputs   trials.csv, the console summary, disk usage
    slurm, launch_spec, launch_resume, launch_status   --launcher slurm (a job array via submitit),
              its `slurm:` block, resuming signalled trials, and `--status`

Importing this package does not import Optuna or W&B; running an engine does.
"""
from .cells import Sweep
from .engines import SWEEP_ENGINES, SweepOutcome, run_sweep
from .spec import load_sweep

__all__ = ["SWEEP_ENGINES", "Sweep", "SweepOutcome", "load_sweep", "run_sweep"]
