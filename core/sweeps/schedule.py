"""Adaptive schedules in sweep files, validated to their meaningful ranges before anything is built.

`seeds: {initial: [0, 1, 2], max: 12, step: 3, until: conclusive, ...}` (a grid of arms: every
round runs every cell at `step` new seeds) and `rounds: {initial: 2, max: 6, add: replicate, ...}`
(a fraction: every round runs the whole fraction again, or its fold-over) share the sequential
settings: the equivalence margin, alpha and its split between the claims' primary and secondary
hypotheses, and a budget after which no round starts. The plan they describe is generated round
by round (`segsweep.analysis.design`), never materialised up to its maximum.
"""
from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, ValidationError, model_validator

from ..errors import SpecFieldError, validation_problem
from ..spec import SEED_MAX

MAX_SEEDS = 1000  # seeds per arm at most in a seed schedule
MAX_ROUNDS = 100  # rounds of a fraction at most
MAX_HOURS = 24 * 60  # a budget beyond 60 days is a typo


class BudgetSpec(BaseModel):
    """No round starts once either is reached: trials in total, or hours since the first trial began."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    trials: StrictInt | None = Field(None, ge=1, le=10_000_000)
    hours: StrictInt | StrictFloat | None = Field(None, gt=0, le=MAX_HOURS)


class SequentialSettings(BaseModel):
    """What both schedules share: when the rounds stop and at which error rates."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    until: Literal["conclusive"] = "conclusive"
    margin: StrictFloat | StrictInt = Field(0.01, gt=0, le=0.1)  # equivalence margin in test Dice
    alpha: StrictFloat = Field(0.05, gt=0, le=0.2)  # over all claims' verdicts and looks
    primary_share: StrictFloat = Field(0.8, ge=0.5, le=0.95)  # of alpha to the primaries (Holm)
    budget: BudgetSpec | None = None

    def budget_left(self, next_total: int, first_start: float | None) -> str:
        """'' when another round may start, else why not."""
        if self.budget is None:
            return ""
        if self.budget.trials is not None and next_total > self.budget.trials:
            return f"budget: the next round would make {next_total} trials, over budget.trials {self.budget.trials}"
        if self.budget.hours is not None and first_start is not None and \
                time.time() - first_start >= self.budget.hours * 3600:
            return f"budget: {self.budget.hours:g} h since the first trial began are spent"
        return ""


class SeedSchedule(SequentialSettings):
    """`seeds: {initial: [0, 1, 2], max: 12, step: 3}`: every cell at the initial seeds, then
    `step` more per round (the next integers above the largest seed) up to `max` per cell."""

    initial: tuple[StrictInt, ...] = Field(min_length=2)
    max: StrictInt = Field(ge=2, le=MAX_SEEDS)  # seeds per cell at most
    step: StrictInt = Field(1, ge=1, le=MAX_SEEDS)

    @model_validator(mode="after")
    def _consistent(self) -> "SeedSchedule":
        if any(not 0 <= s <= SEED_MAX for s in self.initial) or len(set(self.initial)) != len(self.initial):
            raise SpecFieldError("initial", f"expected distinct integers in 0..{SEED_MAX}, got {list(self.initial)}")
        if self.max < len(self.initial):
            raise SpecFieldError("max", f"{self.max} is below the {len(self.initial)} initial seeds")
        top = max(self.initial) + self.max - len(self.initial)
        if top > SEED_MAX:
            raise SpecFieldError("max", f"the planned seeds go up to {top}, above {SEED_MAX} (numpy's largest seed); "
                               "lower max or the initial seeds")
        return self

    @property
    def rounds(self) -> int:
        """Rounds up to `max` seeds: the initial one, then one per `step` seeds (the last may add fewer)."""
        return 1 + -(-(self.max - len(self.initial)) // self.step)


class RoundSchedule(SequentialSettings):
    """`rounds: {initial: 2, max: 6, add: replicate}`: a fraction's rounds. `initial` rounds run
    before the first look, then one more per look up to `max`. `add`: replicate (the same runs,
    new seeds), foldover (every sign flipped: rounds alternate between the fraction and its
    mirror) or the key of one factor to fold over. Every run gets its own seed, counting up from
    `seed`; side arms take the seed of their round's recipe run."""

    initial: StrictInt = Field(2, ge=1, le=MAX_ROUNDS)
    max: StrictInt = Field(2, ge=1, le=MAX_ROUNDS)
    add: str = "replicate"
    seed: StrictInt = Field(0, ge=0, le=SEED_MAX)

    @model_validator(mode="after")
    def _consistent(self) -> "RoundSchedule":
        if self.max < self.initial:
            raise SpecFieldError("max", f"{self.max} is below the {self.initial} initial rounds")
        return self


# What each statistical setting means, for the message when its value is out of range.
MEANING = {
    "margin": "an equivalence margin in test Dice in (0, 0.1] (0.01 is one Dice point)",
    "alpha": "an error rate in (0, 0.2]",
    "primary_share": "the share of alpha given to the claims' primary hypotheses, in [0.5, 0.95]",
    "hours": f"a number of hours in (0, {MAX_HOURS}]",
    "trials": "a number of trials in 1..10000000",
    "max": None, "initial": None, "step": None,
}


def schedule_error(exc: ValidationError, where: str, model: type[BaseModel]) -> tuple[str, str]:
    """(dotted key under `where`, message) of the first problem of a schedule (an unknown key
    first: a typo explains a missing key)."""
    errors = exc.errors()
    error = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    valid = {(): list(model.model_fields), ("budget",): list(BudgetSpec.model_fields)}
    return validation_problem(error, where=where, meanings=MEANING, valid_keys=lambda loc: valid.get(tuple(loc)))


def parse_schedule(tree: Any, where: str, model: type[BaseModel]) -> Any:
    """Validate `tree` as `model`, or raise SpecFieldError naming the dotted key (under `where`)."""
    try:
        return model.model_validate(tree)
    except ValidationError as exc:
        key, message = schedule_error(exc, where, model)
        raise SpecFieldError(key, message) from None
