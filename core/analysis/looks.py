"""Group-sequential verdicts on the claims of a design, look by look.

Design: each claim has one primary hypothesis (no difference, two-sided; or, for a claim that
expects equivalence, non-equivalence within ±margin by two one-sided tests) and one secondary
(the other of the two). The primaries share `alpha_primary` by Holm's procedure in its graphical
form for group-sequential designs (Maurer & Bretz 2013): each open primary is tested at
alpha_primary / (open primaries); a rejection passes its level on equally to the others, whose
boundaries are recomputed at the new level. The secondaries share `alpha - alpha_primary`
equally (Bonferroni), with no passing on. Every test spends its level over the looks with the
Lan-DeMets O'Brien-Fleming-type function alpha(t) = 2 - 2 Phi(z_{1-a/2} / sqrt(t)), t the
contrast's information fraction (its variance at the last planned look / at this look).

The statistics are t's with the pooled error re-estimated at every look, so the boundaries come
from simulating exactly those statistics: pure-noise outcomes pushed through the design matrix
of every look (realised for the looks done, planned after), `SIMULATIONS` paths with a fixed
seed; the first look's boundary is the exact t quantile. A claim compared by its own paired
differences (a side arm that failed the variance check) gets paired-t boundaries the same way.

Futility (non-binding: the boundaries ignore it): no further round when no open claim has a
conditional power of at least `FUTILITY_POWER` at the last planned look, with its current
estimate taken as the truth.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

SIMULATIONS = 100_000  # null paths behind each look's boundaries
BOUNDARY_SEED = 20_240_515  # fixed: the same design always gives the same boundaries
FUTILITY_POWER = 0.10
CHUNK = 10_000  # paths simulated at once (memory: CHUNK x runs floats)


def spent(t: float, alpha: float) -> float:
    """Alpha spent by information fraction `t` (Lan-DeMets O'Brien-Fleming type); alpha at t >= 1."""
    from scipy import stats

    if t <= 0:
        return 0.0
    return float(min(alpha, 2 - 2 * stats.norm.cdf(stats.norm.ppf(1 - alpha / 2) / math.sqrt(min(1.0, t)))))


def boundaries_from_null(null: np.ndarray, fractions: Sequence[float], first_df: float, alpha: float,
                         two_sided: bool) -> tuple[float, ...]:
    """Critical values at each look from null statistics `null` (paths, looks): a null path
    first crosses at look k with the probability spent between looks k - 1 and k. Two-sided
    bounds |t|; one-sided bounds t from above."""
    from scipy import stats

    sides = 2 if two_sided else 1
    stat = np.abs(null) if two_sided else null
    first = spent(fractions[0], alpha)
    bounds = [float(stats.t.ppf(1 - first / sides, first_df)) if first > 0 and first_df > 0 else math.inf]
    paths = stat.shape[0]
    alive = ~(stat[:, 0] > bounds[0])
    for k in range(1, stat.shape[1]):
        crossed = paths - int(alive.sum())
        quota = int(math.floor(spent(fractions[k], alpha) * paths)) - crossed
        candidates = np.sort(np.nan_to_num(stat[alive, k], nan=-np.inf))[::-1]
        bound = math.inf if quota <= 0 or candidates.size == 0 else float(candidates[min(quota, candidates.size - 1)])
        bounds.append(bound)
        alive &= ~(stat[:, k] > bound)
    return tuple(bounds)


@dataclass(frozen=True)
class NullLooks:
    """Null statistics of every claim at every look: (paths, looks, claims), with each claim's
    information fraction and first-look degrees of freedom."""

    t: np.ndarray
    fractions: np.ndarray  # (looks, claims)
    first_df: np.ndarray  # (claims,)

    def boundaries(self, claim: int, looks: int, alpha: float, two_sided: bool) -> tuple[float, ...]:
        return boundaries_from_null(self.t[:, :looks, claim], self.fractions[:looks, claim],
                                    float(self.first_df[claim]), alpha, two_sided)


def simulate_null(n_runs: int, statistics: Callable[[np.ndarray], np.ndarray], looks: int, claims: int,
                  paths: int = SIMULATIONS, seed: int = BOUNDARY_SEED) -> np.ndarray:
    """(paths, looks, claims) null statistics: `statistics(y)` maps pure-noise outcomes y
    (chunk, n_runs) to (chunk, looks, claims)."""
    rng = np.random.default_rng(seed)
    out = np.empty((paths, looks, claims))
    for start in range(0, paths, CHUNK):
        stop = min(paths, start + CHUNK)
        out[start:stop] = statistics(rng.standard_normal((stop - start, n_runs)))
    return out


@dataclass(frozen=True)
class Test:
    """One hypothesis test of one claim at the looks so far."""

    kind: str  # "difference" | "equivalence"
    role: str  # "primary" | "secondary"
    level: float  # the level it was (last) tested at
    rejected_at: int | None  # 1-based look, or None
    boundary: float  # its boundary at the look it was decided, or at the latest look


@dataclass(frozen=True)
class ClaimLooks:
    """A claim's sequential verdict after the looks so far."""

    verdict: str  # better | worse | equivalent | open (more rounds planned) | inconclusive
    look: int  # the deciding look (or the latest)
    t: float  # the difference t at that look
    tost: tuple[float, float]  # (t against -margin, t against +margin) at that look
    primary: Test
    secondary: Test
    conditional_power: float = math.nan  # at the latest look, for open claims


@dataclass(frozen=True)
class Boundaries:
    """Every boundary the procedure can need, per claim and look: the primary's at
    alpha_primary / open for each number of open primaries (1..m), the secondary's at its fixed
    level. Arrays (m, m + 1, looks): index [j, open, k]; column 0 unused."""

    primary: np.ndarray
    secondary: np.ndarray  # (m, looks)
    primary_levels: np.ndarray  # (m + 1,) alpha_primary / open
    secondary_level: float

    @classmethod
    def build(cls, null: NullLooks, primaries: Sequence[str], alpha: float, alpha_primary: float) -> "Boundaries":
        m, looks = len(primaries), null.t.shape[1]
        levels = np.array([math.nan] + [alpha_primary / n for n in range(1, m + 1)])
        secondary_level = (alpha - alpha_primary) / max(1, m)
        prim = np.full((m, m + 1, looks), math.inf)
        sec = np.full((m, looks), math.inf)
        for j, kind in enumerate(primaries):
            for n in range(1, m + 1):
                prim[j, n] = null.boundaries(j, looks, float(levels[n]), kind == "difference")
            if secondary_level > 0:
                sec[j] = null.boundaries(j, looks, secondary_level, kind != "difference")
        return cls(prim, sec, levels, secondary_level)


def decide_many(est: np.ndarray, se: np.ndarray, bounds: Boundaries, primaries: Sequence[str], margin: float,
                looks_done: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The procedure for many studies at once. est, se: (studies, looks, m). Returns
    (rejected_primary_at, rejected_secondary_at, open_at_decision) as (studies, m) int arrays:
    the 1-based look of each rejection (0: none), and the number of open primaries whose level
    the primary was last tested at."""
    studies, _, m = est.shape
    with np.errstate(divide="ignore", invalid="ignore"):
        t = est / se
        lower = (est + margin) / se
        upper = (est - margin) / se
    usable = np.isfinite(se) & (se >= 0) & ~np.isnan(t)
    diff_kind = np.array([p == "difference" for p in primaries], dtype=bool)
    prim_at = np.zeros((studies, m), dtype=int)
    sec_at = np.zeros((studies, m), dtype=int)
    tested_open = np.full((studies, m), m, dtype=int)
    rows = np.arange(studies)

    def crosses(k: int, c: np.ndarray, kind_diff: np.ndarray) -> np.ndarray:
        """(studies, m): the statistic at look k crosses boundary c (studies, m) of its kind."""
        diff = np.abs(t[:, k, :]) > c
        equiv = (lower[:, k, :] > c) & (upper[:, k, :] < -c)
        return usable[:, k, :] & np.where(kind_diff[None, :], diff, equiv)

    for k in range(looks_done):
        while True:  # Holm, graphically: a rejection raises the others' levels at this look
            decided = (prim_at > 0) | (sec_at > 0)
            open_primaries = (prim_at == 0).sum(axis=1)  # (studies,)
            testing = ~decided
            if not testing.any():
                break
            c = bounds.primary[np.arange(m)[None, :], open_primaries[:, None], k]  # (studies, m)
            hit = crosses(k, c, diff_kind) & testing
            tested_open = np.where(testing, open_primaries[:, None], tested_open)
            if not hit.any():
                break
            prim_at[hit] = k + 1
        decided = (prim_at > 0) | (sec_at > 0)
        hit = crosses(k, np.broadcast_to(bounds.secondary[:, k], (studies, m)), ~diff_kind) & ~decided
        sec_at[hit] = k + 1
    del rows
    return prim_at, sec_at, tested_open


def decide(est: np.ndarray, se: np.ndarray, bounds: Boundaries, primaries: Sequence[str], margin: float,
           final: bool) -> list[ClaimLooks]:
    """One study's verdicts: est, se (looks, m) observed; `final`: the last look is the last
    planned one (then claims still open are inconclusive)."""
    looks, m = est.shape
    prim_at, sec_at, opened = (a[0] for a in decide_many(est[None], se[None], bounds, primaries, margin, looks))
    with np.errstate(divide="ignore", invalid="ignore"):
        t, lower, upper = est / se, (est + margin) / se, (est - margin) / se
    out = []
    for j, kind in enumerate(primaries):
        other = "equivalence" if kind == "difference" else "difference"
        at = int(prim_at[j] or sec_at[j])
        k = (at or looks) - 1
        decided_by = kind if prim_at[j] else (other if sec_at[j] else None)
        if decided_by == "difference":
            verdict = "better" if t[k, j] > 0 else "worse"
        elif decided_by == "equivalence":
            verdict = "equivalent"
        else:
            verdict = "inconclusive" if final else "open"
        n_open = int(opened[j])
        out.append(ClaimLooks(
            verdict, k + 1, float(t[k, j]), (float(lower[k, j]), float(upper[k, j])),
            Test(kind, "primary", float(bounds.primary_levels[n_open]), int(prim_at[j]) or None,
                 float(bounds.primary[j, n_open, k])),
            Test(other, "secondary", bounds.secondary_level, int(sec_at[j]) or None, float(bounds.secondary[j, k])),
        ))
    return out


def conditional_power(estimate: float, se_final: float, margin: float, c_diff: float, c_equiv: float) -> float:
    """P(a verdict at the last planned look | the current estimate is the truth), normal
    approximation: the larger of crossing the difference boundary and the TOST boundaries."""
    from scipy import stats

    if not (math.isfinite(se_final) and se_final > 0 and math.isfinite(estimate)):
        return math.nan
    z = estimate / se_final
    diff = stats.norm.sf(c_diff - z) + stats.norm.cdf(-c_diff - z) if math.isfinite(c_diff) else 0.0
    half = margin / se_final - c_equiv
    equiv = max(0.0, stats.norm.cdf(half - z) - stats.norm.cdf(-half - z)) if math.isfinite(c_equiv) and half > 0 else 0.0
    return float(max(diff, equiv))
