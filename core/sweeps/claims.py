"""Claims a sweep tests (`claims:` in a sweep file): each names a claim in its author's words and
the two arms that settle it. `resolve_claims` matches both sides by their validated values (so
`0` and `0.0`, `1e-4` and `1.0e-4` are the same arm) and turns each claim into what the analysis
compares: two cells (averaged over any grid parameter the claim leaves open), a fraction
factor's two levels, or a side arm against the recipe or another side arm."""
from __future__ import annotations

import json
from typing import Any, Literal, Mapping, Sequence, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt

from ..analysis.design import Design, DesignCell
from ..analysis.estimate import ClaimTerm
from ..errors import SpecError
from ..format import fmt_value
from ..spec import ExperimentSpec, arm_hash, override_spec

Scalar = Union[StrictBool, StrictInt, StrictFloat, str, None]


class ClaimSpec(BaseModel):
    """One claim: `arm` compared with `against` (overrides of the base experiment; `{}` is the
    base experiment itself, the recipe). `expects` is what the claim says `arm` does to test Dice
    against `against`: its primary hypothesis is the difference (better, worse) or, for
    `equivalent`, equivalence within the margin. `target_changes: true` marks arms scored on
    different targets (e.g. `data.mask`): their Dice measure different tasks, so the report gives
    each arm's own Dice and no comparison."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.+-]+$")
    quote: str = Field(min_length=1)  # the claim in the study's own words
    arm: dict[str, Scalar]
    against: dict[str, Scalar] = {}
    expects: Literal["better", "worse", "equivalent"] = "better"
    target_changes: bool = False
    trained: bool = True  # false: settled without training (listed apart, e.g. not reproducible)
    note: str | None = None  # what the comparison does and does not reproduce

    @property
    def primary(self) -> Literal["difference", "equivalence"]:
        return "equivalence" if self.expects == "equivalent" else "difference"


def canonical(overrides: Mapping[str, Any]) -> str:
    """An arm's overrides as one comparable string (as written; matching is by `resolve_claims`)."""
    return json.dumps(dict(overrides), sort_keys=True)


def check_claim_ids(claims: Sequence[ClaimSpec] | None) -> tuple[str, str] | None:
    """(dotted key, problem) for the first repeated claim id, else None."""
    seen: set[str] = set()
    for i, claim in enumerate(claims or ()):
        if claim.id in seen:
            return f"claims[{i}].id", f"{claim.id!r} is used by an earlier claim; ids must be unique"
        seen.add(claim.id)
    return None


def _show(overrides: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {fmt_value(v)}" for k, v in overrides.items()) + "}" if overrides else "{} (the base experiment)"


def resolve_claims(path: Any, claims: Sequence[ClaimSpec], base: ExperimentSpec, design: Design,
                   grid_keys: Sequence[str] = ()) -> tuple[ClaimTerm, ...]:
    """Each trained claim as the analysis compares it; a side that matches no arm is one line
    naming the claim, the side and the arms there are."""
    out = []
    for i, claim in enumerate(claims):
        if claim.target_changes or not claim.trained:
            continue
        where = f"{path}: claims[{i}]"
        if design.kind == "fraction":
            out.append(_fraction_claim(where, claim, base, design))
        else:
            out.append(_cells_claim(where, claim, base, design, grid_keys))
    return tuple(out)


def _validated(where: str, side: str, base: ExperimentSpec, overrides: Mapping[str, Any]) -> ExperimentSpec:
    try:
        return override_spec(base, dict(overrides))
    except SpecError as exc:
        raise SpecError(f"{where}.{side}: {_show(overrides)} is not a valid arm: {exc}") from None


def _cells_claim(where: str, claim: ClaimSpec, base: ExperimentSpec, design: Design,
                 grid_keys: Sequence[str]) -> ClaimTerm:
    """Cells whose arm is each side, paired by the grid parameters' values the claim leaves open."""
    sides = {}
    for side in ("arm", "against"):
        overrides = dict(getattr(claim, side))
        _validated(where, side, base, overrides)
        found = {}
        for cell in design.cells:
            open_ = {k: cell.overrides[k] for k in grid_keys if k in cell.overrides and k not in overrides}
            target = arm_hash(override_spec(base, {**open_, **overrides}))
            if target == cell.arm_hash:
                found[json.dumps(open_, sort_keys=True, default=str)] = cell.label
        if not found:
            arms = "; ".join(c.label for c in design.cells)
            raise SpecError(f"{where}.{side}: {_show(overrides)} is not one of the sweep's arms (matched by value); "
                            f"the arms: {arms}")
        sides[side] = found
    pairs = tuple((sides["arm"][k], sides["against"][k]) for k in sides["arm"] if k in sides["against"])
    if not pairs:
        raise SpecError(f"{where}: its two arms share no grid cell to compare ({_show(claim.arm)} vs "
                        f"{_show(claim.against)})")
    if all(a == b for a, b in pairs):
        raise SpecError(f"{where}.against: {_show(claim.against)} is the same arm as claims.arm {_show(claim.arm)} "
                        "(equal validated values); a claim compares two different arms")
    return ClaimTerm(claim.id, claim.primary, claim.expects, pairs=pairs)


def _fraction_claim(where: str, claim: ClaimSpec, base: ExperimentSpec, design: Design) -> ClaimTerm:
    """A factor's two levels, or a side arm against the recipe or another side arm."""
    recipe = design.recipe
    levels: dict[str, tuple[str, int]] = {}
    for side in ("arm", "against"):
        overrides = dict(getattr(claim, side))
        spec = _validated(where, side, base, overrides)
        kind = _fraction_side(spec, overrides, base, design)
        if kind is None:
            factors = ", ".join(f"{f.key}: [{fmt_value(f.levels[0])}, {fmt_value(f.levels[1])}]" for f in design.factors)
            arms = "; ".join(c.label for c in design.side_arms) or "none"
            raise SpecError(f"{where}.{side}: {_show(overrides)} is neither a level of one factor (factors: {factors}) "
                            f"nor the recipe ({{}}) nor a side arm (side arms: {arms})")
        levels[side] = kind
    (a_kind, a_value), (b_kind, b_value) = levels["arm"], levels["against"]
    if a_kind == b_kind == "factor" and a_value[0] == b_value[0] and a_value[1] != b_value[1]:
        return ClaimTerm(claim.id, claim.primary, claim.expects, factor=a_value[0], sign=1 if a_value[1] == 0 else -1)
    if a_kind != "factor" and b_kind != "factor" and a_value != b_value:
        return ClaimTerm(claim.id, claim.primary, claim.expects, pairs=((a_value, b_value),))
    if a_kind == "factor" and b_kind == "cell" and b_value == recipe.label or \
            b_kind == "factor" and a_kind == "cell" and a_value == recipe.label:
        key, level = a_value if a_kind == "factor" else b_value
        if level == 1:
            sign = 1 if a_kind == "cell" else -1
            return ClaimTerm(claim.id, claim.primary, claim.expects, factor=key, sign=sign)
    raise SpecError(f"{where}: in a fraction a claim compares the two levels of one factor, or a side arm with the "
                    f"recipe or another side arm; arm {_show(claim.arm)} and against {_show(claim.against)} are not "
                    "such a pair")


def _fraction_side(spec: ExperimentSpec, overrides: Mapping[str, Any], base: ExperimentSpec,
                   design: Design) -> tuple[str, Any] | None:
    """("factor", (key, level index)) for one factor at a level (the recipe's elsewhere), ("cell",
    label) for the recipe or a side arm, or None."""
    target = arm_hash(spec)
    if target == design.recipe.arm_hash:
        return "cell", design.recipe.label
    side = next((c for c in design.side_arms if c.arm_hash == target), None)
    if side is not None:
        return "cell", side.label
    if len(overrides) == 1:
        key = next(iter(overrides))
        factor = next((f for f in design.factors if f.key == key), None)
        if factor is not None:
            for index, level in enumerate(factor.levels):
                if arm_hash(override_spec(base, {key: level})) == target:
                    return "factor", (key, index)
    return None


def implicit_claims(design: Design, grid_keys: Sequence[str] = ()) -> tuple[ClaimTerm, ...]:
    """A grid in rounds that declares no claims settles every arm against the base experiment's
    cell (the baseline), averaged over any grid parameter; none without a baseline cell."""
    if design.kind != "cells" or design.baseline is None:
        return ()
    base = design.cell(design.baseline)
    fixed = {k: v for k, v in base.overrides.items() if k not in grid_keys}

    def arm(cell: DesignCell) -> str:
        return json.dumps({k: v for k, v in cell.overrides.items() if k not in grid_keys}, sort_keys=True, default=str)

    def grid(cell: DesignCell) -> str:
        return json.dumps({k: cell.overrides.get(k) for k in grid_keys}, sort_keys=True, default=str)

    baseline_arm = json.dumps(fixed, sort_keys=True, default=str)
    against = {grid(c): c.label for c in design.cells if arm(c) == baseline_arm}
    claims = []
    for key in dict.fromkeys(arm(c) for c in design.cells):
        if key == baseline_arm:
            continue
        pairs = tuple((c.label, against[grid(c)]) for c in design.cells if arm(c) == key and grid(c) in against)
        if pairs:
            claims.append(ClaimTerm(pairs[0][0] if len(pairs) == 1 else key, "difference", "better", pairs=pairs))
    return tuple(claims)
