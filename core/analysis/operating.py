"""Operating characteristics by simulation: thousands of studies of one design run through the
whole procedure at once (the first-look variance check, the Holm-graphical group-sequential
verdicts, the futility stop), vectorised, so error rates and power are measured, not assumed.

`Simulator(design, claims, settings)` holds what does not depend on the truth (the statistics
of every look, the null boundaries per variance-check outcome); `run(means, sd, studies)` draws
studies with the given true cell means and spreads and returns each claim's verdict rates.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from .design import Design
from .estimate import ClaimTerm, VARIANCE_CHECK_LEVEL, columns
from .looks import FUTILITY_POWER, Boundaries, decide_many
from .model import Projection
from .verdicts import LookStatistics, Settings, look_statistics, null_looks


@dataclass(frozen=True)
class Rates:
    """Verdict rates over the simulated studies, per claim (in the claims' order)."""

    studies: int
    better: np.ndarray
    worse: np.ndarray
    equivalent: np.ndarray
    any_false_difference: float  # P(some claim whose true effect is 0 is called better or worse)
    mean_runs: float  # runs the studies used (futility stops included)
    excluded: Mapping[frozenset[str], int]  # how often each variance-check outcome occurred

    def rate(self, claim: int, verdict: str) -> float:
        return float(getattr(self, verdict)[claim])


class Simulator:
    def __init__(self, design: Design, claims: Sequence[ClaimTerm], settings: Settings = Settings()):
        self.design, self.claims, self.settings = design, tuple(claims), settings
        self.looks = design.looks()
        self.look_runs = [design.runs_through(r) for r in self.looks]
        self._by_pattern: dict[frozenset[str], tuple[LookStatistics, Boundaries]] = {}
        self.every = design.runs_through(self.looks[-1])

    def _pattern(self, excluded: frozenset[str]) -> tuple[LookStatistics, Boundaries]:
        if excluded not in self._by_pattern:
            stats = look_statistics(self.design, self.claims, self.look_runs, excluded)
            null = null_looks(stats, self.settings.paths)
            bounds = Boundaries.build(null, [c.primary for c in self.claims], self.settings.alpha,
                                      self.settings.alpha_primary)
            self._by_pattern[excluded] = (stats, bounds)
        return self._by_pattern[excluded]

    def run(self, means: Callable[[str], float] | Mapping[str, float], sd: float | Mapping[str, float],
            studies: int = 2000, seed: int = 1, truth: Sequence[float] | None = None,
            corrupt: Callable[[np.random.Generator, np.ndarray], np.ndarray] | None = None) -> Rates:
        """Simulate `studies` studies: each run of cell c is N(means[c], sd[c]^2) (sd: one value or
        per cell label). `truth[j]`: claim j's true effect (for the false-verdict rate; default:
        from the means where a claim is a difference of cells, else 0). `corrupt(rng, y)` may
        change the outcomes (e.g. replace some by 0, as diverged runs without a checkpoint)."""
        rng = np.random.default_rng(seed)
        mean_of = means if callable(means) else (lambda label: means[label])
        sd_of = (lambda label: sd) if isinstance(sd, (int, float)) else (lambda label: sd[label])
        mu = np.array([mean_of(r.cell) for r in self.every])
        sig = np.array([sd_of(r.cell) for r in self.every])
        y = mu[None, :] + sig[None, :] * rng.standard_normal((studies, len(self.every)))
        if corrupt is not None:
            y = corrupt(rng, y)
        patterns = self._first_look_check(y)
        m = len(self.claims)
        better, worse, equivalent = np.zeros(m), np.zeros(m), np.zeros(m)
        any_false, runs_used = 0, 0.0
        counts: dict[frozenset[str], int] = {}
        true = np.asarray(truth, float) if truth is not None else self._truth(mu)
        for pattern in sorted(set(patterns), key=sorted):
            rows = np.array([p == pattern for p in patterns])
            counts[pattern] = int(rows.sum())
            stats, bounds = self._pattern(pattern)
            est, se = stats(y[rows])
            prim_at, sec_at, stop = self._decide(est, se, stats, bounds)
            verdict = _verdicts(est, se, prim_at, sec_at, [c.primary for c in self.claims])
            better += (verdict == "better").sum(axis=0)
            worse += (verdict == "worse").sum(axis=0)
            equivalent += (verdict == "equivalent").sum(axis=0)
            null = np.isclose(true, 0.0)
            any_false += int(((verdict == "better") | (verdict == "worse"))[:, null].any(axis=1).sum())
            sizes = np.array([len(runs) for runs in self.look_runs])
            runs_used += float(sizes[stop - 1].sum())
        return Rates(studies, better / studies, worse / studies, equivalent / studies, any_false / studies,
                     runs_used / studies, counts)

    def _truth(self, mu: np.ndarray) -> np.ndarray:
        """Each claim's true effect implied by the cell means (fraction factors: the mean of the
        cells at one level minus the other, over the planned fraction rows)."""
        by_cell = {r.cell: mu[i] for i, r in enumerate(self.every)}
        out = []
        for c in self.claims:
            if c.factor is None:
                out.append(np.mean([by_cell[a] - by_cell[b] for a, b in c.pairs]))
            else:
                j = [f.key for f in self.design.factors].index(c.factor)
                cells = [self.design.cell(label) for label in dict.fromkeys(r.cell for r in self.every)]
                rows = [x for x in cells if x.side is None]
                hi = np.mean([by_cell[x.label] for x in rows if x.codes[j] == 1])
                lo = np.mean([by_cell[x.label] for x in rows if x.codes[j] == -1])
                out.append(c.sign * (hi - lo))
        return np.array(out)

    def _first_look_check(self, y: np.ndarray) -> list[frozenset[str]]:
        """The variance check of `estimate.variance_check`, for every study at once."""
        from scipy import stats

        design = self.design
        recipe = design.recipe
        if design.kind != "fraction" or recipe is None or not design.side_arms:
            return [frozenset()] * y.shape[0]
        first = self.look_runs[0]
        position = {(r.cell, r.seed): i for i, r in enumerate(self.every)}
        cols = columns(design, first)
        proj = Projection.of(cols.matrix, np.zeros((1, cols.matrix.shape[1])))
        rows = np.array([position[(r.cell, r.seed)] for r in first])
        beta = y[:, rows] @ proj.pinv.T
        resid = y[:, rows] - beta @ proj.x.T
        s2 = np.einsum("ij,ij->i", resid, resid) / proj.df
        out = [set() for _ in range(y.shape[0])]
        sided = {r.seed for r in first if design.cell(r.cell).side is not None}
        seeds = sorted({r.seed for r in first if r.cell == recipe.label and r.seed in sided})
        for arm in design.side_arms:
            a = [position[(arm.label, s)] for s in seeds]
            b = [position[(recipe.label, s)] for s in seeds]
            if len(a) < 2:
                continue
            d = y[:, a] - y[:, b]
            f = d.var(axis=1, ddof=1) / (2 * s2)
            hit = f > stats.f.ppf(1 - VARIANCE_CHECK_LEVEL, len(a) - 1, proj.df)
            for i in np.flatnonzero(hit):
                out[i].add(arm.side)
        return [frozenset(o) for o in out]

    def _decide(self, est: np.ndarray, se: np.ndarray, stats: LookStatistics,
                bounds: Boundaries) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """decide_many with the futility stop: a study whose open claims all have conditional
        power below FUTILITY_POWER after a look runs no further round. Returns (prim_at,
        sec_at, the number of looks each study ran)."""
        from scipy.special import ndtr

        studies, looks, m = est.shape
        primaries = [c.primary for c in self.claims]
        stop = np.full(studies, looks)
        prim_at = np.zeros((studies, m), dtype=int)
        sec_at = np.zeros((studies, m), dtype=int)
        margin = self.settings.margin
        for k in range(looks):
            alive = stop > k
            if not alive.any():
                break
            p, s, _ = decide_many(est[alive], se[alive], bounds, primaries, margin, k + 1)
            prim_at[alive], sec_at[alive] = p, s
            if k == looks - 1:
                break
            # conditional power of the open claims at the last look, the estimate taken as the truth
            open_ = (p == 0) & (s == 0)
            se_final = se[alive, k, :] * np.sqrt(stats.fractions[k][None, :])
            z = est[alive, k, :] / se_final
            c_diff = bounds.primary[np.arange(m), m, -1][None, :]
            c_eq = bounds.secondary[:, -1][None, :]
            with np.errstate(invalid="ignore"):
                cp_diff = ndtr(z - c_diff) + ndtr(-c_diff - z)
                half = margin / se_final - c_eq
                cp_eq = np.where(half > 0, ndtr(half - z) - ndtr(-half - z), 0.0)
            cp = np.maximum(cp_diff, cp_eq)
            futile = open_.any(axis=1) & np.all(~open_ | (cp < FUTILITY_POWER), axis=1)
            idx = np.flatnonzero(alive)[futile]
            stop[idx] = k + 1
        return prim_at, sec_at, stop


def _verdicts(est: np.ndarray, se: np.ndarray, prim_at: np.ndarray, sec_at: np.ndarray,
              primaries: Sequence[str]) -> np.ndarray:
    """(studies, m) verdict strings: better / worse / equivalent / '' (undecided)."""
    studies, _, m = est.shape
    out = np.full((studies, m), "", dtype=object)
    for j, kind in enumerate(primaries):
        at = np.where(prim_at[:, j] > 0, prim_at[:, j], sec_at[:, j])
        by_primary = prim_at[:, j] > 0
        decided = at > 0
        k = np.maximum(at - 1, 0)
        sign = est[np.arange(studies), k, j]
        difference = np.where(by_primary, kind == "difference", kind != "difference") & decided
        out[difference & (sign > 0), j] = "better"
        out[difference & (sign <= 0), j] = "worse"
        out[decided & ~difference, j] = "equivalent"
    return out
