"""Group-sequential looks at a paired comparison: seeds are added in rounds and the comparison is
analysed after each, with boundaries that keep the error rates of the whole sequence at alpha.

Design: Lan-DeMets alpha spending with the O'Brien-Fleming-type function
alpha(t) = 2 - 2 Phi(z_{1-alpha/2} / sqrt(t)), t = seeds at the look / planned maximum. Two tests
spend separately, each at the comparison's alpha: the two-sided paired t-test of no difference
(|t| boundaries: "better"/"worse") and each one-sided test of TOST against ±margin (one-sided t
boundaries: "equivalent" when both cross; its null |mean| = margin makes the statistic a central
t, so one boundary serves both sides). The statistics are t's with the sd re-estimated at each
look, so the boundaries come from simulating that exact statistic (a fixed seed, `SIMULATIONS`
paths; the first look's boundary is the exact t quantile), not from the Brownian-motion normal
theory. There is no futility stop; stopping for any other reason only lowers the error rates.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

SIMULATIONS = 200_000  # null paths behind each set of boundaries
BOUNDARY_SEED = 20_240_515  # fixed: the same looks always give the same boundaries
KINDS = ("two-sided", "one-sided")
DESIGN = ("group-sequential, Lan-DeMets alpha spending with the O'Brien-Fleming-type function "
          "alpha(t) = 2 - 2 Phi(z_{1-alpha/2} / sqrt(t)) (t = seeds / planned maximum), spent separately by the "
          "two-sided paired t-test (better/worse) and by each one-sided test of TOST (equivalent), each at alpha / "
          "comparisons (Bonferroni); boundaries on the t statistics simulated from 200000 null paths (seed "
          "20240515), the first look's from the exact t quantile; no futility stop")


def spent(t: float, alpha: float) -> float:
    """Alpha spent by information fraction `t` (Lan-DeMets O'Brien-Fleming type); alpha at t = 1."""
    from scipy import stats

    if t <= 0:
        return 0.0
    return float(min(alpha, 2 - 2 * stats.norm.cdf(stats.norm.ppf(1 - alpha / 2) / math.sqrt(min(1.0, t)))))


def _null_statistics(looks: tuple[int, ...]) -> np.ndarray:
    """t statistics of `SIMULATIONS` null paths (N(0, 1) differences) at each look: (paths, looks)."""
    rng = np.random.default_rng(BOUNDARY_SEED)
    total = np.zeros(SIMULATIONS)
    squares = np.zeros(SIMULATIONS)
    out = np.empty((SIMULATIONS, len(looks)))
    column = 0
    for n in range(1, looks[-1] + 1):
        z = rng.standard_normal(SIMULATIONS)
        total += z
        squares += z * z
        if n == looks[column]:
            sd = np.sqrt(np.maximum(squares - total * total / n, 0.0) / (n - 1))
            out[:, column] = (total / n) / (sd / math.sqrt(n))
            column += 1
    return out


@functools.lru_cache(maxsize=256)
def boundaries(looks: tuple[int, ...], n_max: int, alpha: float, kind: str) -> tuple[float, ...]:
    """Critical t at each look (seeds `looks`, increasing, at least 2) of a design planned up to
    `n_max` seeds: a null path first crosses at look k with the probability spent between looks
    k - 1 and k. `kind` "two-sided" bounds |t|; "one-sided" bounds t from above."""
    from scipy import stats

    if kind not in KINDS or not looks or looks[0] < 2 or list(looks) != sorted(set(looks)) or looks[-1] > n_max:
        raise ValueError(f"looks {looks} (max {n_max}, kind {kind}): expected increasing seed counts >= 2")
    sides = 2 if kind == "two-sided" else 1
    first = spent(looks[0] / n_max, alpha)
    bounds = [float(stats.t.ppf(1 - first / sides, looks[0] - 1)) if first > 0 else math.inf]
    if len(looks) == 1:
        return tuple(bounds)
    stat = _null_statistics(looks)
    stat = np.abs(stat) if sides == 2 else stat
    alive = ~(stat[:, 0] > bounds[0])
    for k in range(1, len(looks)):
        crossed = SIMULATIONS - int(alive.sum())
        quota = int(math.floor(spent(looks[k] / n_max, alpha) * SIMULATIONS)) - crossed
        candidates = np.sort(stat[alive, k])[::-1]
        bound = math.inf if quota <= 0 else float(candidates[min(quota, candidates.size - 1)])
        bounds.append(bound)
        alive &= ~(stat[:, k] > bound)
    return tuple(bounds)


def planned_looks(initial: int, step: int, n_max: int) -> tuple[int, ...]:
    """Seeds at each planned look: initial, initial + step, ..., n_max (the last look is n_max)."""
    looks = list(range(initial, n_max, step)) + [n_max]
    return tuple(sorted(set(n for n in looks if n >= 2)))


@dataclass(frozen=True)
class Look:
    """The sequential verdict of one comparison after its looks so far."""

    verdict: str  # "better", "worse", "equivalent", "continue" (more seeds planned) or "inconclusive" (at max)
    look: int  # 1-based index of the deciding (or latest) look
    n: int  # seeds at that look
    t: float  # the difference test's t at that look
    bound: float  # its |t| boundary there
    bound_tost: float  # the TOST one-sided boundary there


def t_stats(diffs: np.ndarray, margin: float) -> tuple[float, float, float]:
    """(t of no difference, t against -margin, t against +margin) of paired differences; zero
    spread gives ±inf (and nan for a zero mean with no spread in the difference test)."""
    n = diffs.shape[-1]
    mean = diffs.mean(axis=-1)
    se = diffs.std(axis=-1, ddof=1) / math.sqrt(n)
    with np.errstate(divide="ignore", invalid="ignore"):
        return mean / se, (mean + margin) / se, (mean - margin) / se


def sequential_verdict(diffs: Sequence[float], looks: Sequence[int], n_max: int, margin: float,
                       alpha: float) -> Look:
    """Walk the looks in order (each uses the first n differences, in seed order) and stop at the
    first boundary crossed: equivalence first (as in the fixed-sample verdict), then difference."""
    x = np.asarray(diffs, dtype=float)
    looks = tuple(int(n) for n in looks)
    sup = boundaries(looks, n_max, alpha, "two-sided")
    eq = boundaries(looks, n_max, alpha, "one-sided")
    for k, n in enumerate(looks):
        t, lower, upper = (float(v) for v in t_stats(x[:n], margin))
        if lower > eq[k] and upper < -eq[k]:
            return Look("equivalent", k + 1, n, t, sup[k], eq[k])
        if abs(t) > sup[k]:
            return Look("better" if t > 0 else "worse", k + 1, n, t, sup[k], eq[k])
    last = looks[-1]
    t = float(t_stats(x[:last], margin)[0])
    return Look("inconclusive" if last >= n_max else "continue", len(looks), last, t, sup[-1], eq[-1])


def simulate(looks: Sequence[int], margin: float, alpha: float, true_diff: float, sd: float,
             studies: int = 20_000, seed: int = 1) -> dict[str, float]:
    """Rates of each final verdict over `studies` simulated studies (normal differences with mean
    `true_diff` and sd `sd`) run through every planned look: what the design claims."""
    x = np.random.default_rng(seed).normal(true_diff, sd, size=(studies, tuple(looks)[-1]))
    decided = decide_all(x, looks, margin, alpha)
    return {v: float(np.mean(decided == v)) for v in ("better", "worse", "equivalent")}


def decide_all(x: np.ndarray, looks: Sequence[int], margin: float, alpha: float) -> np.ndarray:
    """`sequential_verdict` for many studies at once: x is (studies, seeds); '' where undecided."""
    looks = tuple(looks)
    sup = np.array(boundaries(looks, looks[-1], alpha, "two-sided"))
    eq = np.array(boundaries(looks, looks[-1], alpha, "one-sided"))
    decided = np.full(x.shape[0], "", dtype=object)
    for k, n in enumerate(looks):
        t, lower, upper = t_stats(x[:, :n], margin)
        open_ = decided == ""
        equivalent = open_ & (lower > eq[k]) & (upper < -eq[k])
        decided[equivalent] = "equivalent"
        open_ &= ~equivalent
        decided[open_ & (t > sup[k])] = "better"
        decided[open_ & (t < -sup[k])] = "worse"
    return decided


def report_lines(record: dict) -> list[str]:
    """The ablation report's section for a sweep run with adaptive seeds (its sequential.json)."""
    from ..format import fmt_float
    from .power import count_text

    looks = ", ".join(str(n) for n in record.get("planned_looks", []))
    lines = [
        "## Sequential design (adaptive seeds)", "",
        f"Seeds were added in rounds (initial {record.get('initial')}, step {record.get('step')}, at most "
        f"{record.get('max')} per arm; planned looks at {looks} seeds) to the arms of comparisons still open. "
        f"Design: {record.get('design')}. α = {record.get('alpha'):g} over {record.get('comparisons_in_family')} "
        f"comparison(s), {record.get('alpha_per_comparison'):.4g} each; margin ±{record.get('margin'):g}. "
        f"{record.get('rounds')} round(s); stopped: {record.get('stopped_by')}. The fixed-sample p-values above do "
        "not account for these repeated looks: the sequential verdicts below are the ones whose error rates the "
        "design controls (seed level).", "",
        "| comparison | looks (seeds) | verdict | at look | t | boundary abs(t) | TOST boundary | seeds needed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in record.get("comparisons", []):
        needed = "—" if c.get("verdict") != "inconclusive" else (
            f"{count_text(c.get('seeds_to_detect'))} / {count_text(c.get('seeds_for_equivalence'))}")
        bounds = [fmt_float(c.get(k), 2) if c.get(k) is not None else "∞" for k in ("boundary", "boundary_tost")]
        lines.append(f"| {c['comparison']} | {', '.join(map(str, c.get('looks', [])))} | {c['verdict']} | "
                     f"{c.get('look')} | {fmt_float(c.get('t'), 2) if c.get('t') is not None else '±∞'} | "
                     f"{bounds[0]} | {bounds[1]} | {needed} |")
    return lines + [""]
