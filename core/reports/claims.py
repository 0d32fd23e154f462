"""The claims table that opens an ablation report when its sweep declares `claims:`: per claim,
the author's words, the two arms compared, the effect on test Dice with its CIs, the seeds used,
the verdict, what it means for the claim, and the seeds a still open comparison would need."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

from pydantic import ValidationError

from . import stats
from ..format import fmt_ci, fmt_delta, fmt_float
from ..sweeps.claims import ClaimSpec
from .design import Arm, Study, same_level
from .inference import Contrast, Evidence, contrast, image_evidence, seed_evidence, verdict
from .markdown import table
from .power import count_text, seeds_needed
from .records import ReportError

OPPOSITE = {"better": "worse", "worse": "better"}


@dataclass(frozen=True)
class ClaimRow:
    claim: ClaimSpec
    arm: Arm | None  # None: no arm of these runs has the claim's settings
    against: Arm | None
    contrast: Contrast | None = None  # None: not compared (arms missing, no shared seed, target changes)
    by_seed: Evidence | None = None
    by_image: Evidence | None = None
    verdict: str = ""
    needed: str | None = None  # the seeds-needed cell, when the sequential record gives it


def read_claims(sweep: Mapping[str, Any]) -> list[ClaimSpec]:
    """The claims of a resolved sweep.yaml ([] when it declares none)."""
    raw = sweep.get("claims") or []
    try:
        return [ClaimSpec.model_validate(c) for c in raw]
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"])
        raise ReportError(f"sweep.yaml: claims: {where}: {error['msg']}") from None


def target_keys(claims: Sequence[ClaimSpec]) -> set[str]:
    """The keys that claims marked `target_changes` vary: Dice is not compared across them."""
    return {k for c in claims if c.target_changes for k in (*c.arm, *c.against)}


def find_arm(study: Study, overrides: Mapping[str, Any]) -> Arm | None:
    """The arm whose settings are the baseline arm's with `overrides` applied."""
    if study.baseline_arm is None:
        return None
    target = {**study.baseline_arm.config, **overrides}
    for arm in study.arms:
        if all(same_level(arm.config.get(k), target.get(k)) for k in set(arm.config) | set(target)):
            return arm
    return None


def claim_rows(study: Study, claims: Sequence[ClaimSpec], margin: float, alpha: float, resamples: int,
               seed: int) -> list[ClaimRow]:
    """Each claim's comparison `arm` - `against`, paired by seed and test image; Holm over the
    claims compared (one family per test, as in the effects table)."""
    rows = []
    for claim in claims:
        row = ClaimRow(claim, find_arm(study, claim.arm), find_arm(study, claim.against))
        if row.arm is not None and row.against is not None and not claim.target_changes:
            c = contrast([(1.0, row.arm), (-1.0, row.against)])
            if c.seeds:
                by_image = image_evidence(c.image_values, margin, resamples, seed) if c.image_values else None
                row = replace(row, contrast=c, by_seed=seed_evidence(c.seed_values, margin), by_image=by_image)
        rows.append(row)
    for unit in ("by_seed", "by_image"):
        for get, set_ in (("p", "p_holm"), ("p_tost", "p_tost_holm")):
            owners = [i for i, r in enumerate(rows) if getattr(r, unit) is not None]
            adjusted = stats.holm([getattr(getattr(rows[i], unit), get) for i in owners])
            for i, p in zip(owners, adjusted):
                rows[i] = replace(rows[i], **{unit: replace(getattr(rows[i], unit), **{set_: p})})
    return [replace(r, verdict=verdict(r.by_seed, r.by_image, alpha, margin)) if r.by_seed else r for r in rows]


def _sequential(row: ClaimRow, record: Mapping[str, Any]) -> ClaimRow:
    """The row with the adaptive driver's verdict for its claim (sequential.json), when it has one."""
    found = next((c for c in record.get("comparisons", []) if c.get("claim") == row.claim.id), None)
    if found is None or row.by_seed is None:
        return row
    needed = "—" if found["verdict"] != "inconclusive" else (
        f"{count_text(found.get('seeds_to_detect'))} to detect ±{record.get('margin'):g}; "
        f"{count_text(found.get('seeds_for_equivalence'))} to show equivalence")
    return replace(row, verdict=found["verdict"], needed=needed)


def _for_the_claim(row: ClaimRow) -> str:
    if row.by_seed is None:
        return "—"
    said = row.claim.expects
    if row.verdict.startswith(said):
        return "**supported**"
    if row.verdict == "inconclusive":
        return "not settled"
    return "**contradicted**" if row.verdict.startswith(("better", "worse", "equivalent")) else "—"


def _seeds_cell(row: ClaimRow, detect: float, margin: float, alpha: float, compared: int) -> str:
    if row.contrast is None or row.verdict != "inconclusive":
        return "—"
    need = seeds_needed(row.contrast.seed_values, detect, margin, alpha, compared)
    detect_n = f"{need.to_detect}" if need.to_detect is not None else "more than the search limit"
    equiv = f"{need.to_show_equivalence}" if need.to_show_equivalence is not None else "more than the search limit"
    return f"{detect_n} to detect ±{detect:g}; {equiv} to show equivalence"


def _unmatched(row: ClaimRow) -> str:
    missing = [f"`{side}` {dict(getattr(row.claim, side)) or '{} (baseline)'}"
               for side, arm in (("arm", row.arm), ("against", row.against)) if arm is None]
    if missing:
        return "no arm of these runs has " + " or ".join(missing)
    if row.claim.target_changes:
        own = lambda a: fmt_float(_mean([r.test_dice for r in a.by_seed.values()]))  # noqa: E731
        return (f"not compared: the target changes, so the two Dice measure different tasks "
                f"({row.arm.id} {own(row.arm)} on its own target, {row.against.id} {own(row.against)})")
    return "no seed has a counted run in both arms"


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def claims_lines(study: Study, sweep: Mapping[str, Any], margin: float, alpha: float, resamples: int,
                 seed: int, detect: float | None = None) -> list[str]:
    """The "Claims" section (nothing when the sweep declares no claims); seeds needed to detect
    `detect` (default: the margin)."""
    claims = read_claims(sweep)
    if not claims:
        return []
    rows = claim_rows(study, claims, margin, alpha, resamples, seed)
    record = sweep.get("sequential") if isinstance(sweep.get("sequential"), Mapping) else None
    if record is not None:  # adaptive seeds: the design's verdicts, not the fixed-sample ones
        rows = [_sequential(r, record) for r in rows]
    compared = sum(r.by_seed is not None for r in rows)
    if record is None:
        how = (f"Verdicts as in the effects table below, with Holm over the {compared} claim(s) compared here (so "
               f"a verdict can differ from that table's for the same pair). *Seeds needed* (power 0.8 at "
               f"α/{compared}, from the per-seed differences so far) is given where the verdict is still open.")
    else:
        how = (f"Seeds were added in rounds until each claim was settled: the verdicts are the sequential design's "
               f"(seed level, α = {record.get('alpha'):g} over the {record.get('comparisons_in_family')} claims "
               "compared, see *Sequential design* below), whose error rates hold over the repeated looks; the CIs "
               "are fixed-sample and show the size of each effect. *Seeds needed* (power 0.8, from the per-seed "
               f"differences) to detect a ±{record.get('margin'):g} difference / to show equivalence is given where "
               "the verdict is still open.")
    lines = ["## Claims", "",
             "Each claim of the study, in its own words, settled by the two arms named: Δ is the first arm's test "
             f"Dice minus the second's, paired by seed (t CI) and by test image (bootstrap CI). {how}", ""]
    body = []
    for r in rows:
        arms = (f"{r.arm.id} vs {r.against.id}" if r.arm is not None and r.against is not None else "—")
        if r.by_seed is None:
            body.append((r.claim.id, f"“{r.claim.quote}”", arms, _unmatched(r), "—", "—", "—", "—", "—", "—"))
            continue
        img = r.by_image
        body.append((
            r.claim.id, f"“{r.claim.quote}”", arms, fmt_delta(r.by_seed.mean), fmt_ci(r.by_seed.ci),
            fmt_ci(img.ci) if img else "—", str(r.by_seed.n), r.verdict, _for_the_claim(r),
            r.needed if r.needed is not None else _seeds_cell(r, detect or margin, margin, alpha, compared),
        ))
    lines += table(["claim", "in the study's words", "arms", "Δ test Dice", "95% CI (t, seeds)",
                    "95% CI (bootstrap, images)", "seeds", "verdict", "for the claim", "seeds needed"], body)
    notes = [f"- **{r.claim.id}** ({_arm_text(r)}): {r.claim.note}" for r in rows if r.claim.note]
    return lines + (notes + [""] if notes else [])


def _arm_text(row: ClaimRow) -> str:
    show = lambda o: ", ".join(f"{k}={v}" for k, v in o.items()) or "baseline"  # noqa: E731
    return f"{show(row.claim.arm)} vs {show(row.claim.against)}"

