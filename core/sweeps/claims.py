"""Claims a sweep tests (`claims:` in a sweep file): each names a claim in its author's words and
the two arms of the sweep that settle it; the ablation report opens with their table."""
from __future__ import annotations

import json
from typing import Any, Literal, Mapping, Sequence, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt

Scalar = Union[StrictBool, StrictInt, StrictFloat, str, None]


class ClaimSpec(BaseModel):
    """One claim: `arm` compared with `against` (both entries of the sweep's `arms`; `{}` is the
    baseline). `expects` is what the claim says `arm` does to test Dice against `against`.
    `target_changes: true` marks arms scored on different targets (e.g. `data.mask`): their Dice
    measure different tasks, so the report gives each arm's own Dice and no comparison."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.+-]+$")
    quote: str = Field(min_length=1)  # the claim in the study's own words
    arm: dict[str, Scalar]
    against: dict[str, Scalar] = {}
    expects: Literal["better", "worse", "equivalent"] = "better"
    target_changes: bool = False
    note: str | None = None  # what the comparison does and does not reproduce


def canonical(overrides: Mapping[str, Any]) -> str:
    """An arm's overrides as one comparable string (how claims name arms)."""
    return json.dumps(dict(overrides), sort_keys=True)


def check_claims(claims: Sequence[ClaimSpec] | None, arms: Sequence[Mapping[str, Any]] | None) -> tuple[str, str] | None:
    """(dotted key, problem) for the first claim that does not name two arms of the sweep, else None."""
    if not claims:
        return None
    if arms is None:
        return "claims", "claims compare arms: give `arms:` (method grid)"
    known = {canonical(a) for a in arms}
    seen: set[str] = set()
    for i, claim in enumerate(claims):
        if claim.id in seen:
            return f"claims[{i}].id", f"{claim.id!r} is used by an earlier claim; ids must be unique"
        seen.add(claim.id)
        for side in ("arm", "against"):
            overrides = getattr(claim, side)
            if canonical(overrides) not in known:
                return f"claims[{i}].{side}", f"{dict(overrides)} is not one of the sweep's arms"
        if canonical(claim.arm) == canonical(claim.against):
            return f"claims[{i}].against", "a claim compares two different arms"
    return None
