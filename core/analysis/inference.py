"""The statistics an ablation report applies: contrasts of arms paired by seed and test image,
effects of each factor level against its baseline with CIs, tests, Holm and TOST, two-way
interactions, and the per-arm summary. The tests themselves are in `stats`."""
from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Sequence

import numpy as np

from . import stats
from ..format import format_level
from .arms import Arm, Study, matched_pairs, same_level, slice_key, slices


@dataclass(frozen=True)
class Contrast:
    """A weighted sum of arms evaluated on the seeds every arm has (and images every run has)."""

    seeds: tuple[int, ...]
    seed_values: tuple[float, ...]  # contrast of test/dice per seed
    global_values: tuple[float, ...]  # contrast of test/dice_global per seed
    image_ids: tuple[str, ...]
    image_values: tuple[float, ...]  # per image, contrast averaged over seeds; () if unavailable


def contrast(terms: Sequence[tuple[float, Arm]]) -> Contrast:
    """Evaluate sum(weight * arm) per seed and per (seed, image), pairing by seed and image."""
    seeds = sorted(set.intersection(*(set(arm.by_seed) for _, arm in terms)))
    seed_values = [sum(w * arm.by_seed[s].test_dice for w, arm in terms) for s in seeds]
    global_values = [sum(w * arm.by_seed[s].test_dice_global for w, arm in terms) for s in seeds]
    runs = [(w, arm.by_seed[s]) for s in seeds for w, arm in terms]
    recorded = [r.per_image for _, r in runs if r.per_image is not None]
    usable = seeds and recorded and all(r.per_image is not None or r.imputed for _, r in runs)
    image_ids: list[str] = sorted(set.intersection(*(set(p) for p in recorded))) if usable else []
    image_values: list[float] = []
    if image_ids:
        matrix = np.zeros((len(seeds), len(image_ids)))  # (seeds, images)
        for row, s in enumerate(seeds):
            for w, arm in terms:
                run = arm.by_seed[s]
                if run.per_image is not None:
                    matrix[row] += w * np.array([run.per_image[i] for i in image_ids])
                # an imputed diverged run scores 0 on every image: adds nothing
        image_values = matrix.mean(axis=0).tolist()
    return Contrast(tuple(seeds), tuple(seed_values), tuple(global_values), tuple(image_ids), tuple(image_values))


@dataclass(frozen=True)
class Evidence:
    """Inference on one contrast at one level of replication."""

    unit: str  # "seeds" (t CI, paired t) or "images" (bootstrap CI, Wilcoxon)
    n: int
    mean: float
    ci: tuple[float, float]  # 95%
    p: float  # two-sided test of no difference
    p_tost: float  # equivalence within +-margin (paired t TOST)
    p_holm: float = math.nan
    p_tost_holm: float = math.nan


def seed_evidence(values: Sequence[float], margin: float) -> Evidence:
    """Training seeds as the replicates: paired t (exact for normal differences at any n;
    Wilcoxon cannot reach p < 0.05 with fewer than 6 seeds), t interval, t TOST."""
    test = stats.paired_t(values)
    return Evidence("seeds", test.n, test.mean, stats.t_interval(values), test.p, stats.tost_t(values, margin))


def image_evidence(values: Sequence[float], margin: float, resamples: int, seed: int) -> Evidence:
    """Test images as the replicates (models held fixed): each value is one image's
    difference averaged over seeds. Bootstrap over images, Wilcoxon signed-rank, t TOST."""
    mean = float(np.mean(values)) if len(values) else math.nan
    ci = stats.bootstrap_ci(values, resamples=resamples, seed=seed)
    return Evidence("images", len(values), mean, ci, stats.wilcoxon(values), stats.tost_t(values, margin))


@dataclass(frozen=True)
class Effect:
    """One factor level against the factor's baseline level."""

    factor: str
    level: Any
    baseline: Any
    pairs: int  # matched arm pairs averaged over
    contrast: Contrast
    by_seed: Evidence
    by_image: Evidence | None
    verdict: str = ""

    @property
    def label(self) -> str:
        return f"{self.factor}: {format_level(self.level)} vs {format_level(self.baseline)}"


def verdict(by_seed: Evidence, by_image: Evidence | None, alpha: float, margin: float) -> str:
    """"equivalent" when every available level's Holm-adjusted TOST p < alpha (it wins: a
    detectable difference inside the margin does not matter); "better"/"worse" when every
    level's Holm-adjusted p < alpha with its CI excluding 0 on the same side; else
    "inconclusive". Fewer than 2 seeds is always inconclusive (seed luck cannot be ruled out)."""
    if by_seed.n < 2:
        return "inconclusive"
    levels = [by_seed] + ([by_image] if by_image is not None and by_image.n >= 2 else [])
    if all(e.p_tost_holm < alpha for e in levels):
        return f"equivalent (within ±{margin:g})"
    if all(e.p_holm < alpha and e.ci[0] > 0 for e in levels):
        return "better"
    if all(e.p_holm < alpha and e.ci[1] < 0 for e in levels):
        return "worse"
    return "inconclusive"


def compute_effects(
    study: Study, margin: float = 0.005, alpha: float = 0.05, resamples: int = 10_000, seed: int = 0
) -> tuple[list[Effect], list[str]]:
    """Every non-baseline level of every factor against its baseline, with Holm-adjusted p
    (one family per test: seed t, image Wilcoxon, seed TOST, image TOST, over all comparisons).
    Also returns the comparisons that could not be made, with the reason."""
    effects: list[Effect] = []
    skipped: list[str] = []
    for factor in study.factors:
        others = [lv for lv in factor.levels if not same_level(lv, factor.baseline)]
        if not any(matched_pairs(study, factor.key, lv) for lv in others):
            skipped.append(f"{factor.key} ({len(factor.levels)} levels): no two arms differ only in this factor")
            continue
        for level in others:
            name = f"{factor.key}: {format_level(level)} vs {format_level(factor.baseline)}"
            pairs = matched_pairs(study, factor.key, level)
            if not pairs:
                skipped.append(f"{name}: no two arms differ only in {factor.key}")
                continue
            k = len(pairs)
            terms = [(w / k, arm) for treated, control in pairs for w, arm in ((1.0, treated), (-1.0, control))]
            c = contrast(terms)
            if not c.seeds:
                skipped.append(f"{name}: no seed has a counted run in every arm involved")
                continue
            by_image = image_evidence(c.image_values, margin, resamples, seed) if c.image_values else None
            by_seed = seed_evidence(c.seed_values, margin)
            effects.append(Effect(factor.key, level, factor.baseline, k, c, by_seed, by_image))

    def adjust(get: str, set_: str, unit: str) -> None:
        owners = [(i, getattr(e, unit)) for i, e in enumerate(effects) if getattr(e, unit) is not None]
        adjusted = stats.holm([getattr(ev, get) for _, ev in owners])
        for (i, ev), p in zip(owners, adjusted):
            effects[i] = replace(effects[i], **{unit: replace(ev, **{set_: p})})

    for unit in ("by_seed", "by_image"):
        adjust("p", "p_holm", unit)
        adjust("p_tost", "p_tost_holm", unit)
    effects = [replace(e, verdict=verdict(e.by_seed, e.by_image, alpha, margin)) for e in effects]
    return effects, skipped


# --------------------------------------------------------------------------- interactions


@dataclass(frozen=True)
class Interaction:
    """Difference of differences for two factors at non-baseline levels (l, m):
    (y[l, m] - y[b, m]) - (y[l, b'] - y[b, b']), averaged over the crossed slices."""

    factors: tuple[str, str]
    levels: tuple[Any, Any]
    baselines: tuple[Any, Any]
    slices: int
    contrast: Contrast
    by_seed: Evidence
    by_image: Evidence | None


@dataclass(frozen=True)
class TwoWay:
    """Mean test Dice for every level pair of two factors, over the crossed slices."""

    factors: tuple[str, str]
    levels: tuple[tuple[Any, ...], tuple[Any, ...]]
    means: dict[tuple[Any, Any], float]
    slices: int
    interactions: tuple[Interaction, ...] = field(default=())


def compute_interactions(
    study: Study, margin: float = 0.005, resamples: int = 10_000, seed: int = 0
) -> list[TwoWay]:
    """For each pair of factors crossed in full in at least one slice of the other factors
    (every slice, in a full factorial): the two-way table and each interaction estimate."""
    tables: list[TwoWay] = []
    for fa, fb in itertools.combinations(study.factors, 2):
        full = [
            cells for rest, cells in sorted(slices(study, [fa.key, fb.key]).items(), key=lambda kv: slice_key(kv[0]))
            if len(cells) == len(fa.levels) * len(fb.levels)
        ]
        if not full:
            continue

        def arm_at(cells: dict[tuple, Arm], la: Any, lb: Any) -> Arm:
            return next(a for lv, a in cells.items() if same_level(lv[0], la) and same_level(lv[1], lb))

        means = {}
        for la, lb in itertools.product(fa.levels, fb.levels):
            values = [np.mean([r.test_dice for r in arm_at(c, la, lb).by_seed.values()] or [math.nan]) for c in full]
            means[(la, lb)] = float(np.mean(values))
        k = len(full)
        found = []
        for la, lb in itertools.product(fa.levels, fb.levels):
            if same_level(la, fa.baseline) or same_level(lb, fb.baseline):
                continue
            terms = []
            for cells in full:
                terms += [
                    (1 / k, arm_at(cells, la, lb)), (-1 / k, arm_at(cells, fa.baseline, lb)),
                    (-1 / k, arm_at(cells, la, fb.baseline)), (1 / k, arm_at(cells, fa.baseline, fb.baseline)),
                ]
            c = contrast(terms)
            if not c.seeds:
                continue
            by_image = image_evidence(c.image_values, margin, resamples, seed) if c.image_values else None
            found.append(Interaction((fa.key, fb.key), (la, lb), (fa.baseline, fb.baseline), k, c,
                                     seed_evidence(c.seed_values, margin), by_image))
        tables.append(TwoWay((fa.key, fb.key), (fa.levels, fb.levels), means, k, tuple(found)))
    return tables


# --------------------------------------------------------------------------- arms table


@dataclass(frozen=True)
class ArmSummary:
    arm: Arm
    n: int  # counted seeds
    val: tuple[float, float]  # mean, sd
    test: tuple[float, float]
    test_ci: tuple[float, float]  # 95% t interval
    test_global: float
    best_epoch: float
    epochs_run: float
    wall_s: float
    diverged: int
    imputed: int
    excluded: dict[str, int]  # status -> count of runs not counted


def summarize_arm(arm: Arm) -> ArmSummary:
    counted = [arm.by_seed[s] for s in sorted(arm.by_seed)]
    tests = [r.test_dice for r in counted]
    excluded = Counter(r.status for r in arm.runs if not r.counted)

    def mean_of(values: Iterable[float]) -> float:
        finite = [v for v in values if math.isfinite(v)]
        return float(np.mean(finite)) if finite else math.nan

    return ArmSummary(
        arm=arm, n=len(counted),
        val=stats.mean_sd([r.val_dice for r in counted]),
        test=stats.mean_sd(tests), test_ci=stats.t_interval(tests),
        test_global=mean_of(r.test_dice_global for r in counted),
        best_epoch=mean_of(r.number("best_epoch") for r in counted),
        epochs_run=mean_of(r.number("epochs_run") for r in counted),
        wall_s=mean_of(r.number("wall_s") for r in counted),
        diverged=sum(r.status == "diverged" for r in counted),
        imputed=sum(r.imputed for r in counted),
        excluded=dict(sorted(excluded.items())),
    )



def importance_evaluator() -> tuple[Any, str]:
    """(Optuna importance evaluator, its description): Optuna's default, fANOVA, needs
    scikit-learn; PED-ANOVA needs nothing extra."""
    import optuna

    try:
        import sklearn  # noqa: F401
    except ImportError:
        return optuna.importance.PedAnovaImportanceEvaluator(), "PED-ANOVA (scikit-learn is not installed, so not fANOVA)"
    return optuna.importance.FanovaImportanceEvaluator(seed=0), "fANOVA (seed 0)"

