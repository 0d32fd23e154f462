"""The resolved sweep: its base experiment, seeds and grid cells, and what each cell x seed
trains (`Sweep.trial_spec`) and hashes to (`cell_config_hash`)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from ..spec import ExperimentSpec, arm_hash, config_hash, flatten, override_spec, spec_to_dict

if TYPE_CHECKING:
    from .spec import ParameterSpec, SweepSpec

WANDB_JOB_TYPE_MAX = 64  # W&B refuses longer job types


@dataclass(frozen=True)
class Cell:
    """One arm of a grid: its overrides of the base experiment (the seed is added per trial)."""

    label: str  # 'model.init=paper,model.dropout=0.1' or 'baseline'
    overrides: dict[str, Any]
    params: dict[str, Any]  # what Optuna records as the trial's params (the seed is a user attr)


@dataclass(frozen=True)
class Sweep:
    path: Path
    spec: SweepSpec
    name: str
    base: ExperimentSpec  # the experiment with command-line overrides and constant parameters applied
    overrides: tuple[str, ...]  # the command-line overrides, as given
    seeds: tuple[int, ...]
    cells: tuple[Cell, ...]  # grid only; empty for random/bayes
    hash: str  # identity of what the sweep runs: a study of the same name must match it

    @property
    def method(self) -> str:
        return self.spec.method

    @property
    def searched(self) -> dict[str, ParameterSpec]:
        """The parameters random/bayes sample (constants are already in `base`)."""
        return {k: p for k, p in self.spec.parameters.items() if p.kind != "constant"}

    def trial_spec(self, overrides: Mapping[str, Any], seed: int, run_name: str, label: str) -> ExperimentSpec:
        """The experiment one trial trains: base + overrides + seed, tracked in the sweep's W&B group."""
        return override_spec(self.base, {
            **overrides, "seed": seed, "name": run_name,
            "tracking.wandb.group": self.name, "tracking.wandb.job_type": job_type(label),
        })

    def resolved(self, storage: str | None = None) -> dict[str, Any]:
        """What `sweep.yaml` records: the spec as written plus everything it resolved to."""
        tree = self.spec.model_dump(mode="json", exclude_none=True)
        if storage is not None:
            tree["optuna"]["storage"] = storage
        return {
            **tree, "name": self.name, "sweep_file": str(self.path),
            "overrides": list(self.overrides), "seeds": list(self.seeds), "sweep_hash": self.hash,
            "cells": [{"label": c.label, "overrides": c.overrides} for c in self.cells],
            "experiment_spec": spec_to_dict(self.base),
        }


def job_type(label: str) -> str:
    """W&B's job_type for an arm: its label, shortened with a hash suffix when too long."""
    if len(label) <= WANDB_JOB_TYPE_MAX:
        return label
    digest = hashlib.sha256(label.encode()).hexdigest()[:6]
    return f"{label[: WANDB_JOB_TYPE_MAX - 7]}~{digest}"


def arm_choices(sweep: Sweep) -> dict[str, tuple[Any, ...]]:
    """Categorical choices of each grid param (as Optuna records them); the seed is not one."""
    choices: dict[str, list[Any]] = {}
    for cell in sweep.cells:
        for key, value in cell.params.items():
            bucket = choices.setdefault(key, [])
            if value not in bucket:
                bucket.append(value)
    return {k: tuple(v) for k, v in choices.items()}


def cell_config_hash(sweep: Sweep, cell: Cell, seed: int) -> tuple[str, str]:
    """(config_hash, arm_hash) of one cell x seed, exactly as the trained run records them."""
    spec = override_spec(sweep.base, {**cell.overrides, "seed": seed})
    return config_hash(spec), arm_hash(spec)


def base_values(sweep: Sweep) -> dict[str, Any]:
    """Every dotted key of the base experiment with its value (fills blank cells of trials.csv)."""
    return flatten(spec_to_dict(sweep.base))

