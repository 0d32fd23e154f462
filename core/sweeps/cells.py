"""The resolved sweep: its base experiment, seeds and grid cells, and what each cell x seed
trains (`Sweep.trial_spec`) and hashes to (`cell_config_hash`)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from ..analysis.design import Design, design_to_dict
from ..analysis.estimate import ClaimTerm
from ..analysis.verdicts import Settings
from ..format import fmt_value
from ..spec import ExperimentSpec, arm_hash, flatten, config_hash_at, override_spec, seed_free_values, spec_to_dict

if TYPE_CHECKING:
    from .spec import ParameterSpec, SweepSpec

WANDB_JOB_TYPE_MAX = 64  # W&B refuses longer job types


def cell_label(overrides: Mapping[str, Any]) -> str:
    return ",".join(f"{k}={fmt_value(v)}" for k, v in overrides.items()) or "baseline"


def canonical_value(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


@dataclass(frozen=True)
class Cell:
    """One arm of a grid: its overrides of the base experiment (the seed is added per trial)."""

    label: str  # 'model.init=paper,model.dropout=0.1' or 'baseline'
    overrides: dict[str, Any]
    params: dict[str, Any]  # what Optuna records as the trial's params (the seed is a user attr)


@dataclass(frozen=True)
class PlannedTrial:
    """One cell x seed a sweep plans, resolved to the hashes its run will record."""

    cell: Cell
    seed: int
    round: int | None  # the design's round; None for a sweep of fixed seeds without rounds
    config_hash: str
    arm_hash: str


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
    design: Design | None = None  # a grid that settles claims or runs in rounds: its planned runs
    claims: tuple[ClaimTerm, ...] = ()  # its trained claims, as the analysis compares them
    _specs: dict = field(default_factory=dict, compare=False, repr=False)  # cell label -> (spec, identity values)
    _planned: dict = field(default_factory=dict, compare=False, repr=False)  # round -> its PlannedTrials

    @property
    def rounds(self) -> bool:
        """Whether the sweep runs in rounds analysed one after another (a seed schedule, a fraction)."""
        return self.design is not None and (self.design.kind == "fraction" or self.design.rounds_max > 1)

    def settings(self) -> Settings:
        """The analysis' settings from the sweep's schedule (defaults for a fixed design)."""
        schedule = self.spec.seeds if self.design is not None and self.design.kind == "cells" else self.spec.rounds
        if schedule is None or isinstance(schedule, tuple):
            return Settings()
        return Settings(margin=float(schedule.margin), alpha=float(schedule.alpha),
                        primary_share=float(schedule.primary_share))

    def cell_identity(self, cell: Cell) -> tuple[dict[str, Any], str]:
        """(the cell's hashed values less the seed, its arm hash), from one validation of its spec."""
        if cell.label not in self._specs:
            spec = override_spec(self.base, cell.overrides)
            self._specs[cell.label] = (seed_free_values(spec), arm_hash(spec))
        return self._specs[cell.label]

    def planned(self, round_: int | None = None) -> tuple[PlannedTrial, ...]:
        """The trials of one round of the design (None: every cell x seed of a sweep without
        rounds, seed-major), resolved once and kept: queueing, `--status`, the progress bar and
        the rounds driver all read these. Rounds are resolved only when asked for, so a
        schedule's maximum is never materialised."""
        if round_ not in self._planned:
            if round_ is None:
                pairs = [(cell, seed) for seed in self.seeds for cell in self.cells]
            else:
                assert self.design is not None, "rounds belong to a design"
                labels = {c.label: c for c in self.cells}
                pairs = [(labels[run.cell], run.seed) for run in self.design.runs(round_)]
            self._planned[round_] = tuple(PlannedTrial(cell, seed, round_, *cell_config_hash(self, cell, seed))
                                          for cell, seed in pairs)
        return self._planned[round_]

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
            **({"design": design_to_dict(self.design), "claim_terms": [c.to_dict() for c in self.claims],
                "settings": asdict(self.settings())} if self.design is not None else {}),
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
    """(config_hash, arm_hash) of one cell x seed, exactly as the trained run records them; the
    cell's spec is validated once, and the seed only changes the hashed values."""
    values, arm = sweep.cell_identity(cell)
    return config_hash_at(values, seed), arm


def base_values(sweep: Sweep) -> dict[str, Any]:
    """Every dotted key of the base experiment with its value (fills blank cells of trials.csv)."""
    return flatten(spec_to_dict(sweep.base))

