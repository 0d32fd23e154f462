"""Seeds needed: power of the seed-level paired t-test and of its TOST, from the noncentral t.

`seeds_to_detect` and `seeds_for_equivalence` return the smallest number of paired seeds that
reaches the asked power, searching n upwards (never a normal approximation); None when the
spread is unknown (fewer than 2 seeds) or more than `MAX_SEEDS` would be needed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MAX_SEEDS = 1000  # beyond this, "seeds needed" is reported as "> 1000"


def t_test_power(n: int, delta: float, sd: float, alpha: float) -> float:
    """Power of the two-sided paired t-test at level `alpha` with `n` pairs when the true mean
    difference is `delta` and the differences' sd is `sd`: P(|T| > t_{1-alpha/2, n-1}) with
    T ~ noncentral t(n - 1, delta * sqrt(n) / sd)."""
    from scipy import stats

    df = n - 1
    crit = stats.t.ppf(1 - alpha / 2, df)
    nc = delta * math.sqrt(n) / sd
    return float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))


def tost_power(n: int, margin: float, sd: float, alpha: float, true_diff: float = 0.0) -> float:
    """Power of the paired TOST (each one-sided test at `alpha`) against ±`margin`, exactly:
    given the sample sd s, it rejects when -margin + c s/√n < mean < margin - c s/√n, so the
    power is the normal probability of that interval integrated over s ((n-1)s²/sd² ~ χ²(n-1))."""
    from scipy import integrate, stats

    df = n - 1
    crit = stats.t.ppf(1 - alpha, df)
    root_n = math.sqrt(n)
    v_max = df * (margin * root_n / (crit * sd)) ** 2  # beyond it the interval is empty

    def conditional(v: float) -> float:
        half = margin - crit * sd * math.sqrt(v / df) / root_n
        upper = stats.norm.cdf((half - true_diff) * root_n / sd)
        lower = stats.norm.cdf((-half - true_diff) * root_n / sd)
        return (upper - lower) * stats.chi2.pdf(v, df)

    # The χ² density is negligible beyond its 1 - 1e-12 quantile: cut there, and point quad at the
    # peak near df, which an interval of v_max >> df (large n) would otherwise step over (power ~0).
    hi = min(v_max, float(stats.chi2.ppf(1 - 1e-12, df)))
    value, _ = integrate.quad(conditional, 0.0, hi, points=[min(df, hi)], limit=200)
    return float(min(1.0, max(0.0, value)))


def _smallest_n(power_at: "callable", target: float) -> int | None:
    """Smallest n >= 2 with power_at(n) >= target (power rises with n): doubling, then bisection."""
    if power_at(2) >= target:
        return 2
    low, high = 2, 4
    while power_at(high) < target:
        if high >= MAX_SEEDS:
            return None
        low, high = high, min(MAX_SEEDS, 2 * high)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if power_at(mid) < target else (low, mid)
    return high


def seeds_to_detect(delta: float, sd: float, alpha: float, power: float = 0.8) -> int | None:
    """Pairs (seeds per arm) for the two-sided paired t-test at `alpha` to detect `delta` with `power`."""
    if not (math.isfinite(sd) and delta > 0):
        return None
    if sd == 0:
        return 2
    return _smallest_n(lambda n: t_test_power(n, delta, sd, alpha), power)


def seeds_for_equivalence(margin: float, sd: float, alpha: float, power: float = 0.8,
                          true_diff: float = 0.0) -> int | None:
    """Pairs for TOST at `alpha` to show equivalence within ±`margin` with `power` if the true
    difference were `true_diff` (default 0)."""
    if not (math.isfinite(sd) and margin > abs(true_diff)):
        return None
    if sd == 0:
        return 2
    return _smallest_n(lambda n: tost_power(n, margin, sd, alpha, true_diff), power)


@dataclass(frozen=True)
class SeedsNeeded:
    """What a comparison would need, from the sd of its per-seed differences so far."""

    detect: float  # the difference to detect
    sd: float  # of the per-seed differences; nan with fewer than 2 seeds (then nothing can be estimated)
    alpha: float  # per-comparison level: the report's alpha / number of comparisons (Holm's worst case)
    power: float
    to_detect: int | None
    to_show_equivalence: int | None
    observed: float = math.nan  # the mean difference so far
    to_detect_observed: int | None = None  # pairs to detect a true difference as large as the one observed


def seeds_needed(diffs: "np.ndarray | list[float]", detect: float, margin: float, alpha: float, comparisons: int,
                 power: float = 0.8) -> SeedsNeeded:
    """Seeds per arm for `power` at alpha / comparisons, from the observed differences' sd."""
    x = np.asarray(diffs, dtype=float)
    sd = float(x.std(ddof=1)) if x.size > 1 else math.nan
    level = alpha / max(1, comparisons)
    observed = float(x.mean()) if x.size else math.nan
    return SeedsNeeded(detect, sd, level, power, seeds_to_detect(detect, sd, level, power),
                       seeds_for_equivalence(margin, sd, level, power), observed,
                       seeds_to_detect(abs(observed), sd, level, power) if math.isfinite(observed) else None)


# --------------------------------------------------------------------------- how reports show it


def count_text(n: int | None) -> str:
    """A seed count as reports show it: None (more than `MAX_SEEDS` needed) is "> MAX_SEEDS"."""
    return str(n) if n is not None else f"> {MAX_SEEDS}"


def needed_cell(needed: SeedsNeeded) -> str:
    """The effects table's "seeds needed" cell: to detect / to show equivalence ("—" without a spread)."""
    if not math.isfinite(needed.sd):
        return "—"
    return f"{count_text(needed.to_detect)} / {count_text(needed.to_show_equivalence)}"


def needed_sentence(verdict: str, seeds: int, needed: SeedsNeeded, margin: float) -> str:
    """The finding's sentence for an inconclusive comparison; '' for a conclusive one."""
    if verdict != "inconclusive":
        return ""
    if not math.isfinite(needed.sd):
        return f"inconclusive at {seeds} seed(s); with no spread across seeds yet, no seed count can be estimated"
    return (f"inconclusive at {seeds} seeds; about {count_text(needed.to_detect)} would detect a {needed.detect:g} "
            f"difference and about {count_text(needed.to_show_equivalence)} would show equivalence within ±{margin:g} "
            f"if the true difference were 0"
            + (f" (about {count_text(needed.to_detect_observed)} to detect a true difference as large as the "
               f"{needed.observed:+.4f} observed)" if needed.observed and math.isfinite(needed.observed) else ""))


def method_text(detect: float, margin: float, alpha: float, comparisons: int, power: float) -> str:
    """The effects section's bullet stating how "seeds needed" is computed."""
    return (f"- **Seeds needed** (detect / equivalence): seeds per arm for power {power:g} from the sd of the "
            f"per-seed differences observed so far, at α / {comparisons} = {alpha / max(1, comparisons):.4g} "
            "(the per-comparison level Holm needs in the worst case): the paired t-test detecting a difference of "
            f"{detect:g}, and TOST showing equivalence within ±{margin:g} if the true difference were 0; exact "
            "noncentral-t power (TOST: integrated over the sample sd), searched over n. Both are about the seed "
            "level only; the verdict also needs the image level.")
