"""The planned design of a sweep that settles claims: its cells, the runs of every round (which
cell, which seed, which seed group) and, for a fraction, the factors and their ±1 codes.

Two kinds. `cells` (one factor at a time, or any grid of arms): every round runs every cell once
per new seed, and runs sharing a seed form a block. `fraction`: two-level factors crossed in a
(fractional) factorial whose every run has its own seed, plus side arms, each run once per round
with the seed of that round's recipe run (the run with every factor at the recipe's level, coded
+1), so each side arm is paired by seed with a recipe-level run; a round is a block. A round is
a whole replicate (or the fold-over the schedule names): looks happen only after complete rounds.

Rounds are generated on demand (`runs(round)`), so a schedule with a large maximum costs nothing
until its rounds exist. Nothing here knows sweeps, Optuna or files: the sweep layer builds a
`Design` from its spec.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Sequence

import numpy as np

from .fraction import Fraction

SEED_SPAN = 2**32  # seeds are numpy's: 0 .. 2**32 - 1


@dataclass(frozen=True)
class Factor:
    """A two-level factor of a fraction: `levels[0]` is the recipe's (coded +1), `levels[1]` the other (-1)."""

    key: str
    levels: tuple[Any, Any]
    letter: str


@dataclass(frozen=True)
class DesignCell:
    """One treatment: its overrides of the base experiment, and what the model knows of it."""

    label: str
    overrides: Mapping[str, Any]
    codes: tuple[int, ...] | None = None  # fraction cells and side arms: ±1 per factor (side arms: all +1)
    side: str | None = None  # the side arm's label, for side-arm cells
    arm_hash: str = ""  # the arm hash its runs record (summary.json): how a report finds a run's cell


@dataclass(frozen=True)
class PlannedRun:
    cell: str  # DesignCell.label
    seed: int
    round: int  # 1-based
    group: str  # block: runs of one round that share a seed, or the round's singletons


@dataclass(frozen=True)
class Schedule:
    """Rounds: `initial` run before the first look, then one more per look up to `max`.
    `add`: what a later round adds: "replicate" (the same runs, new seeds), "foldover" (every
    sign flipped) or the key of the factor to fold over (rounds then alternate between the
    fraction and its fold-over). `seeds` (cells designs): the seeds of round 1; later rounds
    take the next `step` integers above the largest seed used so far."""

    initial: int
    max: int
    step: int = 1
    add: str = "replicate"
    seeds: tuple[int, ...] = ()
    first_seed: int = 0  # fraction designs: the seed of round 1's first run


@dataclass(frozen=True)
class Design:
    kind: Literal["cells", "fraction"]
    cells: tuple[DesignCell, ...]
    schedule: Schedule
    factors: tuple[Factor, ...] = ()
    fraction: Fraction | None = None
    baseline: str | None = None  # the base experiment's cell (the recipe, in a fraction), if any
    _index: dict[str, DesignCell] = field(default_factory=dict, compare=False, repr=False, hash=False)
    _rows: dict[int, tuple[tuple[int, ...], ...]] = field(default_factory=dict, compare=False, repr=False,
                                                          hash=False)

    def __post_init__(self) -> None:
        self._index.update({c.label: c for c in self.cells})

    def cell(self, label: str) -> DesignCell:
        return self._index[label]

    @property
    def side_arms(self) -> tuple[DesignCell, ...]:
        return tuple(c for c in self.cells if c.side is not None)

    @property
    def recipe(self) -> DesignCell | None:
        """Fraction designs: the cell with every factor at the recipe's level."""
        return next((c for c in self.cells if c.side is None and c.codes is not None and set(c.codes) == {1}), None)

    # ----------------------------------------------------------------------- rounds

    @property
    def rounds_max(self) -> int:
        return self.schedule.max

    def round_size(self, round_: int) -> int:
        return len(self.runs(round_))

    def runs(self, round_: int) -> tuple[PlannedRun, ...]:
        """The runs of one round (1-based), in queueing order."""
        if not 1 <= round_ <= self.schedule.max:
            raise ValueError(f"round {round_} outside 1..{self.schedule.max}")
        return self._fraction_round(round_) if self.kind == "fraction" else self._cells_round(round_)

    def runs_through(self, rounds: int) -> tuple[PlannedRun, ...]:
        return tuple(run for r in range(1, rounds + 1) for run in self.runs(r))

    def looks(self) -> tuple[int, ...]:
        """The rounds after which a look happens: the initial ones, then every further round."""
        return tuple(range(self.schedule.initial, self.schedule.max + 1))

    def round_seeds(self, round_: int) -> tuple[int, ...]:
        """Cells designs: the seeds round `round_` adds."""
        s = self.schedule
        if round_ == 1:
            return s.seeds
        start = max(s.seeds) + 1 + (round_ - 2) * s.step
        return tuple(range(start, start + s.step))

    def _cells_round(self, round_: int) -> tuple[PlannedRun, ...]:
        return tuple(PlannedRun(c.label, seed, round_, f"seed {seed}")
                     for seed in self.round_seeds(round_) for c in self.cells)

    def _fraction_round(self, round_: int) -> tuple[PlannedRun, ...]:
        rows = self.round_rows(round_)
        base = self.schedule.first_seed + sum(self._seeds_used(r) for r in range(1, round_))
        runs, recipe_seed = [], None
        by_codes = {c.codes: c for c in self.cells if c.side is None}
        for i, codes in enumerate(rows):
            cell = by_codes[codes]
            seed = base + i
            if all(v == 1 for v in codes):
                recipe_seed = seed
            runs.append((cell.label, seed))
        if self.side_arms and recipe_seed is None:  # this round's fraction lacks the recipe: add it
            recipe_seed = base + len(rows)
            runs.append((by_codes[(1,) * len(self.factors)].label, recipe_seed))
        # One block per round: a side arm shares its round's recipe seed (paired by seed), but is
        # not blocked with it, or the recipe run would inform only that block and leave a
        # saturated fraction unable to estimate its effects.
        # Side arms are queued first: one may train another, slower network, and two workers finish
        # a round sooner when its longest run starts early.
        out = [PlannedRun(arm.label, recipe_seed, round_, f"round {round_}") for arm in self.side_arms]
        out += [PlannedRun(label, seed, round_, f"round {round_}") for label, seed in runs]
        return tuple(out)

    def _seeds_used(self, round_: int) -> int:
        """Seeds a fraction round takes: one per row, and one for a recipe run it adds."""
        rows = self.round_rows(round_)
        return len(rows) + (1 if self.side_arms and (1,) * len(self.factors) not in rows else 0)

    def round_rows(self, round_: int) -> tuple[tuple[int, ...], ...]:
        """Fraction designs: the ±1 rows of the fraction that round `round_` runs (rounds
        alternate between the fraction and its fold-over when the schedule adds fold-overs)."""
        assert self.fraction is not None
        key = 2 if self.schedule.add != "replicate" and round_ % 2 == 0 else 1
        if key not in self._rows:
            matrix = self.fraction.matrix().astype(int)
            if key == 2:
                flip = np.ones(matrix.shape[1], dtype=int)
                if self.schedule.add == "foldover":
                    flip[:] = -1
                else:
                    flip[[f.key for f in self.factors].index(self.schedule.add)] = -1
                matrix = matrix * flip
            self._rows[key] = tuple(tuple(int(v) for v in row) for row in matrix)
        return self._rows[key]

    def planned_runs(self) -> int:
        """Runs of every round up to the maximum (computed per round, never materialised)."""
        return sum(len(self.runs(r)) for r in range(1, self.schedule.max + 1))


def fraction_cells(factors: Sequence[Factor], fraction: Fraction, add: str,
                   side_arms: Sequence[tuple[str, Mapping[str, Any]]], label_of: Any) -> tuple[DesignCell, ...]:
    """Every cell a fraction design can run: the rows of the fraction (and of its fold-over, when
    rounds alternate), the recipe row, and the side arms at the recipe. `label_of(overrides)`
    names a cell as the sweep does."""
    matrix = fraction.matrix()
    rows = {tuple(int(v) for v in row) for row in matrix}
    if add == "foldover":
        rows |= {tuple(-int(v) for v in row) for row in matrix}
    elif add != "replicate":
        j = [f.key for f in factors].index(add)
        rows |= {tuple(-int(v) if i == j else int(v) for i, v in enumerate(row)) for row in matrix}
    recipe = (1,) * len(factors)
    if side_arms:
        rows.add(recipe)
    ordered = sorted(rows, key=lambda r: (r != recipe, tuple(-v for v in r)))  # the recipe first
    cells = []
    for codes in ordered:
        overrides = {f.key: f.levels[0 if v == 1 else 1] for f, v in zip(factors, codes) if v == -1}
        cells.append(DesignCell(label_of(overrides), overrides, codes))
    for name, overrides in side_arms:
        cells.append(DesignCell(label_of(dict(overrides)), dict(overrides), recipe, name))
    return tuple(cells)


# --------------------------------------------------------------------------- the record of a design


def design_to_dict(design: Design) -> dict[str, Any]:
    """What sweep.yaml records of the design (read back by `design_from_dict`)."""
    s = design.schedule
    return {
        "kind": design.kind, "baseline": design.baseline,
        "schedule": {"initial": s.initial, "max": s.max, "step": s.step, "add": s.add, "seeds": list(s.seeds),
                     "first_seed": s.first_seed},
        "factors": [{"key": f.key, "levels": list(f.levels), "letter": f.letter} for f in design.factors],
        "fraction": None if design.fraction is None else {"k": design.fraction.k,
                                                          "generators": list(design.fraction.generators)},
        "cells": [{"label": c.label, "overrides": dict(c.overrides), "codes": None if c.codes is None else list(c.codes),
                   "side": c.side, "arm_hash": c.arm_hash} for c in design.cells],
    }


def design_from_dict(tree: Mapping[str, Any]) -> Design:
    """The design `design_to_dict` recorded; KeyError/TypeError/ValueError on a malformed record."""
    s = tree["schedule"]
    fraction = tree.get("fraction")
    return Design(
        kind=tree["kind"],
        cells=tuple(DesignCell(c["label"], dict(c["overrides"]), None if c["codes"] is None else tuple(c["codes"]),
                               c.get("side"), c.get("arm_hash", "")) for c in tree["cells"]),
        schedule=Schedule(int(s["initial"]), int(s["max"]), int(s["step"]), str(s["add"]), tuple(s["seeds"]),
                          int(s["first_seed"])),
        factors=tuple(Factor(f["key"], tuple(f["levels"]), f["letter"]) for f in tree["factors"]),
        fraction=None if fraction is None else Fraction(int(fraction["k"]), tuple(fraction["generators"])),
        baseline=tree.get("baseline"),
    )
