"""The analysis layer: least squares against statsmodels, designs and their rounds, claims'
contrasts, the sequential procedure, and its operating characteristics by simulation (vectorised,
fixed seeds): false better/worse over all claims and looks at most alpha, power for a 0.01
effect within 64 fraction runs, false equivalence, a noisy side arm, diverged runs, interactions."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from segsweep.analysis.design import Design, Factor, Schedule, design_from_dict, design_to_dict, fraction_cells
from segsweep.analysis.estimate import ClaimTerm, columns, contrast
from segsweep.analysis.fraction import Fraction, minimum_aberration
from segsweep.analysis.looks import Boundaries, NullLooks, boundaries_from_null, decide
from segsweep.analysis.model import Projection, fit
from segsweep.analysis.operating import Simulator
from segsweep.analysis.record import SequentialRecord
from segsweep.analysis.verdicts import Settings, analyse

PATHS = 20_000  # null paths behind the boundaries in these tests
STUDIES = 4_000
ALPHA = 0.05


def label(overrides: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in overrides.items()) or "recipe"


def fraction_design(k: int, runs: int, initial: int, max_rounds: int, sides: int = 0, add: str = "replicate") -> Design:
    factors = tuple(Factor(f"f{i}", (1, 0), "ABCDEFGHJK"[i]) for i in range(k))
    fraction = minimum_aberration(k, runs) if runs < 2**k else Fraction(k)
    side_arms = [(f"side{j}", {f"s{j}": True}) for j in range(sides)]
    cells = fraction_cells(factors, fraction, add, side_arms, label)
    return Design("fraction", cells, Schedule(initial=initial, max=max_rounds, add=add), factors, fraction,
                  baseline="recipe")


def factor_claims(design: Design) -> list[ClaimTerm]:
    return [ClaimTerm(f.key, "difference", "better", factor=f.key) for f in design.factors]


def upper_binomial(rate: float, n: int, level: float = 0.01) -> float:
    """One-sided upper confidence bound of a binomial rate (Clopper-Pearson)."""
    return float(stats.beta.ppf(1 - level, rate * n + 1, n - rate * n))


# --------------------------------------------------------------------------- least squares


def test_pooled_least_squares_agrees_with_statsmodels() -> None:
    sm = pytest.importorskip("statsmodels.api")
    design = fraction_design(5, 8, 2, 2, sides=1)
    runs = design.runs_through(2)
    cols = columns(design, runs)
    y = np.random.default_rng(0).normal(0.8, 0.01, len(runs))
    ours = fit(cols.matrix, y)
    theirs = sm.OLS(y, cols.matrix).fit()
    assert ours.df == int(theirs.df_resid)
    assert np.allclose(cols.matrix @ ours.beta, theirs.fittedvalues)
    assert ours.s2 == pytest.approx(theirs.scale)
    for claim in factor_claims(design) + [ClaimTerm("s", "difference", "better", pairs=(("s0=True", "recipe"),))]:
        c = contrast(design, cols, claim)
        e = ours.estimate(c)
        t = theirs.t_test(c)
        assert e.value == pytest.approx(float(t.effect[0]))
        assert e.se == pytest.approx(float(t.sd[0, 0]))
        assert e.t == pytest.approx(float(t.tvalue[0, 0]))
        assert e.ci[0] == pytest.approx(float(t.conf_int()[0, 0]))
    # the vectorised form gives the same numbers for many outcome vectors at once
    proj = Projection.of(cols.matrix, np.array([contrast(design, cols, c) for c in factor_claims(design)]))
    many = np.vstack([y, y[::-1]])
    est, se = proj.estimates(many)
    assert est[0, 0] == pytest.approx(ours.estimate(contrast(design, cols, factor_claims(design)[0])).value)
    assert se.shape == (2, 5)


def test_a_main_effect_in_a_balanced_fraction_is_the_difference_of_level_means() -> None:
    design = fraction_design(6, 16, 1, 1)
    runs = design.runs(1)
    y = np.random.default_rng(1).normal(size=len(runs))
    values = {(r.cell, r.seed): v for r, v in zip(runs, y)}
    cols = columns(design, runs)
    model = fit(cols.matrix, y)
    codes = np.array([design.cell(r.cell).codes for r in runs])
    for j, claim in enumerate(factor_claims(design)):
        expected = y[codes[:, j] == 1].mean() - y[codes[:, j] == -1].mean()
        assert model.estimate(contrast(design, cols, claim)).value == pytest.approx(expected)
    assert len(values) == 16


# --------------------------------------------------------------------------- designs


def test_every_fraction_run_has_its_own_seed_and_side_arms_share_the_recipe_seed() -> None:
    design = fraction_design(6, 16, 2, 5, sides=2)
    seeds = [r.seed for r in design.runs_through(5) if design.cell(r.cell).side is None]
    assert len(seeds) == len(set(seeds)) == 5 * 16
    for round_ in range(1, 6):
        runs = design.runs(round_)
        recipe = [r for r in runs if r.cell == "recipe"]
        sides = [r for r in runs if design.cell(r.cell).side is not None]
        assert len(recipe) == 1 and len(sides) == 2 and {r.seed for r in sides} == {recipe[0].seed}
        assert {r.round for r in runs} == {round_}
    assert design.planned_runs() == 5 * 18 and design.looks() == (2, 3, 4, 5)


def test_foldover_rounds_alternate_and_add_the_recipe_for_side_arms() -> None:
    design = fraction_design(5, 8, 2, 4, sides=1, add="foldover")
    first, second = design.round_rows(1), design.round_rows(2)
    assert set(first) == {tuple(-v for v in row) for row in second}
    assert (1,) * 5 in first and (1,) * 5 not in second
    runs = design.runs(2)
    assert sum(r.cell == "recipe" for r in runs) == 1  # added for the side arm
    assert design.round_rows(3) == first
    combined = np.array([design.cell(r.cell).codes for r in design.runs_through(2) if design.cell(r.cell).side is None
                         and r.cell != "recipe"] + [(1,) * 5])
    assert combined.shape[1] == 5


def test_a_design_survives_its_record() -> None:
    design = fraction_design(5, 8, 2, 4, sides=1, add="f2")
    back = design_from_dict(json.loads(json.dumps(design_to_dict(design))))
    assert back.runs_through(4) == design.runs_through(4)
    assert [c.codes for c in back.cells] == [c.codes for c in design.cells]


# --------------------------------------------------------------------------- the procedure


def test_the_first_look_boundary_is_the_exact_t_quantile_and_later_ones_spend_their_share() -> None:
    rng = np.random.default_rng(0)
    null = rng.standard_t(10, size=(200_000, 3))
    bounds = boundaries_from_null(null, [1 / 3, 2 / 3, 1.0], 10, 0.05, True)
    from segsweep.analysis.looks import spent

    assert bounds[0] == pytest.approx(stats.t.ppf(1 - spent(1 / 3, 0.05) / 2, 10))
    crossed = (np.abs(null) > np.array(bounds)).cumsum(axis=1) > 0
    assert crossed[:, -1].mean() == pytest.approx(0.05, abs=0.003)


def test_holm_passes_a_rejected_claims_level_on_at_the_same_look() -> None:
    """Two claims: one far beyond its boundary at level alpha/2, one between the boundaries at
    alpha/2 and alpha: the second is rejected only because the first passed its level on."""
    t = np.random.default_rng(0).standard_normal((50_000, 1, 2))
    null = NullLooks(t, np.ones((1, 2)), np.array([1e9, 1e9]))  # normal tails: df infinite
    bounds = Boundaries.build(null, ["difference", "difference"], 0.05, 0.05)
    c_half, c_full = bounds.primary[1, 2, 0], bounds.primary[1, 1, 0]
    assert c_half > c_full
    est = np.array([[10.0, (c_half + c_full) / 2]])
    verdicts = decide(est, np.ones((1, 2)), bounds, ["difference", "difference"], 0.01, final=True)
    assert [v.verdict for v in verdicts] == ["better", "better"]
    assert verdicts[1].primary.level == pytest.approx(0.05)
    alone = decide(np.array([[0.0, (c_half + c_full) / 2]]), np.ones((1, 2)), bounds, ["difference"] * 2, 0.01, True)
    assert alone[1].verdict == "inconclusive"


def test_sequential_record_is_strict_json_and_reads_back(tmp_path) -> None:
    design = fraction_design(4, 8, 2, 3)
    rng = np.random.default_rng(2)
    values = {(r.cell, r.seed): 0.8 + rng.normal(0, 0.01) for r in design.runs_through(2)}
    analysis = analyse(design, factor_claims(design), values, Settings(paths=PATHS))
    record = SequentialRecord.from_analysis(analysis, "a 2^(4-1)", "stopped")
    text = record.to_json()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    (tmp_path / "sequential.json").write_text(text)
    assert SequentialRecord.read(tmp_path / "sequential.json") == record


# --------------------------------------------------------------------------- operating characteristics


@pytest.fixture(scope="module")
def six_factors() -> tuple[Design, Simulator]:
    """The claims study's shape: 6 two-level factors in a 2^(6-2) resolution IV fraction, 2 rounds
    before the first look, at most 4 (64 fraction runs), 6 claims."""
    design = fraction_design(6, 16, 2, 4)
    return design, Simulator(design, factor_claims(design), Settings(paths=PATHS))


def effect_of(design: Design, j: int, size: float):
    return lambda cell: 0.8 + size / 2 * design.cell(cell).codes[j]


def test_no_true_effect_gives_a_false_better_or_worse_at_most_alpha(six_factors) -> None:
    design, sim = six_factors
    rates = sim.run(lambda cell: 0.8, 0.01, studies=STUDIES, seed=11)
    assert upper_binomial(rates.any_false_difference, STUDIES) <= ALPHA + 0.01  # one-sided 99% bound
    assert rates.any_false_difference <= ALPHA


def test_a_001_effect_is_found_with_power_085_within_64_fraction_runs(six_factors) -> None:
    design, sim = six_factors
    rates = sim.run(effect_of(design, 0, 0.01), 0.01, studies=STUDIES, seed=12)
    assert rates.better[0] >= 0.85
    assert rates.mean_runs <= 64


def test_an_effect_of_twice_the_margin_is_declared_equivalent_at_most_alpha(six_factors) -> None:
    design, sim = six_factors
    rates = sim.run(effect_of(design, 1, 0.02), 0.01, studies=STUDIES, seed=13)
    assert rates.equivalent[1] <= ALPHA
    assert rates.better[1] >= 0.9


def test_a_side_arm_ten_times_as_variable_does_not_inflate_the_others_error_rates() -> None:
    design = fraction_design(6, 16, 2, 4, sides=1)
    claims = factor_claims(design) + [ClaimTerm("side", "difference", "better", pairs=(("recipe", "s0=True"),))]
    sim = Simulator(design, claims, Settings(paths=PATHS))
    sd = {c.label: (0.01 * math.sqrt(10) if c.side else 0.01) for c in design.cells}
    rates = sim.run(lambda cell: 0.8, sd, studies=STUDIES, seed=14)
    false_factor = (rates.better[:6] + rates.worse[:6]).sum()  # at most the sum of the six claims' rates
    assert false_factor <= ALPHA  # the others' family rate is not inflated
    assert sum(n for pattern, n in rates.excluded.items() if pattern) > 0  # the check does catch it, sometimes


def test_diverged_runs_scored_zero_keep_the_error_rates(six_factors) -> None:
    """A run that diverges without a checkpoint counts 0 (the outcome rule): 1 run in 200, in any cell."""
    design, sim = six_factors

    def diverge(rng: np.random.Generator, y: np.ndarray) -> np.ndarray:
        return np.where(rng.random(y.shape) < 0.005, 0.0, y)

    rates = sim.run(lambda cell: 0.8, 0.01, studies=STUDIES, seed=15, corrupt=diverge)
    assert rates.any_false_difference <= ALPHA


def test_an_interaction_as_large_as_a_main_effect_is_flagged_with_the_stated_power() -> None:
    design = fraction_design(5, 16, 2, 2)  # resolution V: every two-factor interaction estimable
    claims = factor_claims(design)
    rng = np.random.default_rng(16)
    size = 0.01  # the interaction of f0 and f1 in Dice units, as large as a 0.01 main effect
    flagged, stated = 0, []
    trials = 400
    for _ in range(trials):
        values = {}
        for r in design.runs_through(2):
            c = design.cell(r.cell).codes
            values[(r.cell, r.seed)] = 0.8 + size / 2 * c[0] + size / 2 * c[0] * c[1] + rng.normal(0, 0.005)
        analysis = analyse(design, claims, values, Settings(paths=200))
        chain = next(ch for ch in analysis.claims[0].chains if "f0*f1" in ch.members)
        flagged += chain.flagged
        stated.append(analysis.interaction_power)
    power = float(np.mean(stated))  # the report's statement, for an interaction the size of the margin
    assert abs(flagged / trials - power) < 4 * math.sqrt(power * (1 - power) / trials) + 0.02
