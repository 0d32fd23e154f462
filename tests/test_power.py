"""Seeds needed: noncentral-t power against known values and Monte Carlo, and how reports show it."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from segsweep.analysis.power import (
    seeds_for_equivalence, seeds_needed, seeds_to_detect, t_test_power, tost_power,
)

from test_reports import write_run


def test_paired_t_sample_size_matches_the_known_value() -> None:
    # G*Power / statsmodels TTestPower: paired (one-sample) t, d = 0.5, alpha 0.05 two-sided, power 0.8 -> 34.
    assert seeds_to_detect(0.5, 1.0, 0.05, 0.8) == 34
    assert t_test_power(34, 0.5, 1.0, 0.05) == pytest.approx(0.8078, abs=1e-4)
    assert t_test_power(33, 0.5, 1.0, 0.05) < 0.8
    # Scale-free: only delta / sd matters.
    assert seeds_to_detect(0.005, 0.01, 0.05) == 34


def test_t_power_matches_a_monte_carlo_simulation() -> None:
    n, delta, sd, alpha = 8, 1.0, 1.2, 0.05
    x = np.random.default_rng(0).normal(delta, sd, (40_000, n))
    p = sps.ttest_1samp(x, 0.0, axis=1).pvalue
    rate, exact = float(np.mean(p < alpha)), t_test_power(n, delta, sd, alpha)
    assert abs(rate - exact) < 3 * math.sqrt(exact * (1 - exact) / x.shape[0])


@pytest.mark.parametrize("true_diff", [0.0, 0.2])
def test_tost_power_matches_a_monte_carlo_simulation(true_diff: float) -> None:
    n, margin, sd, alpha = 12, 0.5, 0.6, 0.05
    x = np.random.default_rng(1).normal(true_diff, sd, (40_000, n))
    se = x.std(axis=1, ddof=1) / math.sqrt(n)
    crit = sps.t.ppf(1 - alpha, n - 1)
    reject = ((x.mean(axis=1) + margin) / se > crit) & ((x.mean(axis=1) - margin) / se < -crit)
    rate, exact = float(reject.mean()), tost_power(n, margin, sd, alpha, true_diff)
    assert abs(rate - exact) < 3 * math.sqrt(exact * (1 - exact) / x.shape[0])


def test_tost_power_keeps_rising_into_thousands_of_seeds() -> None:
    """At large n the chi-square density of (n-1)s²/sd² is a narrow peak far inside [0, v_max]:
    the integral must still find it (it once returned ~0 there, which stops the search for n)."""
    margin, sd, level = 0.005, 0.005, 0.05 / 3
    ns = [*range(2, 41), 60, 100, 200, 500, 1000, 1500, 2000]
    powers = [tost_power(n, margin, sd, level) for n in ns]
    assert all(later >= earlier - 1e-9 for earlier, later in zip(powers, powers[1:]))
    assert powers[-1] > 1 - 1e-9
    # A spread whose power is still rising at 1000 seeds, against a Monte Carlo of raw seeds.
    n, sd = 1000, 0.05
    rng, crit, reject = np.random.default_rng(2), sps.t.ppf(1 - level, n - 1), []
    for _ in range(4):
        x = rng.normal(0.0, sd, (5_000, n))
        se = x.std(axis=1, ddof=1) / math.sqrt(n)
        reject.append(((x.mean(axis=1) + margin) / se > crit) & ((x.mean(axis=1) - margin) / se < -crit))
    rate, exact = float(np.concatenate(reject).mean()), tost_power(n, margin, sd, level)
    assert 0.3 < exact < 0.95 and abs(rate - exact) < 3 * math.sqrt(exact * (1 - exact) / 20_000)
    sd = 0.04  # needs several hundred seeds: the search goes through 512 and 1000
    needed = seeds_for_equivalence(margin, sd, level)
    assert needed is not None and 512 < needed < 1000
    assert tost_power(needed, margin, sd, level) >= 0.8 > tost_power(needed - 1, margin, sd, level)


def test_seeds_needed_is_the_smallest_n_at_alpha_over_the_comparisons() -> None:
    diffs = [0.004, -0.003, 0.009]
    needed = seeds_needed(diffs, detect=0.01, margin=0.005, alpha=0.05, comparisons=6)
    sd, level = float(np.std(diffs, ddof=1)), 0.05 / 6
    assert needed.alpha == pytest.approx(level) and needed.sd == pytest.approx(sd)
    n = needed.to_detect
    assert t_test_power(n, 0.01, sd, level) >= 0.8 > t_test_power(n - 1, 0.01, sd, level)
    m = needed.to_show_equivalence
    assert tost_power(m, 0.005, sd, level) >= 0.8 > tost_power(m - 1, 0.005, sd, level)
    assert seeds_for_equivalence(0.005, sd, level) == m
    assert seeds_needed([0.01], 0.01, 0.005, 0.05, 1).to_detect is None  # one seed: no spread to go on
    assert seeds_to_detect(1e-6, 1.0, 0.05) is None  # more than MAX_SEEDS


def test_report_has_a_seeds_needed_column_and_sentence(tmp_path: Path) -> None:
    from segsweep.reports.ablation import ReportOptions, write_report

    root = tmp_path / "runs"
    rng = np.random.default_rng(0)
    base = rng.uniform(0.6, 0.8, 20)
    shifts = {0: 0.010, 1: -0.004, 2: 0.018}  # seed-level differences: clearly inconclusive at 3 seeds
    for seed, shift in shifts.items():
        write_run(root, {"model.init": "pytorch"}, seed, base + 0.001 * seed)
        write_run(root, {"model.init": "he_normal"}, seed, base + 0.001 * seed + shift)
    text = write_report([root], tmp_path / "out", ["model.init=pytorch"], ReportOptions(detect=0.01)).read_text()
    needed = seeds_needed(list(shifts.values()), 0.01, 0.005, 0.05, 1)
    assert "seeds needed (detect / equivalence)" in text
    assert f"| {needed.to_detect} / {needed.to_show_equivalence} |" in text
    assert (f"inconclusive at 3 seeds; about {needed.to_detect} would detect a 0.01 difference and about "
            f"{needed.to_show_equivalence} would show equivalence within ±0.005") in text
    assert "α / 1 = 0.05" in text
