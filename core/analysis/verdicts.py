"""`analyse(design, claims, values, settings)`: every claim's estimate, CI and sequential verdict
after the rounds done, the interactions that bear on each factor claim, what an open claim would
need, and whether another round can still settle anything. The adaptive rounds and the report
both call it with the same outcomes, so a round's verdict and the report's row are the same
numbers by construction.

The statistics of every look come from one object (`LookStatistics`) that maps outcome vectors
over the planned runs to each claim's estimate and standard error at each look: applied to the
observed outcomes it gives the verdicts' statistics, applied to pure noise the null paths behind
the boundaries, applied to simulated studies the operating characteristics (`operating.py`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from .design import Design, PlannedRun
from .estimate import ClaimTerm, Look, columns, contrast, fit_look, variance_check
from .looks import (
    FUTILITY_POWER, SIMULATIONS, Boundaries, ClaimLooks, NullLooks, conditional_power, decide, simulate_null,
)
from .model import Estimate, Projection

INTERACTION_ALPHA = 0.05  # interaction flags: Bonferroni over the chains of the last look
POWER = 0.8  # of "runs needed"
MAX_ROUNDS_NEEDED = 10_000  # beyond this, "runs needed" is "more than"


@dataclass(frozen=True)
class Settings:
    margin: float = 0.01  # equivalence margin in test Dice
    alpha: float = 0.05  # over every claim's verdicts, primaries and secondaries together
    primary_share: float = 0.8  # of alpha to the primaries (Holm); the rest to the secondaries
    paths: int = SIMULATIONS

    @property
    def alpha_primary(self) -> float:
        return self.alpha * self.primary_share


# --------------------------------------------------------------------------- statistics of the looks


@dataclass(frozen=True)
class LookStatistics:
    """Each claim's estimate and standard error at each planned look, as functions of outcome
    vectors over `runs` (every planned run through the last look)."""

    runs: tuple[PlannedRun, ...]
    looks: tuple[tuple[np.ndarray, Projection], ...]  # per look: (columns of its runs, its projection)
    paired: tuple[tuple[tuple[np.ndarray, np.ndarray] | None, ...], ...]  # per look, per claim: (arm, against) columns
    fractions: np.ndarray  # (looks, m) information fraction of each claim at each look
    first_df: np.ndarray  # (m,)

    def __call__(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(estimates, standard errors), each (paths, looks, m), for outcomes y (paths, runs)."""
        paths, m = y.shape[0], self.fractions.shape[1]
        est = np.full((paths, len(self.looks), m), np.nan)
        se = np.full_like(est, np.nan)
        for k, (rows, proj) in enumerate(self.looks):
            est[:, k, :], se[:, k, :] = proj.estimates(y[:, rows])
            for j, idx in enumerate(self.paired[k]):
                if idx is None:
                    continue
                est[:, k, j], se[:, k, j] = np.nan, np.nan
                if idx[0].shape[1] > 1:
                    d = (y[:, idx[0]] - y[:, idx[1]]).mean(axis=1)  # (paths, seeds): averaged over pairs
                    est[:, k, j] = d.mean(axis=1)
                    se[:, k, j] = d.std(axis=1, ddof=1) / math.sqrt(d.shape[1])
        return est, se


def look_statistics(design: Design, claims: Sequence[ClaimTerm], look_runs: Sequence[Sequence[PlannedRun]],
                    excluded: frozenset[str]) -> LookStatistics:
    """`look_runs[k]`: the runs of look k (realised for looks done, planned after). Claims that
    touch a side arm in `excluded` use their cells' paired differences; the rest the pooled model
    without those arms."""
    every = design.runs_through(design.looks()[-1])
    position = {(r.cell, r.seed): i for i, r in enumerate(every)}
    out_labels = {c.label for c in design.side_arms if c.side in excluded}
    by_pairs = [bool(c.sides & out_labels) for c in claims]
    looks, paired, factors, sizes = [], [], [], []
    for runs in look_runs:
        pooled_runs = [r for r in runs if r.cell not in out_labels]
        cols = columns(design, pooled_runs, excluded)
        proj = Projection.of(cols.matrix, np.array([contrast(design, cols, c) for c in claims]))
        looks.append((np.array([position[(r.cell, r.seed)] for r in pooled_runs], dtype=int), proj))
        per_claim = [_pair_columns(c, runs, position) if by_pairs[j] else None for j, c in enumerate(claims)]
        paired.append(tuple(per_claim))
        factors.append(proj.se_factor)
        sizes.append([0 if idx is None else idx[0].shape[1] for idx in per_claim])
    factors, sizes = np.array(factors), np.array(sizes, dtype=float)
    fractions = np.zeros_like(factors)
    first_df = np.zeros(len(claims))
    for j in range(len(claims)):
        if by_pairs[j]:
            fractions[:, j] = sizes[:, j] / max(1.0, sizes[-1, j])
            first_df[j] = sizes[0, j] - 1
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                fractions[:, j] = np.nan_to_num((factors[-1, j] / factors[:, j]) ** 2, nan=0.0)
            first_df[j] = looks[0][1].df
    return LookStatistics(every, tuple(looks), tuple(paired), fractions, first_df)


def _pair_columns(claim: ClaimTerm, runs: Sequence[PlannedRun],
                  position: Mapping[tuple[str, int], int]) -> tuple[np.ndarray, np.ndarray]:
    """Columns (pairs, seeds) of each pair's arm and against runs at the seeds all its cells share."""
    seeds: dict[str, set[int]] = {}
    for r in runs:
        seeds.setdefault(r.cell, set()).add(r.seed)
    common = sorted(set.intersection(*(seeds.get(label, set()) for label in claim.sides)))
    a = np.array([[position[(arm, s)] for s in common] for arm, _ in claim.pairs], dtype=int)
    b = np.array([[position[(against, s)] for s in common] for _, against in claim.pairs], dtype=int)
    return a.reshape(len(claim.pairs), -1), b.reshape(len(claim.pairs), -1)


def null_looks(stats: LookStatistics, paths: int) -> NullLooks:
    def statistics(y: np.ndarray) -> np.ndarray:
        est, se = stats(y)
        with np.errstate(divide="ignore", invalid="ignore"):
            return est / se

    t = simulate_null(len(stats.runs), statistics, len(stats.looks), stats.fractions.shape[1], paths)
    return NullLooks(t, stats.fractions, stats.first_df)


# --------------------------------------------------------------------------- the analysis


@dataclass(frozen=True)
class Chain:
    """A two-factor-interaction alias chain that involves a claim's factor, in Dice units: how
    much the factor's effect moves from its average when the other factor is at the recipe's level."""

    members: tuple[str, ...]
    estimate: Estimate
    flagged: bool  # its test rejects at INTERACTION_ALPHA / chains (Bonferroni)
    inside_margin: bool  # its CI lies inside ±margin


@dataclass(frozen=True)
class ClaimResult:
    claim: ClaimTerm
    estimate: Estimate | None  # at the deciding (or latest) look; None: not estimable
    pooled: bool  # False: by its own paired differences (a side arm failed the variance check)
    looks: ClaimLooks | None  # None: not estimable
    chains: tuple[Chain, ...] = ()
    transfers: bool | None = None  # factor claims: every chain's CI inside ±margin
    runs_to_detect: int | None = None  # open/inconclusive: runs for power POWER to detect ±margin
    runs_for_equivalence: int | None = None  # ... to show equivalence if the true effect were 0
    aliased: bool = False  # factor claims: some two-factor interaction with it is aliased with a main effect


@dataclass(frozen=True)
class Analysis:
    design: Design
    settings: Settings
    looks_done: int  # looks analysed (complete rounds at or after the initial ones)
    rounds_done: int
    runs_used: int
    df: float  # the pooled error's degrees of freedom at the latest look
    s: float  # pooled residual sd at the latest look (test Dice)
    claims: tuple[ClaimResult, ...]
    excluded_sides: frozenset[str] = field(default_factory=frozenset)
    futile: bool = False  # no open claim can still be settled by the last planned look
    interaction_power: float = math.nan  # power of one flag for an interaction as large as the margin

    @property
    def open(self) -> list[ClaimResult]:
        return [c for c in self.claims if c.looks is not None and c.looks.verdict == "open"]

    @property
    def final(self) -> bool:
        return self.looks_done >= len(self.design.looks())


def complete_rounds(design: Design, values: Mapping[tuple[str, int], float]) -> int:
    """Rounds, from the first, whose every planned run has an outcome."""
    done = 0
    for r in range(1, design.rounds_max + 1):
        if not all((run.cell, run.seed) in values for run in design.runs(r)):
            break
        done = r
    return done


def analyse(design: Design, claims: Sequence[ClaimTerm], values: Mapping[tuple[str, int], float],
            settings: Settings = Settings(), rounds: int | None = None, ended: bool = False) -> Analysis:
    """Analyse the complete rounds (or the first `rounds`) of `design` with outcomes `values`
    ((cell label, seed) -> test Dice, the outcome rule already applied). `ended`: no further
    round will run (the rule stopped them): a claim still open is then inconclusive."""
    rounds = complete_rounds(design, values) if rounds is None else rounds
    planned = design.looks()
    done = [r for r in planned if r <= rounds]
    claims = tuple(claims)
    if not done or not claims:
        return Analysis(design, settings, 0, rounds, 0, math.nan, math.nan,
                        tuple(ClaimResult(c, None, True, None) for c in claims))
    first = fit_look(design, design.runs_through(done[0]), values)
    excluded = variance_check(design, first.runs_all, values, first.fit)  # once, at the first look
    look_runs = [tuple(r for r in design.runs_through(r_) if (r.cell, r.seed) in values) for r_ in done]
    look_runs += [design.runs_through(r_) for r_ in planned[len(done):]]
    stats = look_statistics(design, claims, look_runs, excluded)
    y = np.array([values.get((r.cell, r.seed), np.nan) for r in stats.runs])
    est, se = (a[0, :len(done)] for a in stats(y[None]))
    estimable = ~np.isnan(se[-1])
    kept = [j for j in range(len(claims)) if estimable[j]]
    primaries = [claims[j].primary for j in kept]
    null = null_looks(stats, settings.paths)
    sub = NullLooks(null.t[:, :, kept], null.fractions[:, kept], null.first_df[kept])
    bounds = Boundaries.build(sub, primaries, settings.alpha, settings.alpha_primary)
    final = done[-1] >= design.rounds_max or ended
    decided = dict(zip(kept, decide(est[:, kept], se[:, kept], bounds, primaries, settings.margin, final)))
    last = fit_look(design, look_runs[len(done) - 1], values, excluded)
    results = []
    for j, claim in enumerate(claims):
        pooled = not (claim.sides & {c.label for c in design.side_arms if c.side in excluded})
        cl = decided.get(j)
        if cl is None:
            results.append(ClaimResult(claim, None, pooled, None))
            continue
        k = cl.look - 1
        df = float(stats.looks[k][1].df) if pooled else float(stats.paired[k][j][0].shape[1] - 1)
        estimate = Estimate.from_parts(float(est[k, j]), float(se[k, j]), df)
        chains = _chains(last, claim, settings) if claim.factor is not None else ()
        transfers, aliased = _transfers(design, last, claim, chains) if claim.factor is not None else (None, False)
        detect = equiv = None
        if cl.verdict in ("open", "inconclusive"):
            i = kept.index(j)
            cp = conditional_power(float(est[-1, j]), float(se[-1, j]) * math.sqrt(float(sub.fractions[len(done) - 1, i])),
                                   settings.margin, float(bounds.primary[i, len(kept), -1]),
                                   float(bounds.secondary[i, -1]))
            cl = ClaimLooks(cl.verdict, cl.look, cl.t, cl.tost, cl.primary, cl.secondary, cp)
            detect, equiv = _runs_needed(design, done[-1], float(se[-1, j]),
                                         float(stats.looks[len(done) - 1][1].df), settings, len(kept))
        results.append(ClaimResult(claim, estimate, pooled, cl, chains, transfers, detect, equiv, aliased))
    open_cp = [r.looks.conditional_power for r in results if r.looks is not None and r.looks.verdict == "open"]
    futile = bool(open_cp) and not final and all(not cp >= FUTILITY_POWER for cp in open_cp)
    return Analysis(design, settings, len(done), rounds, len(look_runs[len(done) - 1]), float(last.fit.df),
                    math.sqrt(last.fit.s2) if math.isfinite(last.fit.s2) else math.nan, tuple(results), excluded,
                    futile, _interaction_power(design, last, settings))


# --------------------------------------------------------------------------- what the report adds


def _chains(look: Look, claim: ClaimTerm, settings: Settings) -> tuple[Chain, ...]:
    from scipy import stats

    total = max(1, len(look.cols.chains))
    crit = stats.t.ppf(1 - INTERACTION_ALPHA / (2 * total), look.fit.df) if look.fit.df > 0 else math.inf
    out = []
    for members in look.cols.chains:
        if not any(claim.factor in m.split("*") for m in members):
            continue
        c = np.zeros(len(look.cols.names))
        c[look.cols.index("chain " + " = ".join(members))] = 2.0
        e = look.fit.estimate(c)
        out.append(Chain(members, e, bool(abs(e.t) > crit),
                         bool(-settings.margin < e.ci[0] and e.ci[1] < settings.margin)))
    return tuple(out)


def _transfers(design: Design, look: Look, claim: ClaimTerm, chains: Sequence[Chain]) -> tuple[bool, bool]:
    """(whether the factor's average effect holds at the recipe, whether some two-factor
    interaction with it is aliased with a main effect): it holds when every one is estimable and
    its chain's CI lies inside ±margin."""
    covered = {m for members in look.cols.chains for m in members}
    keys = [f.key for f in design.factors]
    needed = {f"{a}*{b}" for a, b in ((min(claim.factor, o, key=keys.index), max(claim.factor, o, key=keys.index))
                                      for o in keys if o != claim.factor)}
    aliased = not needed <= covered
    return not aliased and all(ch.inside_margin for ch in chains), aliased


def _interaction_power(design: Design, look: Look, settings: Settings) -> float:
    """Power of the Bonferroni flag for one chain whose effect is as large as the margin."""
    from scipy import stats

    if design.kind != "fraction" or not look.cols.chains or look.fit.df <= 0 or not math.isfinite(look.fit.s2):
        return math.nan
    c = np.zeros(len(look.cols.names))
    c[look.cols.index("chain " + " = ".join(look.cols.chains[0]))] = 2.0
    se = math.sqrt(float(c @ look.fit.xtx_pinv @ c) * look.fit.s2)
    crit = stats.t.ppf(1 - INTERACTION_ALPHA / (2 * len(look.cols.chains)), look.fit.df)
    return two_sided_power(crit, look.fit.df, settings.margin / se)


def two_sided_power(crit: float, df: float, nc: float) -> float:
    """P(|T| > crit), T noncentral t(df, nc); the normal limit where scipy's nct gives no number
    (very large noncentrality)."""
    from scipy import stats

    power = float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))
    if not math.isfinite(power):
        power = float(stats.norm.sf(crit - nc) + stats.norm.cdf(-crit - nc))
    return min(1.0, max(0.0, power))


def _runs_needed(design: Design, rounds: int, se: float, df: float, settings: Settings,
                 claims: int) -> tuple[int | None, int | None]:
    """Runs (whole rounds of every cell) for a fixed-sample test at the claim's worst-case Holm
    level to have power POWER: to detect a difference of the margin, and to show equivalence
    within it if the true difference were 0; se scales as 1/sqrt(rounds), df in proportion;
    equivalence power by the normal approximation."""
    from scipy import stats

    if not (math.isfinite(se) and se > 0 and df > 0):
        return None, None
    level = settings.alpha_primary / claims
    per_round = design.planned_runs() / design.rounds_max

    def power_detect(r: int) -> float:
        s, d = se * math.sqrt(rounds / r), df * r / rounds
        return two_sided_power(stats.t.ppf(1 - level / 2, d), d, settings.margin / s)

    def power_equiv(r: int) -> float:
        s, d = se * math.sqrt(rounds / r), df * r / rounds
        half = settings.margin / s - stats.t.ppf(1 - level, d)
        return float(max(0.0, 2 * stats.norm.cdf(half) - 1))

    def smallest(power) -> int | None:
        if power(MAX_ROUNDS_NEEDED) < POWER:
            return None
        low, high = rounds, rounds
        while power(high) < POWER:
            low, high = high, min(MAX_ROUNDS_NEEDED, 2 * high)
        while high - low > 1:
            mid = (low + high) // 2
            low, high = (mid, high) if power(mid) < POWER else (low, mid)
        r = low if power(low) >= POWER else high
        return int(math.ceil(r * per_round))

    return smallest(power_detect), smallest(power_equiv)


@dataclass(frozen=True)
class Effect:
    """A fraction's main effect or two-factor alias chain at the latest look, in Dice units (main:
    first level - second; chain: how much each member's factors' effects move from their average)."""

    name: str  # "model.dropout" or "model.a*model.b = model.c*model.d"
    kind: str  # "main" | "chain"
    estimate: Estimate


def fraction_effects(design: Design, values: Mapping[tuple[str, int], float], rounds: int) -> tuple[Effect, ...]:
    """Every main effect and estimable chain of a fraction over its first `rounds` rounds (the
    side arms' runs left out), for the effects table, the half-normal plot and the main-effects plot."""
    runs = tuple(r for r in design.runs_through(rounds) if design.cell(r.cell).side is None)
    look = fit_look(design, runs, values)
    out = []
    for name in look.cols.names:
        if not name.startswith(("main ", "chain ")):
            continue
        c = np.zeros(len(look.cols.names))
        c[look.cols.index(name)] = 2.0
        if not look.fit.estimable(c) or look.fit.df <= 0:
            continue
        kind, _, label = name.partition(" ")
        out.append(Effect(label, kind, look.fit.estimate(c)))
    return tuple(out)
