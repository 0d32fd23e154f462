"""Sweep specs: W&B's sweep vocabulary plus `experiment`, `seeds`, `arms`, `run_cap` and `optuna:`,
validated as strictly as experiment specs and resolved against the base experiment (`load_sweep`)
into a `Sweep` and its grid cells. Both engines apply parameters with `override_spec`.
"""
from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Sequence, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, ValidationError, model_validator

from ..errors import SpecError, SpecFieldError, user_parts, validation_problem
from ..spec import (
    SEED_MAX, ExperimentSpec, identity_tree, load_spec, override_spec, read_yaml, short_hash, typed_overrides,
)
from .cells import Cell, Sweep, canonical_value as _canonical, cell_label  # noqa: F401  (cell_label: re-exported)
from .claims import ClaimSpec, check_claim_ids, implicit_claims, resolve_claims
from .plan import (
    check_key as _check_key, check_value as _check_value, cells_design, fraction_design, grid_cells,
    refuse_identical_arms,
)
from .slurm_spec import SlurmSpec
from .schedule import RoundSchedule, SeedSchedule, parse_schedule

# A parameter value: what a YAML scalar can be (Optuna's categorical choices are exactly these).
Scalar = Union[StrictBool, StrictInt, StrictFloat, str, None]

# W&B distributions the Optuna engine can sample faithfully (W&B's normal/q_log families are not).
DISTRIBUTIONS = ("constant", "categorical", "int_uniform", "uniform", "q_uniform", "log_uniform_values", "log_uniform")
WANDB_ONLY = ("normal", "q_normal", "log_normal", "q_log_normal", "q_log_uniform", "q_log_uniform_values",
              "inv_log_uniform", "inv_log_uniform_values", "beta", "q_beta")
# Metrics the trainer reports every epoch (a metrics.csv column), so pruning can see them.
EPOCH_METRICS = ("val/dice", "val/dice_global", "val/iou", "val/dice_soft_batch8", "val/loss", "train/loss")
WANDB_JOB_TYPE_MAX = 64  # W&B refuses longer job types

class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ParameterSpec(_Section):
    """One W&B parameter: `value`, `values`, or `min`/`max` with a `distribution` (and `q`)."""

    value: Scalar = None  # constant (whether it was given is read from model_fields_set)
    values: tuple[Scalar, ...] | None = Field(None, min_length=1)
    min: StrictInt | StrictFloat | None = None
    max: StrictInt | StrictFloat | None = None
    distribution: str | None = None
    q: StrictInt | StrictFloat | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _one_form(self) -> "ParameterSpec":
        has_value, has_values = "value" in self.model_fields_set, self.values is not None
        has_range = self.min is not None or self.max is not None
        if has_value + has_values + has_range != 1:
            raise ValueError("give exactly one of `value`, `values`, or `min` and `max`")
        dist = self.kind
        if dist in WANDB_ONLY:
            raise ValueError(f"distribution {dist} is W&B-only (the Optuna engine cannot sample it); "
                             f"valid: {', '.join(DISTRIBUTIONS)}")
        if dist not in DISTRIBUTIONS:
            close = difflib.get_close_matches(str(dist), DISTRIBUTIONS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(f"distribution {dist!r} is not supported; {hint}valid: {', '.join(DISTRIBUTIONS)}")
        if has_values and len(set(map(_canonical, self.values))) != len(self.values):
            raise ValueError(f"values has duplicates: {list(self.values)}")
        wanted = {"constant": has_value, "categorical": has_values}.get(dist, has_range)
        if not wanted:
            form = {"constant": "`value`", "categorical": "`values`"}.get(dist, "`min` and `max`")
            raise ValueError(f"distribution {dist} takes {form}")
        if has_range:
            if self.min is None or self.max is None:
                raise ValueError("a range needs both `min` and `max`")
            if not self.min < self.max:
                raise ValueError(f"min must be below max (got min {self.min}, max {self.max})")
            if dist == "int_uniform" and not (isinstance(self.min, int) and isinstance(self.max, int)):
                raise ValueError("int_uniform needs integer min and max")
            if dist == "log_uniform_values" and self.min <= 0:
                raise ValueError(f"log_uniform_values needs min > 0 (got {self.min})")
        if self.q is not None and dist != "q_uniform":
            raise ValueError("`q` is only used with distribution q_uniform")
        return self

    @property
    def kind(self) -> str:
        """The distribution, inferred as W&B does when it is not given."""
        if self.distribution is not None:
            return self.distribution
        if "value" in self.model_fields_set:
            return "constant"
        if self.values is not None:
            return "categorical"
        both_int = isinstance(self.min, int) and isinstance(self.max, int)
        return "int_uniform" if both_int else "uniform"

    def bounds(self) -> tuple[float, float]:
        """The (low, high) of the sampled values (`log_uniform` takes exponents of e)."""
        assert self.min is not None and self.max is not None
        if self.kind == "log_uniform":
            return math.exp(self.min), math.exp(self.max)
        return self.min, self.max


class MetricSpec(_Section):
    name: Literal[EPOCH_METRICS] = "val/dice"  # type: ignore[valid-type]
    goal: Literal["maximize", "minimize"] = "maximize"


class EarlyTerminateSpec(_Section):
    """W&B's hyperband early termination; the Optuna engine maps it to HyperbandPruner."""

    type: Literal["hyperband"] = "hyperband"
    min_iter: int = Field(1, ge=1)  # epochs before the first pruning decision
    max_iter: int | None = Field(None, ge=1)  # None: the experiment's train.epochs
    eta: int = Field(3, ge=2)  # reduction factor


class OptunaSpec(_Section):
    sampler_seed: int = Field(0, ge=0, le=SEED_MAX)  # random/bayes: each trial's sampler is seeded from (this, trial number)
    pruner: Literal["none", "median", "hyperband", "successive_halving"] | None = None  # None: from early_terminate
    prune_grid: bool = False  # grid cells are compared across seeds: pruning them biases that
    n_startup_trials: int | None = Field(None, ge=0)  # TPE's random start and the median pruner's; None: Optuna's
    storage: str | None = None  # RDB URL or journal file; None: <sweep folder>/journal.log
    heartbeat_interval: int = Field(10, ge=1)  # seconds between a running trial's heartbeats
    grace_period: int = Field(60, ge=2)  # seconds without a heartbeat before a trial is stale and retried
    max_retry: int = Field(3, ge=0)  # stale retries of one trial per run of the command


class FractionSpec(_Section):
    """`fraction: {runs: 16}` (generators from the minimum-aberration table) or
    `fraction: {generators: [E=ABC, F=BCD]}` (letters in the order of `factors:`)."""

    runs: int | None = Field(None, ge=4, le=4096)
    generators: tuple[str, ...] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _one_form(self) -> "FractionSpec":
        if (self.runs is None) == (self.generators is None):
            raise ValueError("give exactly one of `runs` (a minimum-aberration fraction) or `generators`")
        return self


class SweepSpec(_Section):
    name: str | None = Field(None, min_length=1, pattern=r"^[A-Za-z0-9_.+-]+$")  # None: the file's stem
    description: str | None = None
    experiment: str = Field(min_length=1)  # base experiment spec, relative to this file
    method: Literal["grid", "random", "bayes"]
    metric: MetricSpec = MetricSpec()
    parameters: dict[str, ParameterSpec] = {}
    arms: tuple[dict[str, Scalar], ...] | None = Field(None, min_length=1)  # grid only: one-factor-at-a-time
    # None: the experiment's seed; a mapping: a seed schedule (adaptive seeds, grid only)
    seeds: Annotated[tuple[int, ...], Field(min_length=1)] | SeedSchedule | None = None
    run_cap: int | None = Field(None, ge=1)  # random/bayes: trials in total, across workers and machines
    early_terminate: EarlyTerminateSpec | None = None
    keep_last: bool = False  # keep every trial's checkpoints/last.pt (best.pt is always kept)
    claims: tuple[ClaimSpec, ...] | None = None  # claims the arms settle: the report opens with them
    # A two-level (fractional) factorial: key -> [the recipe's level, the other level]; `arms` are
    # then side arms beside it, each paired by seed with a recipe run
    factors: dict[str, tuple[Scalar, Scalar]] | None = Field(None, min_length=2)
    fraction: FractionSpec | None = None  # None: the full factorial of `factors`
    rounds: RoundSchedule | None = None  # a fraction's rounds (default: 2, analysed once)
    optuna: OptunaSpec = OptunaSpec()
    slurm: SlurmSpec | None = None  # --launcher slurm: the workers' job array (launch_spec.py)

    @model_validator(mode="before")
    @classmethod
    def _schedules(cls, tree: Any) -> Any:
        if not isinstance(tree, Mapping):
            return tree
        out = dict(tree)
        for key, model in (("seeds", SeedSchedule), ("rounds", RoundSchedule)):
            if isinstance(tree.get(key), Mapping):
                out[key] = parse_schedule(tree[key], key, model)  # a problem: SpecFieldError naming its key
        return out

    @model_validator(mode="after")
    def _method_rules(self) -> "SweepSpec":
        self._fraction_rules()
        if isinstance(self.seeds, SeedSchedule):
            if self.method != "grid" or self.optuna.prune_grid:
                raise SpecFieldError("seeds", "a seed schedule adds seeds to grid cells: use method: grid without "
                                "optuna.prune_grid (a pruned trial has no test Dice to analyse)")
        elif self.seeds is not None:
            if any(not 0 <= s <= SEED_MAX for s in self.seeds) or len(set(self.seeds)) != len(self.seeds):
                raise SpecFieldError("seeds", f"expected distinct integers in 0..{SEED_MAX} (what the random generators "
                                f"take), got {list(self.seeds)}")
        sampled = [k for k, p in self.parameters.items() if p.kind not in ("constant", "categorical")]
        if self.method == "grid":
            if sampled:
                raise SpecFieldError(f"parameters.{sampled[0]}", "grid enumerates `values`; a range needs method random or bayes")
            if self.run_cap is not None:
                raise SpecFieldError("run_cap", "grid runs every cell x seed exactly once; run_cap is for random/bayes")
        else:
            if self.arms is not None:
                raise SpecFieldError("arms", "arms are cells of a grid; use method: grid")
            if self.run_cap is None:
                raise SpecFieldError("run_cap", f"method {self.method} needs run_cap (the number of trials)")
            if self.seeds is not None and len(self.seeds) > 1:
                raise SpecFieldError("seeds", f"method {self.method} samples one configuration per trial: give one seed "
                                "(replicates across seeds are for grid sweeps)")
            if not any(p.kind != "constant" for p in self.parameters.values()):
                raise SpecFieldError("parameters", f"method {self.method} needs at least one parameter to search")
        pruner = self.optuna.pruner
        if self.early_terminate is not None and pruner not in (None, "hyperband"):
            raise SpecFieldError("optuna.pruner", f"early_terminate asks for hyperband but optuna.pruner is {pruner}; "
                            "keep one of them")
        return self

    def _fraction_rules(self) -> None:
        if self.factors is None:
            for key in ("fraction", "rounds"):
                if getattr(self, key) is not None:
                    raise SpecFieldError(key, f"`{key}:` belongs to a fraction: give `factors:` (key: [recipe level, "
                                    "other level]) too")
            return
        if self.method != "grid" or self.optuna.prune_grid:
            raise SpecFieldError("factors", "a fraction is a grid: use method: grid without optuna.prune_grid")
        if self.seeds is not None:
            raise SpecFieldError("seeds", "every run of a fraction gets its own seed: set `rounds.seed` (the first "
                            "run's) and the rounds in `rounds:`, not `seeds:`")
        grid = [k for k, p in self.parameters.items() if p.kind != "constant"]
        if grid:
            raise SpecFieldError(f"parameters.{grid[0]}", "a fraction varies only its `factors:` (and side `arms:`); "
                            "make this a factor with two levels, or a constant")
        for key, levels in self.factors.items():
            if _canonical(levels[0]) == _canonical(levels[1]):
                raise SpecFieldError(f"factors.{key}", f"the two levels must differ (got {list(levels)})")
        for i, arm in enumerate(self.arms or ()):
            if not arm:
                raise SpecFieldError(f"arms[{i}]", "the recipe runs in every round of a fraction; list only side arms")
            shared = [k for k in arm if k in self.factors]
            if shared:
                raise SpecFieldError(f"arms[{i}]", f"{shared[0]!r} is a factor of the fraction; a side arm changes "
                                "other keys (it runs at the recipe's level of every factor)")
        if self.rounds is not None and self.rounds.add not in ("replicate", "foldover", *self.factors):
            raise SpecFieldError("rounds.add", f"expected replicate, foldover or a factor's key ({', '.join(self.factors)}), "
                            f"got {self.rounds.add!r}")

    @model_validator(mode="after")
    def _claims_name_arms(self) -> "SweepSpec":
        problem = check_claim_ids(self.claims)
        if problem is not None:
            raise SpecFieldError(*problem)
        if self.claims and self.arms is None and self.factors is None:
            raise SpecFieldError("claims", "claims compare arms: give `arms:` (method grid) or `factors:` (a fraction)")
        return self

    @property
    def pruner(self) -> str:
        return self.optuna.pruner or ("hyperband" if self.early_terminate is not None else "none")


# --------------------------------------------------------------------------- labels and identity


# --------------------------------------------------------------------------- loading


def _describe(error: Mapping[str, Any]) -> tuple[str, str]:
    """(dotted key, message) for one pydantic error on a sweep file."""
    loc, branches = user_parts(error["loc"])
    value = error.get("input")
    plain = error.get("ctx", {}).get("error") is None and not (isinstance(value, float) and not math.isfinite(value))
    if plain and branches and error["type"] != "extra_forbidden" and loc and \
            (loc[0].startswith("arms") or loc[-1] == "value" or loc[-1].startswith("values[")):
        return ".".join(loc), f"expected a single value (string, number, true/false or null), got {value!r}"
    if plain and error["type"] in ("tuple_type", "list_type"):
        return ".".join(loc), f"expected a list, got {value!r}"

    def valid_keys(parent: list[str]) -> list[str] | None:
        section = _section_of([*parent, ""])
        return list(section.model_fields) if section is not None else None

    return validation_problem(error, valid_keys=valid_keys)


def _section_of(loc: Sequence[str]) -> type[BaseModel] | None:
    """The model whose keys are valid where an unknown key `loc` stands (None: not a mapping of ours)."""
    sections = {"metric": MetricSpec, "early_terminate": EarlyTerminateSpec, "optuna": OptunaSpec,
                "slurm": SlurmSpec, "fraction": FractionSpec}
    if len(loc) == 1:
        return SweepSpec
    if len(loc) == 2 and loc[0] in sections:
        return sections[loc[0]]
    if len(loc) == 2 and loc[0].startswith("claims["):
        return ClaimSpec
    if len(loc) == 3 and loc[0] == "parameters":
        return ParameterSpec
    return None


def load_sweep(path: str | Path, overrides: Sequence[str] | Mapping[str, Any] = ()) -> Sweep:
    """Read and validate a sweep file; `overrides` (dotted key=value) apply to its base experiment."""
    path = Path(path)
    tree = read_yaml(path)
    _refuse_experiment_file(path, tree)
    try:
        spec = SweepSpec.model_validate(tree)
    except ValidationError as exc:
        key, message = _describe(exc.errors()[0])
        places = {tuple(user_parts(e["loc"])[0]) for e in exc.errors()}
        more = f" (+{len(places) - 1} more)" if len(places) > 1 else ""
        raise SpecError(f"{path}: {key}: {message}{more}") from None
    name = spec.name or path.stem
    if not spec.name and not all(c.isalnum() or c in "_.+-" for c in name):
        raise SpecError(f"{path}: name: the file name {name!r} is not a valid sweep name; set `name:`")

    experiment = (path.parent / spec.experiment)
    if experiment.is_dir():
        raise SpecError(f"{path}: experiment: {spec.experiment!r} is a directory ({experiment}); "
                        "expected an experiment spec file")
    if not experiment.is_file():
        raise SpecError(f"{path}: experiment: {spec.experiment!r} not found (looked at {experiment})")
    cli = tuple(overrides) if not isinstance(overrides, Mapping) else tuple(f"{k}={v}" for k, v in overrides.items())
    typed = typed_overrides(overrides)
    varied = [k for k, p in spec.parameters.items() if p.kind != "constant"] + [k for a in spec.arms or () for k in a]
    clash = next((k for k in typed if k in varied), None)
    if clash is not None:
        raise SpecError(f"override {clash}={typed[clash]!r}: {clash} is varied by the sweep {path}; "
                        "remove it from the command line or from the sweep's parameters/arms")
    base = load_spec(experiment, typed)
    _check_parameters(path, spec, base, typed)
    constants = {k: p.value for k, p in spec.parameters.items() if p.kind == "constant" and k not in typed}
    base = override_spec(base, constants) if constants else base
    if isinstance(spec.seeds, SeedSchedule):  # bounded by the schedule's limits, checked before this
        seeds = (*spec.seeds.initial, *range(max(spec.seeds.initial) + 1,
                                             max(spec.seeds.initial) + 1 + spec.seeds.max - len(spec.seeds.initial)))
    else:
        seeds = () if spec.factors else (spec.seeds or (base.seed,))

    if spec.factors:
        cells, design = fraction_design(path, spec, base)
    else:
        cells = grid_cells(path, spec, base) if spec.method == "grid" else ()
        design = cells_design(spec, base, cells, seeds) if spec.method == "grid" and (
            spec.claims or isinstance(spec.seeds, SeedSchedule)) else None
    if design is not None:
        refuse_identical_arms(path, spec, base, design)
    grid_keys = [k for k, prm in spec.parameters.items() if prm.kind == "categorical"]
    claims = resolve_claims(path, spec.claims or (), base, design, grid_keys) if design is not None else ()
    if design is not None and not spec.claims:
        claims = implicit_claims(design, grid_keys if spec.arms is not None else ())
    dumped = spec.model_dump(mode="json", exclude={"run_cap": True, "keep_last": True, "claims": True, "optuna": {
        "storage": True, "heartbeat_interval": True, "grace_period": True, "max_retry": True}, "slurm": True})
    for later in ("factors", "fraction", "rounds"):  # keys added since: absent unless used, so old hashes hold
        if dumped.get(later) is None:
            dumped.pop(later, None)
    identity = {
        "sweep": dumped,
        "name": name, "base": {k: v for k, v in identity_tree(base).items() if k not in ("tracking", "name")},
        "seeds": list(seeds), "cells": [c.overrides for c in cells],
    }
    return Sweep(path=path, spec=spec, name=name, base=base, overrides=cli, seeds=tuple(seeds), cells=cells,
                 hash=short_hash(identity), design=design, claims=claims)


def _check_parameters(path: Path, spec: SweepSpec, base: ExperimentSpec, typed: Mapping[str, Any]) -> None:
    """Every value a parameter can take must validate in the base experiment."""
    for key, param in spec.parameters.items():
        _check_key(path, f"parameters.{key}", key)
        if param.kind == "constant":
            if key not in typed:  # the command line has the last word over a constant
                _check_value(path, f"parameters.{key}.value", base, key, param.value)
        elif param.kind == "categorical":
            for i, value in enumerate(param.values or ()):
                _check_value(path, f"parameters.{key}.values[{i}]", base, key, value)
        else:
            low, high = param.bounds()
            _check_value(path, f"parameters.{key}.min", base, key, low)
            _check_value(path, f"parameters.{key}.max", base, key, high)
            if param.kind in ("uniform", "q_uniform", "log_uniform_values", "log_uniform"):
                # A float range on an integer key would fail only when sampled: try a fractional point.
                probe = low + (high - low) * 0.37
                try:
                    override_spec(base, {key: probe})
                except SpecError:
                    raise SpecError(f"{path}: parameters.{key}: a float range on an integer key; use "
                                    "distribution: int_uniform with integer min and max") from None


def _refuse_experiment_file(path: Path, tree: Mapping[str, Any]) -> None:
    """An experiment spec given where a sweep file belongs gets one line naming the command."""
    sections = set(ExperimentSpec.model_fields) | {"extends"}
    if "method" not in tree and "parameters" not in tree and tree and set(tree) <= sections:
        raise SpecError(f"{path}: this is an experiment spec (no `method:` or `parameters:`), not a sweep; "
                        f"train it with: segsweep run {path}")


