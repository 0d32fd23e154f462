"""One least-squares model per look over every run of a design, and each claim's estimate from it.

The model's columns: an intercept; one block per group of runs sharing a seed in a round (a
fraction's runs without a partner share their round's block); then, for a `cells` design, one
mean per cell; for a `fraction`, the factors' main effects (±1 codes), every estimable
two-factor-interaction alias chain (one column per chain, found from the runs themselves, so a
fold-over round splits chains as it should) and one term per side arm. The residuals of all runs
give one pooled error variance.

A claim's estimate is a contrast of those coefficients in test-Dice units: for a factor, the
change from its other level to the level named first, averaged over the fraction (2 x its
coefficient); for cells and side arms, the difference of the two cells (a side arm's term is its
difference from the recipe run of the same seed). A side arm whose spread differs from the
pooled error (`variance_check`) leaves the pooled model and is compared by its own paired
differences instead (a Welch-type fallback).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Literal, Mapping, Sequence

import numpy as np

from .design import Design, PlannedRun
from .model import Estimate, LinearFit, fit, paired

VARIANCE_CHECK_LEVEL = 0.05  # one-sided F test of a side arm's spread against the pooled error


@dataclass(frozen=True)
class ClaimTerm:
    """What a claim compares, resolved against the design.

    `factor`: a fraction factor's key (Δ = its first level - its second, times `sign`);
    otherwise `pairs` of cell labels (arm, against), averaged."""

    id: str
    primary: Literal["difference", "equivalence"]
    expects: Literal["better", "worse", "equivalent"]
    factor: str | None = None
    sign: int = 1
    pairs: tuple[tuple[str, str], ...] = ()

    @property
    def sides(self) -> set[str]:
        return {label for pair in self.pairs for label in pair}

    def to_dict(self) -> dict:
        return {"id": self.id, "primary": self.primary, "expects": self.expects, "factor": self.factor,
                "sign": self.sign, "pairs": [list(p) for p in self.pairs]}

    @classmethod
    def from_dict(cls, tree: Mapping) -> "ClaimTerm":
        return cls(tree["id"], tree["primary"], tree["expects"], tree.get("factor"), int(tree.get("sign", 1)),
                   tuple((str(a), str(b)) for a, b in tree.get("pairs", ())))


@dataclass(frozen=True)
class Columns:
    names: tuple[str, ...]
    matrix: np.ndarray  # (n, p)
    chains: tuple[tuple[str, ...], ...]  # fraction: each retained 2fi column's alias chain ("model.a*model.b", ...)

    def index(self, name: str) -> int:
        return self.names.index(name)


def _blocks(runs: Sequence[PlannedRun]) -> list[str]:
    return list(dict.fromkeys(run.group for run in runs))


def columns(design: Design, runs: Sequence[PlannedRun], excluded_sides: frozenset[str] = frozenset()) -> Columns:
    """The model's columns for `runs` (rows in that order); side arms in `excluded_sides` must
    not be among the runs."""
    n = len(runs)
    names: list[str] = ["intercept"]
    cols: list[np.ndarray] = [np.ones(n)]
    blocks = _blocks(runs)
    for block in blocks[1:]:
        names.append(f"block {block}")
        cols.append(np.array([1.0 if r.group == block else 0.0 for r in runs]))
    chains: list[tuple[str, ...]] = []
    if design.kind == "cells":
        present = list(dict.fromkeys(r.cell for r in runs))
        reference = design.baseline if design.baseline in present else present[0]
        for label in present:
            if label != reference:
                names.append(f"cell {label}")
                cols.append(np.array([1.0 if r.cell == label else 0.0 for r in runs]))
    else:
        codes = np.array([design.cell(r.cell).codes for r in runs], dtype=float).reshape(n, len(design.factors))
        for j, factor in enumerate(design.factors):
            names.append(f"main {factor.key}")
            cols.append(codes[:, j])
        fraction_rows = np.array([design.cell(r.cell).side is None for r in runs])
        for members in interaction_chains(design, codes[fraction_rows]):
            i, j = members[0]
            names.append("chain " + " = ".join(f"{design.factors[a].key}*{design.factors[b].key}" for a, b in members))
            cols.append(codes[:, i] * codes[:, j])
            chains.append(tuple(f"{design.factors[a].key}*{design.factors[b].key}" for a, b in members))
        for arm in design.side_arms:
            if arm.side in excluded_sides:
                continue
            names.append(f"side {arm.label}")
            cols.append(np.array([1.0 if r.cell == arm.label else 0.0 for r in runs]))
    return Columns(tuple(names), np.column_stack(cols), tuple(chains))


def interaction_chains(design: Design, codes: np.ndarray) -> list[list[tuple[int, int]]]:
    """The two-factor interactions estimable beside the main effects in these fraction rows,
    grouped into alias chains (columns equal or opposite over the rows); a chain aliased with a
    main effect or the intercept is left out (resolution III: the main effect carries it)."""
    k = codes.shape[1]
    if codes.shape[0] == 0 or k < 2:
        return []
    taken = [np.ones(codes.shape[0])] + [codes[:, j] for j in range(k)]
    chains: list[list[tuple[int, int]]] = []
    reps: list[np.ndarray] = []
    for i, j in itertools.combinations(range(k), 2):
        col = codes[:, i] * codes[:, j]
        if any(np.array_equal(col, t) or np.array_equal(col, -t) for t in taken):
            continue
        for chain, rep in zip(chains, reps):
            if np.array_equal(col, rep) or np.array_equal(col, -rep):
                chain.append((i, j))
                break
        else:
            chains.append([(i, j)])
            reps.append(col)
    return chains


def contrast(design: Design, cols: Columns, claim: ClaimTerm) -> np.ndarray:
    """The claim's contrast vector over `cols` (in test-Dice units)."""
    c = np.zeros(len(cols.names))
    if claim.factor is not None:
        c[cols.index(f"main {claim.factor}")] = 2.0 * claim.sign
        return c
    for arm, against in claim.pairs:
        for label, weight in ((arm, 1.0), (against, -1.0)):
            name = _cell_column(design, label)
            if name is not None and name in cols.names:
                c[cols.index(name)] += weight / len(claim.pairs)
    return c


def _cell_column(design: Design, label: str) -> str | None:
    """The column holding a cell's effect (None: the reference, with effect 0)."""
    if design.kind == "fraction":
        return f"side {label}" if design.cell(label).side is not None else None
    return f"cell {label}"


@dataclass(frozen=True)
class Look:
    """The model fitted to the runs of the rounds done so far."""

    runs: tuple[PlannedRun, ...]  # the runs in the pooled model, in design order
    runs_all: tuple[PlannedRun, ...]  # every run of the look with an outcome (excluded side arms too)
    y: np.ndarray
    cols: Columns
    fit: LinearFit
    excluded_sides: frozenset[str]  # side arms compared by their own paired differences


def fit_look(design: Design, runs: Sequence[PlannedRun], values: Mapping[tuple[str, int], float],
             excluded_sides: frozenset[str] = frozenset()) -> Look:
    """Fit the model to the runs that have an outcome in `values` ((cell, seed) -> test Dice)."""
    present = tuple(r for r in runs if (r.cell, r.seed) in values)
    kept = tuple(r for r in present if design.cell(r.cell).side not in excluded_sides)
    y = np.array([values[(r.cell, r.seed)] for r in kept], dtype=float)
    cols = columns(design, kept, excluded_sides)
    return Look(kept, present, y, cols, fit(cols.matrix, y), excluded_sides)


def claim_estimate(design: Design, look: Look, claim: ClaimTerm, values: Mapping[tuple[str, int], float],
                   confidence: float = 0.95) -> Estimate | None:
    """The claim's estimate at this look (None: not estimable yet). Claims touching a side arm
    excluded from the pooled model use the paired differences of their two cells by seed."""
    if claim.sides & set(_excluded_labels(design, look)):
        return paired(paired_differences(design, claim, look.runs_all, values), confidence)
    c = contrast(design, look.cols, claim)
    if not look.fit.estimable(c) or not np.any(c):
        return None
    return look.fit.estimate(c, confidence)


def _excluded_labels(design: Design, look: Look) -> list[str]:
    return [c.label for c in design.side_arms if c.side in look.excluded_sides]


def paired_differences(design: Design, claim: ClaimTerm, runs: Sequence[PlannedRun],
                       values: Mapping[tuple[str, int], float]) -> np.ndarray:
    """Per seed shared by both cells of each pair: arm - against, averaged over the pairs."""
    seeds_of: dict[str, dict[int, float]] = {}
    for r in runs:
        if (r.cell, r.seed) in values:
            seeds_of.setdefault(r.cell, {})[r.seed] = values[(r.cell, r.seed)]
    common = sorted(set.intersection(*(set(seeds_of.get(label, {})) for label in claim.sides)) if claim.sides else ())
    k = len(claim.pairs)
    return np.array([sum(seeds_of[a][s] - seeds_of[b][s] for a, b in claim.pairs) / k for s in common])


def variance_check(design: Design, runs: Sequence[PlannedRun], values: Mapping[tuple[str, int], float],
                   pooled: LinearFit, already: frozenset[str] = frozenset()) -> frozenset[str]:
    """Side arms whose paired differences from the recipe spread more than the pooled error
    allows: F = var(d) / (2 s2) above its one-sided `VARIANCE_CHECK_LEVEL` critical value on
    (pairs - 1, pooled df). Once excluded, an arm stays excluded (the decision is not revisited)."""
    from scipy import stats

    recipe = design.recipe
    if design.kind != "fraction" or recipe is None or not math.isfinite(pooled.s2) or pooled.s2 <= 0:
        return already
    out = set(already)
    for arm in design.side_arms:
        if arm.side in out:
            continue
        d = paired_differences(design, ClaimTerm("check", "difference", "better", pairs=((arm.label, recipe.label),)),
                               runs, values)
        if d.size < 2:
            continue
        f = float(d.var(ddof=1)) / (2 * pooled.s2)
        if f > stats.f.ppf(1 - VARIANCE_CHECK_LEVEL, d.size - 1, pooled.df):
            out.add(arm.side)
    return frozenset(out)
