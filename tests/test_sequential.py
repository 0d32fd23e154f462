"""The group-sequential design behind adaptive seeds, validated by simulation (vectorised: seconds)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from segsweep.reports.power import t_test_power
from segsweep.reports.sequential import (
    boundaries, decide_all, planned_looks, sequential_verdict, simulate, spent, t_stats,
)

LOOKS = planned_looks(3, 3, 12)  # (3, 6, 9, 12)
ALPHA, MARGIN = 0.05, 0.005
STUDIES = 4000  # >= 2000 simulated studies per claim


def within(rate: float, target: float, studies: int = STUDIES) -> float:
    """Three Monte-Carlo standard errors of a rate near `target`."""
    return 3 * math.sqrt(target * (1 - target) / studies)


def test_spending_and_looks() -> None:
    assert LOOKS == (3, 6, 9, 12) and planned_looks(3, 4, 9) == (3, 7, 9)
    assert spent(1.0, ALPHA) == pytest.approx(ALPHA) and spent(0.0, ALPHA) == 0.0
    z = sps.norm.ppf(1 - ALPHA / 2)
    assert spent(0.5, ALPHA) == pytest.approx(2 - 2 * sps.norm.cdf(z / math.sqrt(0.5)))
    assert spent(0.25, ALPHA) < spent(0.5, ALPHA) < spent(0.75, ALPHA) < ALPHA


def test_boundaries_first_look_exact_then_each_null_crossing_spends_its_share() -> None:
    for kind, sides in (("two-sided", 2), ("one-sided", 1)):
        b = boundaries(LOOKS, 12, ALPHA, kind)
        assert b[0] == pytest.approx(sps.t.ppf(1 - spent(0.25, ALPHA) / sides, 2))
        assert list(b) == sorted(b, reverse=True) and boundaries.__wrapped__(LOOKS, 12, ALPHA, kind) == b  # fixed seed
        # Fresh null paths (another seed): the chance of crossing by each look is what was spent.
        x = np.random.default_rng(7).standard_normal((100_000, 12))
        crossed = np.zeros(x.shape[0], bool)
        for k, n in enumerate(LOOKS):
            t = t_stats(x[:, :n], 0.0)[0]
            crossed |= (np.abs(t) if sides == 2 else t) > b[k]
            target = spent(n / 12, ALPHA)
            assert abs(crossed.mean() - target) <= within(crossed.mean(), target, x.shape[0]) + 1e-4


def test_the_vectorised_design_is_the_verdict_the_driver_uses() -> None:
    x = np.random.default_rng(3).normal(0.004, 0.004, (300, 12))
    fast = decide_all(x, LOOKS, MARGIN, ALPHA)
    slow = [sequential_verdict(row, LOOKS, 12, MARGIN, ALPHA).verdict for row in x]
    assert [v if v in ("better", "worse", "equivalent") else "" for v in slow] == list(fast)
    assert {"better", "equivalent", ""} <= set(fast)


@pytest.mark.parametrize("sd", [0.004, 0.02])  # equivalence often reachable / never reachable
def test_no_true_effect_gives_false_better_or_worse_at_most_alpha(sd: float) -> None:
    rates = simulate(LOOKS, MARGIN, ALPHA, 0.0, sd, studies=STUDIES, seed=11)
    false = rates["better"] + rates["worse"]
    assert false <= ALPHA + within(false, ALPHA)
    if sd == 0.02:  # nothing else can stop it: the spending uses (nearly) all of alpha, not far less
        assert false >= ALPHA - within(false, ALPHA) - 0.01


def test_a_true_effect_of_twice_the_margin_is_found_with_the_claimed_power_and_never_called_equivalent() -> None:
    sd = 0.011
    claimed = simulate(LOOKS, MARGIN, ALPHA, 2 * MARGIN, sd, studies=20_000, seed=1)["better"]
    # What the design claims, checked on fresh studies through the look-by-look verdict.
    x = np.random.default_rng(99).normal(2 * MARGIN, sd, (STUDIES, 12))
    verdicts = [sequential_verdict(row, LOOKS, 12, MARGIN, ALPHA).verdict for row in x]
    found = np.mean([v == "better" for v in verdicts])
    assert abs(found - claimed) <= within(found, claimed) + within(claimed, claimed, 20_000)
    # O'Brien-Fleming spending costs little power against a fixed 12-seed t-test (noncentral t).
    fixed = t_test_power(12, 2 * MARGIN, sd, ALPHA)
    assert fixed - 0.08 <= claimed <= fixed + 0.01
    equivalent = np.mean([v == "equivalent" for v in verdicts])
    assert equivalent <= ALPHA + within(equivalent, ALPHA)


@pytest.mark.parametrize("true_diff", [2 * MARGIN, MARGIN])  # twice the margin, and the worst case: at it
def test_false_equivalence_stays_at_most_alpha(true_diff: float) -> None:
    for sd in (0.002, 0.006):
        rate = simulate(LOOKS, MARGIN, ALPHA, true_diff, sd, studies=STUDIES, seed=5)["equivalent"]
        assert rate <= ALPHA + within(rate, ALPHA)


def test_report_section_shows_more_than_max_seeds_from_the_constant(monkeypatch: pytest.MonkeyPatch) -> None:
    from segsweep.reports import power
    from segsweep.reports.sequential import report_lines

    monkeypatch.setattr(power, "MAX_SEEDS", 750)
    record = {"planned_looks": [3, 6], "initial": [0, 1, 2], "step": 3, "max": 6, "design": "d", "alpha": 0.05,
              "comparisons_in_family": 1, "alpha_per_comparison": 0.05, "margin": 0.005, "rounds": 2,
              "stopped_by": "max", "comparisons": [
                  {"comparison": "a: 1 vs 0", "verdict": "inconclusive", "looks": [3, 6], "look": 2, "t": 0.4,
                   "boundary": 2.5, "boundary_tost": None, "seeds_to_detect": None, "seeds_for_equivalence": 40}]}
    row = next(line for line in report_lines(record) if line.startswith("| a: 1 vs 0 |"))
    assert row.endswith("| > 750 / 40 |") and "| ∞ |" in row
