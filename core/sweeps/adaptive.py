"""Adaptive seeds: a grid sweep whose `seeds:` is a schedule. It runs in rounds on the Optuna
engine: queue the round's cells x seeds, let the workers run them, analyse every comparison
(each factor level against its baseline, paired by seed) with the group-sequential design of
`reports.sequential`, and give the next `step` seeds only to the arms of comparisons still open,
until each is conclusive, `max` is reached or the budget is spent.

Every round is derived again from the finished trials, so rerunning the command replays the
same decisions and queues only what is missing: each cell x seed still runs exactly once.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, model_validator

if TYPE_CHECKING:
    from .cells import Sweep


class _Rule(ValueError):
    """A cross-field rule of the schedule, with the key it concerns."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


class BudgetSpec(BaseModel):
    """No round starts once either is reached: trials in total, or hours since the first trial began."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    trials: StrictInt | None = Field(None, ge=1)
    hours: StrictInt | StrictFloat | None = Field(None, gt=0)


class SeedSchedule(BaseModel):
    """`seeds: {initial: [0, 1, 2], max: 12, step: 3, until: conclusive}`: seeds added in rounds."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    initial: tuple[StrictInt, ...] = Field(min_length=2)
    max: StrictInt = Field(ge=2)  # seeds per arm at most
    step: StrictInt = Field(1, ge=1)  # seeds added to an open arm per round
    until: Literal["conclusive"] = "conclusive"
    margin: StrictFloat | StrictInt = Field(0.005, gt=0)  # equivalence margin in test Dice
    alpha: StrictFloat = Field(0.05, gt=0, lt=1)  # over all comparisons (Bonferroni across them)
    budget: BudgetSpec | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "SeedSchedule":
        if any(s < 0 for s in self.initial) or len(set(self.initial)) != len(self.initial):
            raise _Rule("initial", f"expected distinct non-negative integers, got {list(self.initial)}")
        if self.max < len(self.initial):
            raise _Rule("max", f"{self.max} is below the {len(self.initial)} initial seeds")
        return self

    def planned_seeds(self) -> tuple[int, ...]:
        """The seed order: the initial seeds, then the next integers above them, up to `max` seeds."""
        extra = range(max(self.initial) + 1, max(self.initial) + 1 + self.max - len(self.initial))
        return tuple(self.initial) + tuple(extra)

    def looks(self) -> tuple[int, ...]:
        from ..reports.sequential import planned_looks

        return planned_looks(len(self.initial), self.step, self.max)


# --------------------------------------------------------------------------- comparisons


@dataclass(frozen=True)
class Comparison:
    """One factor level against the factor's baseline: the pairs of cells differing only there."""

    factor: str
    level: Any
    baseline: Any
    pairs: tuple[tuple[str, str], ...]  # (treated cell label, control cell label)
    claim: str | None = None  # the id of the sweep's claim this comparison settles

    @property
    def label(self) -> str:
        from ..format import format_level

        if self.claim is not None:  # sequential.json also records the id itself (`claim`)
            return f"claim {self.claim}: {self.pairs[0][0]} vs {self.pairs[0][1]}"
        return f"{self.factor}: {format_level(self.level)} vs {format_level(self.baseline)}"

    @property
    def cells(self) -> set[str]:
        return {label for pair in self.pairs for label in pair}


def comparisons(sweep: Sweep) -> list[Comparison]:
    """What the rounds settle. A sweep that declares `claims:` settles exactly those (each claim's
    `arm` against its `against`; a claim whose target changes compares nothing). Otherwise every
    non-baseline level of every varied key against that factor's baseline, chosen by the ablation
    report's own rule (`reports.design.cell_factors`, what `group_arms` does without --baseline):
    the base experiment's value where it is one of the levels, else the level most cells have
    (ties: the first in sorted order)."""
    from ..reports.design import cell_factors, same_level
    from .cells import base_values

    if sweep.spec.claims:
        from .claims import canonical

        label_of = {canonical(c.overrides): c.label for c in sweep.cells}
        return [Comparison("claim", None, None, ((label_of[canonical(c.arm)], label_of[canonical(c.against)]),), c.id)
                for c in sweep.spec.claims if not c.target_changes]

    base = base_values(sweep)
    keys = sorted({k for c in sweep.cells for k in c.overrides})
    factors, levels = cell_factors({c.label: {k: c.overrides.get(k, base.get(k)) for k in keys}
                                    for c in sweep.cells}, base)
    found: list[Comparison] = []
    for factor in factors:
        key, baseline = factor.key, factor.baseline

        def rest(label: str) -> list:
            return [json.dumps(v, default=str) for k, v in levels[label].items() if k != key]

        for level in (v for v in factor.levels if not same_level(v, baseline)):
            pairs = tuple((t, c) for t in levels for c in levels if same_level(levels[t][key], level)
                          and same_level(levels[c][key], baseline) and rest(t) == rest(c))
            if pairs:
                found.append(Comparison(key, level, baseline, pairs))
    return found


def paired_differences(comp: Comparison, values: Mapping[tuple[str, int], float],
                       seeds: Sequence[int]) -> list[float]:
    """Per seed (in `seeds` order) where every cell of `comp` has a result: treated - control,
    averaged over the pairs (the ablation report's contrast)."""
    common = [s for s in seeds if all((label, s) in values for label in comp.cells)]
    k = len(comp.pairs)
    return [sum(values[(t, s)] - values[(c, s)] for t, c in comp.pairs) / k for s in common]


# --------------------------------------------------------------------------- rounds


@dataclass
class Plan:
    """The adaptive state: seeds per cell, the looks each comparison has had, its latest verdict."""

    seeds_of: dict[str, tuple[int, ...]]
    looks: dict[str, list[int]] = field(default_factory=dict)
    verdicts: dict[str, Any] = field(default_factory=dict)  # label -> reports.sequential.Look
    needed: dict[str, Any] = field(default_factory=dict)  # label -> reports.power.SeedsNeeded (inconclusive)
    rounds: int = 0
    stopped_by: str = ""

    def planned(self) -> int:
        return sum(len(s) for s in self.seeds_of.values())


def trial_values(trials: Sequence[Any]) -> dict[tuple[str, int], float]:
    """(cell label, seed) -> test/dice of finished trials; a diverged run scores 0 (as in the report)."""
    from optuna.trial import TrialState

    values: dict[tuple[str, int], float] = {}
    for t in trials:
        a = t.user_attrs
        if a.get("cell") is None or a.get("seed") is None:
            continue
        if t.state == TrialState.COMPLETE and a.get("test/dice") is not None:
            values[(str(a["cell"]), int(a["seed"]))] = float(a["test/dice"])
        elif t.state == TrialState.FAIL and a.get("status") == "diverged":
            values[(str(a["cell"]), int(a["seed"]))] = 0.0
    return values


def analyse(sweep: Sweep, plan: Plan, values: Mapping[tuple[str, int], float]) -> dict[str, tuple[int, ...]]:
    """Look at every open comparison; returns the next round's seeds per cell (unchanged: done)."""
    from ..reports.power import seeds_needed
    from ..reports.sequential import sequential_verdict

    schedule: SeedSchedule = sweep.spec.seeds  # type: ignore[assignment]
    order = schedule.planned_seeds()
    comps = comparisons(sweep)
    level = schedule.alpha / max(1, len(comps))
    grow: dict[str, int] = {}
    # Only this round's planned seeds: a rerun that finds later rounds done replays each look as it was.
    values = {(label, s): v for (label, s), v in values.items() if s in plan.seeds_of.get(label, ())}
    for comp in comps:
        previous = plan.verdicts.get(comp.label)
        if previous is not None and previous.verdict != "continue":
            continue  # decided (or at max): never looked at again
        diffs = paired_differences(comp, values, order)
        looks = plan.looks.setdefault(comp.label, [])
        if len(diffs) >= 2 and (not looks or len(diffs) > looks[-1]):
            looks.append(len(diffs))
        if not looks:
            continue
        look = sequential_verdict(diffs, looks, schedule.max, schedule.margin, level)
        plan.verdicts[comp.label] = look
        plan.needed.pop(comp.label, None)
        if look.verdict in ("inconclusive", "continue"):  # continue: also what a stop by the budget leaves
            plan.needed[comp.label] = seeds_needed(diffs, schedule.margin, schedule.margin, schedule.alpha, len(comps))
        if look.verdict == "continue":
            for label in comp.cells:
                grow[label] = max(grow.get(label, 0), min(schedule.max, looks[-1] + schedule.step))
    return {label: order[:max(len(seeds), grow.get(label, 0))] for label, seeds in plan.seeds_of.items()}


def budget_left(schedule: SeedSchedule, next_total: int, first_start: float | None) -> str:
    """'' when the next round may start, else why not."""
    budget = schedule.budget
    if budget is None:
        return ""
    if budget.trials is not None and next_total > budget.trials:
        return f"budget: the next round would make {next_total} trials, over budget.trials {budget.trials}"
    if budget.hours is not None and first_start is not None and time.time() - first_start >= budget.hours * 3600:
        return f"budget: {budget.hours:g} h since the first trial began are spent"
    return ""


def _held(trials: Sequence[Any]) -> set[str]:
    from .study import holds

    return {t.user_attrs.get("config_hash") for t in trials if holds(t)}


def run_rounds(study: Any, storage: Any, study_id: int, sweep: Sweep, sweep_dir: Path, run_round: Any,
               echo: Any, where: str) -> tuple[bool, int]:
    """Queue, run and analyse rounds until every comparison is settled; returns (interrupted,
    planned cells x seeds not finished). `run_round()` runs the workers until the queue is empty
    and returns True when a signal stopped them."""
    from ..record import code_state
    from .cells import cell_config_hash
    from .study import enqueue_grid

    schedule: SeedSchedule = sweep.spec.seeds  # type: ignore[assignment]
    cells = {c.label: c for c in sweep.cells}
    plan = Plan({label: schedule.planned_seeds()[:len(schedule.initial)] for label in cells})
    code = code_state()  # each round's workers import the code anew: it must not change between rounds
    if "+dirty" in code:
        echo(f"sweep {sweep.name}: warning: the code is {code}, not a clean commit: its runs will not show "
             "one clean sha; a study to commit runs from a clean checkout (git worktree add ../study HEAD)")
    unplanned = 0
    while True:
        plan.rounds += 1
        queued = sum(enqueue_grid(study, replace(sweep, cells=(cells[label],), seeds=seeds))
                     for label, seeds in plan.seeds_of.items())
        echo(f"sweep {sweep.name}: round {plan.rounds}: {len(cells)} cells, {plan.planned()} cell x seed trials "
             f"planned so far; {queued} queued now; storage {where}")
        if run_round():
            return True, len(_missing(plan, trial_values(storage.get_all_trials(study_id, deepcopy=False))))
        trials = storage.get_all_trials(study_id, deepcopy=False)
        values = trial_values(trials)
        missing = _missing(plan, values)
        if missing:
            plan.stopped_by = f"{len(missing)} planned trial(s) did not finish; rerun the command to resume"
            break
        following = analyse(sweep, plan, values)
        if following == plan.seeds_of:
            plan.stopped_by = "every comparison is decided or has its maximum seeds"
            break
        held = _held(trials)
        started = any(cell_config_hash(sweep, cells[label], s)[0] in held
                      for label, seeds in following.items() for s in seeds if s not in plan.seeds_of[label])
        starts = [t.datetime_start.timestamp() for t in trials if t.datetime_start is not None]
        why = budget_left(schedule, sum(len(s) for s in following.values()), min(starts, default=None))
        if why and not started:
            plan.stopped_by = why
            break
        now = code_state()
        if now != code:
            unplanned = sum(len(set(s) - set(plan.seeds_of[label])) for label, s in following.items())
            plan.stopped_by = (f"the code changed after round {plan.rounds} ({code} -> {now}): round {plan.rounds + 1} "
                               "would train on other code than the rounds before it; commit or undo the change, "
                               "then rerun the command to go on (the rounds done are kept)")
            break
        plan.seeds_of = following
    for line in _record_plan(sweep, plan, sweep_dir):
        echo(line)
    return False, len(missing) + unplanned


def _missing(plan: Plan, values: Mapping[tuple[str, int], float]) -> list[tuple[str, int]]:
    return [(label, s) for label, seeds in plan.seeds_of.items() for s in seeds if (label, s) not in values]


def _record_plan(sweep: Sweep, plan: Plan, sweep_dir: Path) -> list[str]:
    """Write sequential.json (the design, each comparison's looks and verdict); returns the lines to show."""
    from ..record import atomic_write_text
    from ..reports.sequential import DESIGN

    schedule: SeedSchedule = sweep.spec.seeds  # type: ignore[assignment]
    comps = comparisons(sweep)
    m = max(1, len(comps))
    claim_of = {c.label: c.claim for c in comps}
    lines = [f"adaptive seeds: {plan.rounds} round(s); stopped: {plan.stopped_by}"]
    rows = []
    for label, look in plan.verdicts.items():
        needed = plan.needed.get(label)
        verdict = "inconclusive" if look.verdict == "continue" else look.verdict  # open when the rounds stopped
        row = {"comparison": label, "claim": claim_of.get(label), "verdict": verdict, "before_max": look.verdict == "continue", "look": look.look,
               "seeds": look.n, "looks": plan.looks.get(label, []), "t": _finite(look.t),
               "boundary": _finite(look.bound),
               "boundary_tost": _finite(look.bound_tost),
               "seeds_to_detect": needed.to_detect if needed else None,
               "seeds_for_equivalence": needed.to_show_equivalence if needed else None}
        rows.append(row)
        text = (f"  {label}: {verdict} at look {look.look} ({look.n} seeds; t {look.t:.2f}, "
                f"|t| boundary {look.bound:.3g})")
        if needed:
            text += (f"; about {_count(needed.to_detect)} seeds would detect a {schedule.margin:g} difference, "
                     f"{_count(needed.to_show_equivalence)} would show equivalence if there were none")
        lines.append(text)
    record = {
        "design": DESIGN, "alpha": schedule.alpha, "comparisons_in_family": m,
        "alpha_per_comparison": schedule.alpha / m,
        "margin": schedule.margin, "max": schedule.max, "step": schedule.step, "initial": list(schedule.initial),
        "planned_looks": list(schedule.looks()), "rounds": plan.rounds, "stopped_by": plan.stopped_by,
        "seeds": {label: list(seeds) for label, seeds in plan.seeds_of.items()}, "comparisons": rows,
    }
    atomic_write_text(sweep_dir / "sequential.json", json.dumps(record, indent=2) + "\n")
    return lines


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _count(n: int | None) -> str:
    from ..reports.power import MAX_SEEDS

    return str(n) if n is not None else f"more than {MAX_SEEDS}"


def schedule_error(exc: Any) -> tuple[str, str]:
    """(dotted key under `seeds`, message) of the first problem of a seed schedule."""
    import difflib

    errors = exc.errors()
    error = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])  # a typo explains a missing key
    loc = ".".join(["seeds", *(str(p) for p in error["loc"])])
    rule = error.get("ctx", {}).get("error")
    if isinstance(rule, _Rule):
        return f"seeds.{rule.key}", str(rule)
    if error["type"] == "extra_forbidden":
        close = difflib.get_close_matches(str(error["loc"][-1]), list(SeedSchedule.model_fields), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return loc, f"unknown key; {hint}valid keys: {', '.join(SeedSchedule.model_fields)}"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] != "missing" and not isinstance(error.get("input"), Mapping):
        message = f"{message} (got {error.get('input')!r})"
    return loc, message
