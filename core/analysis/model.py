"""Least squares with a pooled error: one linear model over every run of a look, contrasts of its
coefficients with their standard errors, t statistics and degrees of freedom, and the same
computation for many simulated outcome vectors at once (what the sequential boundaries and the
operating-characteristic simulations need).

Why our own few lines rather than statsmodels' OLS: the group-sequential boundaries and the
simulations fit the *same* design matrix to tens of thousands of outcome vectors; with the
projection computed once, that is one matrix product, where a per-vector OLS object would be
about 10^4 times slower. `tests/test_analysis_model.py` checks the estimates, standard errors, t
and degrees of freedom against statsmodels' OLS.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

RANK_TOL = 1e-9  # relative singular-value cut-off for the rank of a design matrix


@dataclass(frozen=True)
class LinearFit:
    """The least-squares fit of y = X b + e, e ~ N(0, s2 I), with a possibly rank-deficient X
    (aliased or absorbed columns are given the minimum-norm solution; only estimable contrasts
    are meaningful: see `estimable`)."""

    beta: np.ndarray  # (p,)
    xtx_pinv: np.ndarray  # (p, p) pseudo-inverse of X'X: cov(b) = s2 * xtx_pinv
    projector: np.ndarray  # (p, p) X^+ X: c is estimable iff c' projector = c'
    rss: float
    df: int  # n - rank(X): the pooled error's degrees of freedom
    n: int

    @property
    def s2(self) -> float:
        """Pooled error variance (nan without residual degrees of freedom)."""
        return self.rss / self.df if self.df > 0 else math.nan

    def estimable(self, c: np.ndarray) -> bool:
        c = np.asarray(c, dtype=float)
        return bool(np.allclose(c @ self.projector, c, atol=1e-8 * max(1.0, float(np.abs(c).max()))))

    def estimate(self, c: np.ndarray, confidence: float = 0.95) -> "Estimate":
        """The contrast c'b with its pooled standard error, t, df and CI."""
        c = np.asarray(c, dtype=float)
        if not self.estimable(c):
            raise ValueError("contrast is not estimable in this design (aliased or absorbed)")
        value = float(c @ self.beta)
        se = math.sqrt(max(float(c @ self.xtx_pinv @ c), 0.0) * self.s2) if self.df > 0 else math.nan
        return Estimate.from_parts(value, se, self.df, confidence)


@dataclass(frozen=True)
class Estimate:
    """An estimate with its standard error, t against 0, degrees of freedom and t-based CI."""

    value: float
    se: float
    df: float  # may be fractional (Welch-Satterthwaite)
    t: float
    ci: tuple[float, float]

    @classmethod
    def from_parts(cls, value: float, se: float, df: float, confidence: float = 0.95) -> "Estimate":
        from scipy import stats

        if not (df > 0 and math.isfinite(se)):
            return cls(value, se, df, math.nan, (math.nan, math.nan))
        if se == 0:
            t = 0.0 if value == 0 else math.copysign(math.inf, value)
            return cls(value, se, df, t, (value, value))
        half = float(stats.t.ppf(0.5 + confidence / 2, df)) * se
        return cls(value, se, df, value / se, (value - half, value + half))


def rank(matrix: np.ndarray) -> int:
    if matrix.size == 0:
        return 0
    s = np.linalg.svd(matrix, compute_uv=False)
    return int((s > RANK_TOL * s[0]).sum()) if s.size and s[0] > 0 else 0


def fit(x: np.ndarray, y: np.ndarray) -> LinearFit:
    """Ordinary least squares of `y` (n,) on `x` (n, p)."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    pinv = np.linalg.pinv(x, rcond=RANK_TOL)  # (p, n)
    beta = pinv @ y
    resid = y - x @ beta
    r = rank(x)
    return LinearFit(beta, pinv @ pinv.T, pinv @ x, float(resid @ resid), x.shape[0] - r, x.shape[0])


@dataclass(frozen=True)
class Projection:
    """What fitting one design matrix to many outcome vectors needs, computed once."""

    pinv: np.ndarray  # (p, n)
    x: np.ndarray  # (n, p)
    df: int
    se_factor: np.ndarray  # (m,) sqrt(c' (X'X)^+ c) per contrast; nan where not estimable
    contrasts: np.ndarray  # (m, p)

    @classmethod
    def of(cls, x: np.ndarray, contrasts: np.ndarray) -> "Projection":
        x = np.asarray(x, dtype=float)
        pinv = np.linalg.pinv(x, rcond=RANK_TOL)
        c = np.atleast_2d(np.asarray(contrasts, dtype=float))
        factor = np.sqrt(np.maximum(np.einsum("mp,pq,mq->m", c, pinv @ pinv.T, c), 0.0))
        estimable = np.all(np.abs(c @ (pinv @ x) - c) <= 1e-8 * np.maximum(1.0, np.abs(c).max(axis=1))[:, None], axis=1)
        factor[~estimable | ~np.any(c, axis=1)] = np.nan
        return cls(pinv, x, x.shape[0] - rank(x), factor, c)

    def estimates(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(contrast values (paths, m), their pooled standard errors (paths, m)) for outcome
        vectors y (paths, n); nan where a contrast is not estimable or no df is left."""
        beta = y @ self.pinv.T  # (paths, p)
        resid = y - beta @ self.x.T
        s = np.sqrt(np.einsum("ij,ij->i", resid, resid) / self.df) if self.df > 0 else np.full(y.shape[0], np.nan)
        return beta @ self.contrasts.T, s[:, None] * self.se_factor[None, :]

    def t(self, y: np.ndarray) -> np.ndarray:
        """t statistics (paths, m) of every contrast for outcome vectors y (paths, n)."""
        est, se = self.estimates(y)
        with np.errstate(divide="ignore", invalid="ignore"):
            return est / se


def welch(a: np.ndarray, b: np.ndarray, confidence: float = 0.95) -> Estimate:
    """mean(a) - mean(b) with the Welch-Satterthwaite standard error and degrees of freedom."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1)) if va + vb > 0 else a.size + b.size - 2
    return Estimate.from_parts(float(a.mean() - b.mean()), se, df, confidence)


def paired(diffs: np.ndarray, confidence: float = 0.95) -> Estimate:
    """The mean of paired differences with its own standard error on n - 1 degrees of freedom."""
    d = np.asarray(diffs, float)
    if d.size < 2:
        return Estimate(float(d.mean()) if d.size else math.nan, math.nan, 0, math.nan, (math.nan, math.nan))
    return Estimate.from_parts(float(d.mean()), float(d.std(ddof=1)) / math.sqrt(d.size), d.size - 1, confidence)
