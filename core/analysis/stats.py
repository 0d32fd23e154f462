"""Pure statistics for ablation reports: paired t, TOST, Wilcoxon, bootstrap CI, Holm.

Every function takes plain sequences of floats and returns floats; nothing here knows about
runs or files. scipy is imported inside the functions that need it, so `import core` stays light.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class PairedT:
    """Paired (one-sample) t-test of H0: mean difference = 0, two-sided."""

    n: int
    mean: float
    sd: float  # sample sd (ddof=1); nan for n < 2
    t: float
    df: int
    p: float  # nan when n < 2


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample sd (ddof=1); sd is nan for fewer than 2 values, both nan for none."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return math.nan, math.nan
    return float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else math.nan


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Two-sided t confidence interval of the mean (nan, nan for fewer than 2 values)."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    if x.size < 2:
        return math.nan, math.nan
    mean, sd = mean_sd(x)
    half = stats.t.ppf(0.5 + confidence / 2, x.size - 1) * sd / math.sqrt(x.size)
    return mean - half, mean + half


def paired_t(diffs: Sequence[float]) -> PairedT:
    """Paired t-test on differences. Zero spread gives p = 1 for a zero mean, else p = 0."""
    from scipy import stats

    x = np.asarray(diffs, dtype=float)
    mean, sd = mean_sd(x)
    if x.size < 2:
        return PairedT(int(x.size), mean, sd, math.nan, 0, math.nan)
    df = x.size - 1
    if sd == 0:  # scipy returns nan here; the limit is exact
        t = 0.0 if mean == 0 else math.copysign(math.inf, mean)
        return PairedT(int(x.size), mean, sd, t, df, 1.0 if mean == 0 else 0.0)
    t = mean / (sd / math.sqrt(x.size))
    return PairedT(int(x.size), mean, sd, t, df, float(2 * stats.t.sf(abs(t), df)))


def tost_t(diffs: Sequence[float], margin: float) -> float:
    """p of two one-sided paired t-tests for equivalence within (-margin, +margin).

    H0: |mean| >= margin. p = max(p of mean > -margin, p of mean < +margin); nan for n < 2.
    """
    from scipy import stats

    x = np.asarray(diffs, dtype=float)
    mean, sd = mean_sd(x)
    if x.size < 2:
        return math.nan
    if sd == 0:
        return 0.0 if abs(mean) < margin else 1.0
    se = sd / math.sqrt(x.size)
    df = x.size - 1
    p_above_lower = stats.t.sf((mean + margin) / se, df)
    p_below_upper = stats.t.cdf((mean - margin) / se, df)
    return float(max(p_above_lower, p_below_upper))


def wilcoxon(diffs: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p on paired differences (Pratt's handling of zeros).

    Pratt keeps zero differences in the ranking (then drops their ranks), which is more
    conservative than discarding them when many pairs are identical. All-zero gives p = 1.
    """
    from scipy import stats

    x = np.asarray(diffs, dtype=float)
    if x.size == 0:
        return math.nan
    if not np.any(x):
        return 1.0
    return float(stats.wilcoxon(x, zero_method="pratt", alternative="two-sided").pvalue)


def bootstrap_ci(
    values: Sequence[float],
    resamples: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean, resampling `values` with replacement.

    Deterministic: a fresh `numpy.random.default_rng(seed)` each call. Done in chunks so that
    thousands of values x 10k resamples never hold more than ~8 MB at once.
    """
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return math.nan, math.nan
    if x.size == 1:
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    chunk = max(1, 1_000_000 // x.size)
    means = np.empty(resamples)
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        idx = rng.integers(0, x.size, size=(stop - start, x.size))
        means[start:stop] = x[idx].mean(axis=1)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return float(lo), float(hi)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order; nan entries stay nan and are
    not counted in the family size."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, math.nan)
    finite = np.flatnonzero(~np.isnan(p))
    m = finite.size
    order = finite[np.argsort(p[finite], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()
