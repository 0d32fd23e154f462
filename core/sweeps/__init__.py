"""Sweeps: a sweep file becomes Optuna trials (or a W&B sweep), each cell x seed exactly once.

    spec, schedule, plan, claims, slurm_spec   the sweep file's schema, schedules, designs, claims, `slurm:`
    cells     the resolved `Sweep`, its grid cells and its planned trials (resolved once, lazily)
    contract  what engines, launchers and workers share (`FitFn`, `SweepOutcome`, `WorkerPlan`, ...)
    engines   `SWEEP_ENGINES` (optuna, wandb) and `run_sweep`
    launchers `LAUNCHERS` (local, slurm): where the Optuna engine's workers run
    prepare   what every launcher does first: storage, data, study, speed choices, sweep.yaml
    worker, trial   a worker claiming trials until the sweep is settled; one trial
    storage, running   the one storage factory; claims, heartbeats and stale trials
    study, resume, adaptive, status, outputs, forecast   the study; a signalled trial's resume;
              rounds; `--status`; trials.csv and the console; `--plan`
    optuna_engine, wandb_engine, slurm   the engines; the SLURM launcher (a job array via submitit)

Importing this package does not import Optuna or W&B; running an engine does.
"""
from .cells import Sweep
from .engines import SWEEP_ENGINES, SweepOutcome, run_sweep
from .spec import load_sweep

__all__ = ["SWEEP_ENGINES", "Sweep", "SweepOutcome", "load_sweep", "run_sweep"]
