"""Trials a scheduler interrupts: who holds a running trial (host:pid, SLURM job), and a trial
stopped by a signal queued again to continue from its `last.pt` in the same run folder."""
from __future__ import annotations

import math
import os
import socket
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from .running import trial_id

RESUMES_ATTR = "segsweep:resumes"  # system attr of a resume copy: the number of the trial it continues
IDENTITY_ATTRS = ("config_hash", "arm_hash", "seed", "cell", "overrides", "run_dir")


def slurm_job_id(environ: Any = None) -> str | None:
    """This process's SLURM job as `squeue`/`scancel` name it (ARRAYJOB_TASK in an array)."""
    env = os.environ if environ is None else environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID") or None


def worker_attrs() -> dict[str, Any]:
    """What a worker records on the trial it claims: `worker` (host:pid) and, under SLURM, `slurm_job`."""
    attrs: dict[str, Any] = {"worker": f"{socket.gethostname()}:{os.getpid()}"}
    job = slurm_job_id()
    if job:
        attrs["slurm_job"] = job
    return attrs


def resumes(trial: FrozenTrial) -> int | None:
    """The number of the trial `trial` continues, if it is a resume copy."""
    number = trial.system_attrs.get(RESUMES_ATTR)
    return int(number) if number is not None else None


def resume_dir(trial: optuna.Trial) -> Path | None:
    """The run folder a claimed trial continues (None: a fresh run); it must still hold last.pt."""
    where = trial.user_attrs.get("resume_from")
    if where and (Path(where) / "checkpoints" / "last.pt").is_file():
        return Path(where)
    return None


def reported_before(run_dir: Path, metric: str) -> list[float]:
    """The metric's values in `run_dir`'s metrics.csv up to its last.pt's epoch: what a resumed run
    reported before (they count for its best); metrics.csv may be one epoch ahead of last.pt."""
    from ..checkpoint import checkpoint_epoch
    from ..record import read_metrics

    upto = checkpoint_epoch(run_dir / "checkpoints" / "last.pt")
    if upto is None:
        return []
    values = [row.get(metric) for row in read_metrics(run_dir) if int(row["epoch"]) <= upto]
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def queue_resume(study: optuna.Study, storage: BaseStorage, trial: optuna.Trial, run_dir: Path | None) -> bool:
    """Queue a copy of a signalled trial that continues `run_dir` from its last.pt; False when
    there is nothing to continue (no last.pt: the next run of the command retries it).

    Called before the trial is failed: the WAITING copy carries `resume_from` (the run folder)
    and `RESUMES_ATTR` (the trial's number), so whichever worker claims it runs `fit(...,
    resume=True)` and the finished run equals an uninterrupted one. `duplicate_of` lets the copy
    run although the original is RUNNING for a moment more (it stopped training already).
    """
    if run_dir is None or not (run_dir / "checkpoints" / "last.pt").is_file():
        return False
    frozen = storage.get_trial(trial_id(trial))
    attrs = {k: frozen.user_attrs[k] for k in IDENTITY_ATTRS if k in frozen.user_attrs}
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.WAITING, params=frozen.params, distributions=frozen.distributions,
        user_attrs={**attrs, "resume_from": str(run_dir)}, system_attrs={RESUMES_ATTR: frozen.number},
        intermediate_values=dict(frozen.intermediate_values)))
    return True
