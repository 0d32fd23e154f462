"""The claims of a sweep in its report: the analysis (`segsweep.analysis.analyse`) of the runs the
report reads, presented. Per claim, the author's words, its estimand, the effect on test Dice
with its CI, t and degrees of freedom, the verdict and what it means for the claim, and what an
open claim would need; claims settled without training or with no Dice verdict are listed apart.
For a fraction, the interactions that bear on each factor claim, and for a sweep run in rounds,
the sequential design and why the rounds stopped."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from pydantic import ValidationError

from ..analysis import Analysis, SequentialRecord, Settings, analyse
from ..analysis.arms import Study, same_level
from ..analysis.design import Design, DesignCell, Schedule, design_from_dict
from ..analysis.estimate import ClaimTerm
from ..analysis.records import ReportError, RunRecord, run_arm_hash
from ..analysis.verdicts import complete_rounds
from ..errors import validation_problem
from ..format import fmt_ci, fmt_delta, fmt_float, fmt_value
from ..sweeps.claims import ClaimSpec
from .markdown import table

OPPOSITE = {"better": "worse", "worse": "better"}


@dataclass(frozen=True)
class ClaimsView:
    """What the claims sections show: the claims as written, the analysis, the sweep's record."""

    claims: tuple[ClaimSpec, ...]
    analysis: Analysis
    record: SequentialRecord | None
    planned: int  # runs of the analysed rounds (all of them for a fixed design)
    missing: tuple[str, ...]  # planned runs without a counted record: "cell seed s"
    derived: bool  # the design was rebuilt from the runs (a sweep.yaml without one)
    values: Mapping[tuple[str, int], float]


def read_claims(sweep: Mapping[str, Any]) -> list[ClaimSpec]:
    """The claims of a resolved sweep.yaml ([] when it declares none)."""
    raw = sweep.get("claims") or []
    try:
        return [ClaimSpec.model_validate(c) for c in raw]
    except ValidationError as exc:
        key, message = validation_problem(exc.errors()[0])
        raise ReportError(f"sweep.yaml: claims: {key}: {message}") from None


def target_keys(claims: Sequence[ClaimSpec]) -> set[str]:
    """The keys that claims marked `target_changes` vary: Dice is not compared across them."""
    return {k for c in claims if c.target_changes for k in (*c.arm, *c.against)}


def find_arm(study: Study, overrides: Mapping[str, Any]) -> Any:
    """The arm whose settings are the baseline arm's with `overrides` applied."""
    if study.baseline_arm is None:
        return None
    target = {**study.baseline_arm.config, **overrides}
    for arm in study.arms:
        if all(same_level(arm.config.get(k), target.get(k)) for k in set(arm.config) | set(target)):
            return arm
    return None


# --------------------------------------------------------------------------- the analysis


def claims_view(study: Study, runs: Sequence[RunRecord], sweep: Mapping[str, Any], sweep_dir: Path | None,
                margin: float | None) -> ClaimsView | None:
    """The analysis of the sweep's claims on these runs (None: no claims). The design is the one
    sweep.yaml records; a sweep.yaml without one gets a single round of the arms the runs form."""
    claims = tuple(read_claims(sweep))
    if not claims and sweep.get("claim_terms"):  # a grid in rounds without claims: every arm vs the baseline
        claims = tuple(ClaimSpec.model_construct(id=c["id"], quote="(every arm against the baseline)", arm={},
                                                 against={}, expects=c["expects"], target_changes=False, trained=True,
                                                 note=None) for c in sweep["claim_terms"])
    if not claims:
        return None
    tree = sweep.get("design")
    if isinstance(tree, Mapping) and isinstance(sweep.get("claim_terms"), list):
        try:
            design = design_from_dict(tree)
            terms = tuple(ClaimTerm.from_dict(c) for c in sweep["claim_terms"])
            settings = Settings(**{k: v for k, v in (sweep.get("settings") or {}).items() if k != "paths"})
        except (KeyError, TypeError, ValueError) as exc:
            raise ReportError(f"sweep.yaml: design: malformed ({type(exc).__name__}: {exc})") from None
        by_hash = {c.arm_hash: c.label for c in design.cells}
        values = {}
        for r in runs:
            label = by_hash.get(run_arm_hash(r)) if r.counted else None
            if label is not None:
                values[(label, r.seed)] = r.test_dice
        derived = False
    else:
        design, terms, values = _derived(study, claims)
        settings = Settings()
        derived = True
    if margin is not None and derived:
        settings = Settings(margin=margin, alpha=settings.alpha, primary_share=settings.primary_share)
    in_rounds = design.kind == "fraction" or design.rounds_max > 1
    rounds = complete_rounds(design, values) if in_rounds else 1
    started = rounds
    if in_rounds:  # the rounds begun: the initial ones, and any with a run (one under way when stopped)
        started = max(design.schedule.initial, *(r.round for r in design.runs_through(design.rounds_max)
                                                 if (r.cell, r.seed) in values))
    planned_runs = design.runs_through(min(design.rounds_max, max(1, started)))
    missing = tuple(f"{r.cell} seed {r.seed}" for r in planned_runs if (r.cell, r.seed) not in values)
    record = None
    if sweep_dir is not None and (sweep_dir / "sequential.json").is_file():
        record = SequentialRecord.read(sweep_dir / "sequential.json")
    ended = record is not None and record.ended and record.rounds_done == rounds  # the rule stopped the rounds here
    analysis = analyse(design, terms, values, settings, rounds=max(rounds, 0) if in_rounds else 1, ended=ended)
    return ClaimsView(claims, analysis, record, len(planned_runs), missing, derived, values)


def _derived(study: Study, claims: Sequence[ClaimSpec]) -> tuple[Design, tuple[ClaimTerm, ...], dict]:
    """A cells design of one round from the arms the runs form, and the claims' arms found in it."""
    seeds = tuple(sorted({s for a in study.arms for s in a.by_seed}))
    cells = tuple(DesignCell(a.id, {}) for a in study.arms)
    base = study.baseline_arm.id if study.baseline_arm is not None else None
    design = Design("cells", cells, Schedule(initial=1, max=1, seeds=seeds), baseline=base)
    terms = []
    for claim in claims:
        if claim.target_changes or not claim.trained:
            continue
        arm, against = find_arm(study, claim.arm), find_arm(study, claim.against)
        if arm is None or against is None:
            continue
        terms.append(ClaimTerm(claim.id, claim.primary, claim.expects, pairs=((arm.id, against.id),)))
    values = {(a.id, s): r.test_dice for a in study.arms for s, r in a.by_seed.items()}
    return design, tuple(terms), values


# --------------------------------------------------------------------------- presentation


def _estimand(view: ClaimsView, term: ClaimTerm) -> str:
    design = view.analysis.design
    if term.factor is not None:
        f = design.fraction
        runs = sum(1 for r in design.runs_through(view.analysis.rounds_done) if design.cell(r.cell).side is None)
        what = f"2^({f.k}-{f.p}) fraction ({', '.join(f.generators)})" if f.p else f"2^{f.k} full factorial"
        return (f"main effect of `{term.factor}`, averaged over the other factors at both levels ({what}, "
                f"{runs} runs, each its own seed)")
    (arm, against), *rest = term.pairs
    if design.kind == "fraction":
        return f"`{arm}` vs `{against}` at the recipe (side arm, paired by seed): recipe-conditional"
    more = f" (averaged over {len(term.pairs)} grid cells)" if rest else ""
    return f"`{arm}` vs `{against}`{more}, paired by seed"


def _for_the_claim(claim: ClaimSpec, verdict: str) -> str:
    if verdict in ("open", "inconclusive"):
        return "not settled"
    if verdict == claim.expects:
        return "**supported**"
    return "**contradicted**" if verdict in ("better", "worse", "equivalent") else "—"


def _needed(result: Any) -> str:
    if result.looks is None or result.looks.verdict not in ("open", "inconclusive"):
        return "—"
    show = lambda n: str(n) if n is not None else "more than 10000 rounds"  # noqa: E731
    return f"{show(result.runs_to_detect)} to detect ±margin; {show(result.runs_for_equivalence)} to show equivalence"


def claims_lines(view: ClaimsView | None, study: Study) -> list[str]:
    """The "Claims" section (nothing when the sweep declares no claims)."""
    if view is None:
        return []
    a = view.analysis
    by_id = {r.claim.id: r for r in a.claims}
    s = a.settings
    lines = ["## Claims", ""]
    lines += [
        f"Each claim of the study in its own words, as its two arms compare it: Δ is the first arm's test Dice minus "
        f"the second's, from one least-squares model over every counted run (blocks for "
        f"{'rounds' if a.design.kind == 'fraction' else 'seeds'}, pooled error: {a.df:.0f} df, residual sd "
        f"{fmt_float(a.s)}). Verdicts: the primary hypothesis of each claim (no difference; equivalence within "
        f"±{s.margin:g} for a claim that expects equivalence) by Holm's procedure over the claims at α = "
        f"{s.alpha_primary:g}, the secondary (the other one) at {s.alpha - s.alpha_primary:g} split equally, "
        + ("group-sequentially over the looks (see *Sequential design*)" if a.design.rounds_max > 1 or
           a.design.kind == 'fraction' else "on the one look there is")
        + f"; so the chance of any false *better*/*worse* over all claims is at most α = {s.alpha:g}. "
        "*Runs needed* (power 0.8, from the pooled error so far) is given while a claim is open.", "",
    ]
    body = []
    for claim in view.claims:
        r = by_id.get(claim.id)
        if r is None:
            continue
        if r.estimate is None or r.looks is None:
            body.append((claim.id, f"“{claim.quote}”", _arms_text(claim), "not estimable from these runs", "—", "—",
                         "—", "—", "—"))
            continue
        e = r.estimate
        verdict = r.looks.verdict + ("" if r.pooled else " (own paired differences)")
        body.append((claim.id, f"“{claim.quote}”", _estimand(view, r.claim), fmt_delta(e.value), fmt_ci(e.ci),
                     f"{e.t:.2f} ({e.df:.0f})", f"**{verdict}**" + (f" at look {r.looks.look}"
                                                                   if r.looks.verdict not in ("open", "inconclusive") else ""),
                     _for_the_claim(claim, r.looks.verdict), _needed(r)))
    lines += table(["claim", "in the study's words", "estimand", "Δ test Dice", "95% CI", "t (df)", "verdict",
                    "for the claim", "runs needed"], body)
    lines += _transfer_lines(view)
    apart = [c for c in view.claims if c.target_changes or not c.trained or c.id not in by_id]
    if apart:
        lines += ["Claims settled without training or with no Dice verdict (not counted above):", ""]
        for c in apart:
            why = ("another target: no Dice is compared across targets" if c.target_changes
                   else "not trained" if not c.trained else "its arms are not in these runs")
            lines.append(f"- **{c.id}** (“{c.quote}”): {why}" + (f"; {c.note}" if c.note else ""))
        lines.append("")
    notes = [f"- **{c.id}** ({_arms_text(c)}): {c.note}" for c in view.claims
             if c.note and not (c.target_changes or not c.trained or c.id not in by_id)]
    conclusive = sum(1 for r in a.claims if r.looks and r.looks.verdict in ("better", "worse", "equivalent"))
    lines += [f"**{conclusive} of {len(a.claims)} trained claims conclusive** (better, worse or equivalent).", ""]
    return lines + (notes + [""] if notes else [])


def _transfer_lines(view: ClaimsView) -> list[str]:
    """For each factor claim: its estimable interaction chains, and whether the effect transfers to the recipe."""
    rows = [r for r in view.analysis.claims if r.claim.factor is not None and r.estimate is not None]
    if not rows:
        return []
    m = view.analysis.settings.margin
    lines = ["", f"**At the recipe.** A main effect is averaged over the other factors; it *transfers to the recipe* "
             f"only when every estimable two-factor interaction chain with its factor has a 95% CI inside ±{m:g} "
             "(else: *effect at the recipe not established*). Interactions are flagged when their test rejects at "
             f"0.05 / (chains) (Bonferroni); the power of a flag for an interaction as large as the margin is "
             f"{fmt_float(view.analysis.interaction_power, 2)}.", ""]
    for r in rows:
        chains = "; ".join(f"{' = '.join(ch.members)} {fmt_delta(ch.estimate.value)} {fmt_ci(ch.estimate.ci)}"
                           + (" **flagged**" if ch.flagged else "") for ch in r.chains) or "none estimable"
        aliased = r.aliased
        verdict = "transfers to the recipe" if r.transfers else "effect at the recipe not established" + (
            " (some of its two-factor interactions are aliased with main effects)" if aliased else "")
        lines.append(f"- **{r.claim.id}**: {verdict}; interactions: {chains}")
    return lines + [""]


def _arms_text(claim: ClaimSpec) -> str:
    show = lambda o: ", ".join(f"{k}={fmt_value(v)}" for k, v in o.items()) or "the recipe"  # noqa: E731
    return f"{show(claim.arm)} vs {show(claim.against)}"


def sequential_lines(view: ClaimsView | None) -> list[str]:
    """The "Sequential design" section of a sweep run in rounds."""
    if view is None or view.record is None:
        return []
    rec, a = view.record, view.analysis
    lines = ["## Sequential design", "",
             f"- **Design:** {rec.design}.",
             f"- **Rule, fixed before the first run:** looks after rounds {', '.join(map(str, rec.planned_looks))}; "
             f"Lan-DeMets O'Brien-Fleming-type spending per hypothesis over its information fraction; boundaries on the "
             f"pooled t statistics simulated through the design of every look; Holm over the primaries in the "
             f"graphical form for group-sequential designs (Maurer & Bretz 2013) at α {rec.alpha * rec.primary_share:g}, "
             f"secondaries at {rec.alpha * (1 - rec.primary_share):g} split equally; a non-binding futility stop "
             "(no further round when no open claim has a conditional power of 0.1 to be settled by the last round); "
             f"margin ±{rec.margin:g}.",
             f"- **Done:** {rec.rounds_done} round(s), {rec.looks_done} look(s), {rec.runs_used} runs; stopped: "
             f"{rec.stopped_by}."]
    if rec.excluded_sides:
        lines.append(f"- **Variance check:** side arm(s) {', '.join(rec.excluded_sides)} spread more than the pooled "
                     "error allows at the first look (F test, 0.05): compared by their own paired differences, left "
                     "out of the pooled error.")
    agree = all((c.verdict, c.look) == (_verdict(a, c.id)) for c in rec.claims)
    lines.append("- **Replayed from the records:** " + ("the verdicts above are the ones the rounds reached."
                                                       if agree else "**the records give other verdicts than the "
                                                       "rounds recorded** (runs added or removed since?)."))
    lines += ["", *table(["claim", "verdict", "look", "primary", "level", "boundary |t|", "secondary level",
                          "boundary", "conditional power"],
                         [(c.id, c.verdict, str(c.look or "—"), c.primary, _g(c.primary_level), _g(c.primary_boundary, 2),
                           _g(c.secondary_level), _g(c.secondary_boundary, 2), _g(c.conditional_power, 2))
                          for c in rec.claims])]
    return lines


def _verdict(a: Analysis, claim_id: str) -> tuple[str, int | None]:
    r = next((r for r in a.claims if r.claim.id == claim_id), None)
    if r is None or r.looks is None:
        return "not estimable", None
    return r.looks.verdict, r.looks.look


def _g(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.{digits}g}"
