"""A sweep's cells and, when it settles claims, its design: the grid of arms x categorical
parameters, or a two-level fraction with side arms, every cell validated against the base
experiment; and the one definition of identical arms (two cells that would train the same
network from the same initial weights), refused before anything runs."""
from __future__ import annotations

import difflib
from itertools import product
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..analysis.design import Design, DesignCell, Factor, Schedule, fraction_cells
from ..analysis.fraction import DesignError, Fraction, minimum_aberration
from ..errors import SpecError
from ..format import fmt_value
from ..spec import ExperimentSpec, arm_hash, flatten, override_spec, spec_keys, spec_to_dict
from .cells import Cell, canonical_value, cell_label
from .schedule import RoundSchedule, SeedSchedule

if TYPE_CHECKING:
    from .spec import SweepSpec

# Keys a sweep may not vary: the seed has its own `seeds:` list; name and tracking change no result.
RESERVED_KEYS = {"seed": "use `seeds: [...]` for replicates", "name": "the sweep names every trial"}


def check_key(path: Path, where: str, key: str) -> None:
    """A varied key must be a key of the experiment spec that changes what is trained."""
    if key in RESERVED_KEYS:
        raise SpecError(f"{path}: {where}: {key!r} cannot be varied here; {RESERVED_KEYS[key]}")
    if key == "tracking" or key.startswith("tracking."):
        raise SpecError(f"{path}: {where}: tracking settings change no result; set them in the experiment spec")
    keys = spec_keys()
    if key not in keys:
        close = difflib.get_close_matches(key, list(keys), n=3, cutoff=0.7)
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
        sections = sorted({k.split('.')[0] for k in keys})
        raise SpecError(f"{path}: {where}: {key!r} is not a key of the experiment spec{hint} "
                        f"(dotted keys under: {', '.join(sections)})")


def check_arm(path: Path, where: str, base: ExperimentSpec, arm: dict[str, Any]) -> None:
    """An arm's overrides, together (a model with fixed widths needs its width with its name), must
    validate in the experiment spec."""
    try:
        override_spec(base, arm)
    except SpecError as exc:
        reason = str(exc)
        for key, value in arm.items():
            reason = reason.removeprefix(f"override {key}={value!r}: ")
        raise SpecError(f"{path}: {where} = {dict(arm)} is invalid for the experiment: {reason}") from None


def check_value(path: Path, where: str, base: ExperimentSpec, key: str, value: Any) -> None:
    """Each value a parameter can take must validate in the experiment spec."""
    try:
        override_spec(base, {key: value})
    except SpecError as exc:
        reason = str(exc).removeprefix(f"override {key}={value!r}: ")
        raise SpecError(f"{path}: {where} = {value!r} is invalid for the experiment: {reason}") from None


def grid_cells(path: Path, spec: SweepSpec, base: ExperimentSpec) -> tuple[Cell, ...]:
    """Arms x the product of categorical parameters; every cell validated, no two cells alike."""
    grid = {k: p.values for k, p in spec.parameters.items() if p.kind == "categorical"}
    arms = spec.arms if spec.arms is not None else ({},)
    for i, arm in enumerate(arms):
        for key, value in arm.items():
            check_key(path, f"arms[{i}]", key)
            if key in grid:
                raise SpecError(f"{path}: arms[{i}]: {key!r} is also a grid parameter; vary it in one place")
            if key in spec.parameters:
                raise SpecError(f"{path}: arms[{i}]: {key!r} is a constant parameter; an arm cannot change it")
        if len(arm) == 1:
            key, value = next(iter(arm.items()))
            check_value(path, f"arms[{i}].{key}", base, key, value)
        else:
            check_arm(path, f"arms[{i}]", base, arm)
    arm_labels = [cell_label(arm) for arm in arms]
    cells: list[Cell] = []
    seen: dict[str, str] = {}
    for arm_index, arm in enumerate(arms):
        for combo in product(*grid.values()):
            overrides = {**arm, **dict(zip(grid, combo))}
            try:
                cell_spec = override_spec(base, overrides)
            except SpecError as exc:
                raise SpecError(f"{path}: cell {cell_label(overrides)}: {exc}") from None
            label = cell_label(overrides)
            identity = arm_hash(cell_spec)
            if identity in seen:
                raise SpecError(f"{path}: cells {seen[identity]!r} and {label!r} train the same configuration; "
                                "remove one (an arm equal to the baseline, or a repeated value)")
            seen[identity] = label
            params = dict(zip(grid, combo))
            if spec.arms is not None:
                params = {"arm": arm_labels[arm_index], **params}
            cells.append(Cell(label=label, overrides=overrides, params=params))
    return tuple(cells)


def cells_design(spec: SweepSpec, base: ExperimentSpec, cells: tuple[Cell, ...], seeds: tuple[int, ...]) -> Design:
    """A grid's design: every cell once per seed, rounds of `step` seeds under a seed schedule
    (the initial seeds, then the next integers), one round of the given seeds otherwise."""
    schedule = spec.seeds
    if isinstance(schedule, SeedSchedule):
        plan = Schedule(initial=1, max=schedule.rounds, step=schedule.step, seeds=tuple(schedule.initial))
    else:
        plan = Schedule(initial=1, max=1, seeds=tuple(seeds))
    design_cells = tuple(DesignCell(c.label, dict(c.overrides), arm_hash=arm_hash(override_spec(base, c.overrides)))
                         for c in cells)
    baseline = next((c.label for c in design_cells if c.arm_hash == arm_hash(base)), None)
    return Design("cells", design_cells, plan, baseline=baseline)


def fraction_design(path: Path, spec: SweepSpec, base: ExperimentSpec) -> tuple[tuple[Cell, ...], Design]:
    """A fraction's cells (every row it or its fold-over can run, the recipe, the side arms) and design."""
    assert spec.factors is not None
    factors = []
    letters = iter("ABCDEFGHJKLMNOPQRSTUVWXYZ")
    here = flatten(spec_to_dict(base))
    for key, levels in spec.factors.items():
        check_key(path, f"factors.{key}", key)
        for i, level in enumerate(levels):
            check_value(path, f"factors.{key}[{i}]", base, key, level)
        recipe = flatten(spec_to_dict(override_spec(base, {key: levels[0]}))).get(key)
        if canonical_value(recipe) != canonical_value(here.get(key)):
            raise SpecError(f"{path}: factors.{key}: the first level is the recipe's (the base experiment's): it has "
                            f"{key}={fmt_value(here.get(key))}, the factor starts with {fmt_value(levels[0])}; list "
                            f"[{fmt_value(here.get(key))}, <other level>]")
        factors.append(Factor(key, (levels[0], levels[1]), next(letters)))
    fraction = _fraction(path, spec, len(factors))
    schedule = spec.rounds or RoundSchedule()
    sides = []
    for i, arm in enumerate(spec.arms or ()):
        for key in arm:
            check_key(path, f"arms[{i}]", key)
        check_arm(path, f"arms[{i}]", base, arm)
        sides.append((cell_label(arm), arm))
    recipe_codes = (1,) * len(factors)
    if sides and not fraction.contains_all_plus:
        raise SpecError(f"{path}: fraction.generators: side arms pair with the recipe's run, so the fraction must "
                        f"contain it (every factor at its first level): give the generators with + signs")
    design_cells, cells, seen = [], [], {}
    for cell in fraction_cells(tuple(factors), fraction, schedule.add, sides, cell_label):
        try:
            cell_spec = override_spec(base, dict(cell.overrides))
        except SpecError as exc:
            raise SpecError(f"{path}: cell {cell.label}: {exc}") from None
        identity = arm_hash(cell_spec)
        if identity in seen:
            raise SpecError(f"{path}: cells {seen[identity]!r} and {cell.label!r} train the same configuration; "
                            "remove the side arm that equals the recipe or a cell of the fraction")
        seen[identity] = cell.label
        design_cells.append(DesignCell(cell.label, dict(cell.overrides), cell.codes, cell.side, identity))
        cells.append(Cell(label=cell.label, overrides=dict(cell.overrides), params={"arm": cell.label}))
    del recipe_codes
    plan = Schedule(initial=schedule.initial, max=schedule.max, add=schedule.add, first_seed=schedule.seed)
    design = Design("fraction", tuple(design_cells), plan, tuple(factors), fraction, baseline=design_cells[0].label)
    last = plan.first_seed + design.planned_runs()
    from ..spec import SEED_MAX

    if last - 1 > SEED_MAX:
        raise SpecError(f"{path}: rounds.seed: the runs' seeds would go up to {last - 1}, above {SEED_MAX}")
    return tuple(cells), design


def _fraction(path: Path, spec: SweepSpec, k: int) -> Fraction:
    try:
        if spec.fraction is None:
            return Fraction(k)
        if spec.fraction.generators is not None:
            return Fraction(k, spec.fraction.generators)
        return minimum_aberration(k, spec.fraction.runs)
    except DesignError as exc:
        raise SpecError(f"{path}: fraction: {exc}") from None


def refuse_identical_arms(path: Path, spec: SweepSpec, base: ExperimentSpec, design: Design) -> None:
    """Two cells that differ only in fields building bit-identical initial weights at every seed
    (today: `model.init` schemes that draw the same values for that network, e.g. he_normal and
    paper for a UNet) train identical networks: one line naming both. A fraction factor whose two
    levels are such fields is refused the same way."""
    by_label = {c.label: flatten(spec_to_dict(override_spec(base, dict(c.overrides)))) for c in design.cells}
    pairs = []
    labels = list(by_label)
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            differ = {k for k in set(by_label[a]) | set(by_label[b]) if by_label[a].get(k) != by_label[b].get(k)}
            if differ == {"model.init"}:
                pairs.append((a, b))
    for key, levels in (spec.factors or {}).items():
        if key == "model.init":
            pairs.append((cell_label({key: levels[0]}), cell_label({key: levels[1]})))
    if not pairs:
        return
    from ..models import init_signature

    for a, b in pairs:
        spec_a = override_spec(base, _overrides_of(design, a))
        spec_b = override_spec(base, _overrides_of(design, b))
        if init_signature(spec_a.model) == init_signature(spec_b.model):
            raise SpecError(f"{path}: arms {a!r} and {b!r} train identical networks: model.init "
                            f"{spec_a.model.init} and {spec_b.model.init} build the same initial weights for "
                            f"{spec_a.model.name} at every seed; remove one, or compare schemes that differ")


def _overrides_of(design: Design, label: str) -> dict[str, Any]:
    try:
        return dict(design.cell(label).overrides)
    except KeyError:  # a factor level named by its label (key=value)
        key, _, _ = label.partition("=")
        factor = next(f for f in design.factors if f.key == key)
        level = next(lv for lv in factor.levels if cell_label({key: lv}) == label)
        return {key: level}
