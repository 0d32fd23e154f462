"""Two-level fractions (`segsweep.analysis.fraction`): every table design checked against its own
matrix, the published resolutions and word-length patterns, and an exhaustive search that no
other choice of generators has less aberration; alias chains, fold-overs and input errors."""
from __future__ import annotations

import itertools
import math
import subprocess
import sys

import numpy as np
import pytest

from segsweep.analysis.fraction import (
    MINIMUM_ABERRATION, DesignError, Fraction, effect_name, empirical_chains, empirical_defining_relation,
    format_chain, minimum_aberration, parse_effect, partial_aliases,
)

TABLE = sorted(MINIMUM_ABERRATION, key=lambda kr: (kr[1], kr[0]))
IDS = [f"2^({k}-{k - runs.bit_length() + 1})" for k, runs in TABLE]

# (k, runs) -> (resolution, word-length pattern A3, A4, ...) of the minimum-aberration design:
# resolutions as in Montgomery's / Box, Hunter & Hunter's table of selected 2^(k-p) designs,
# patterns as catalogued by Chen, Sun & Wu (1993). The exhaustive searches below re-derive every
# pattern, so the verdict does not rest on this transcription.
PUBLISHED = {
    (4, 8): (4, (0, 1)),
    (5, 8): (3, (2, 1, 0)),
    (6, 8): (3, (4, 3, 0, 0)),
    (7, 8): (3, (7, 7, 0, 0, 1)),
    (5, 16): (5, (0, 0, 1)),
    (6, 16): (4, (0, 3, 0, 0)),
    (7, 16): (4, (0, 7, 0, 0, 0)),
    (8, 16): (4, (0, 14, 0, 0, 0, 1)),
    (9, 16): (3, (4, 14, 8, 0, 4, 1, 0)),
    (10, 16): (3, (8, 18, 16, 8, 8, 5, 0, 0)),
    (11, 16): (3, (12, 26, 28, 24, 20, 13, 4, 0, 0)),
    (6, 32): (6, (0, 0, 0, 1)),
    (7, 32): (4, (0, 1, 2, 0, 0)),
    (8, 32): (4, (0, 3, 4, 0, 0, 0)),
    (9, 32): (4, (0, 6, 8, 0, 0, 1, 0)),
    (10, 32): (4, (0, 10, 16, 0, 0, 5, 0, 0)),
    (11, 32): (4, (0, 25, 0, 27, 0, 10, 0, 1, 0)),
    (7, 64): (7, (0, 0, 0, 0, 1)),
    (8, 64): (5, (0, 0, 2, 1, 0, 0)),
    (9, 64): (4, (0, 1, 4, 2, 0, 0, 0)),
    (10, 64): (4, (0, 2, 8, 4, 0, 1, 0, 0)),
    (11, 64): (4, (0, 4, 14, 8, 0, 3, 2, 0, 0)),
}
RES_III = [kr for kr in TABLE if PUBLISHED[kr][0] == 3]
EXHAUSTIVE_LIMIT = 100_000  # generator choices enumerated outright; above it, branch and bound


def _words_from_matrix(x: np.ndarray) -> set[tuple[frozenset, int]]:
    """Independent of the module: every word whose columns multiply to a constant."""
    words = set()
    for r in range(1, x.shape[1] + 1):
        for combo in itertools.combinations(range(x.shape[1]), r):
            col = np.prod(x[:, combo], axis=1)
            if (col == col[0]).all():
                words.add((frozenset(combo), int(col[0])))
    return words


def _column(x: np.ndarray, effect: frozenset) -> np.ndarray:
    return np.prod(x[:, sorted(effect)], axis=1) if effect else np.ones(len(x), dtype=x.dtype)


def _rows(x: np.ndarray) -> set[tuple[int, ...]]:
    return {tuple(int(v) for v in row) for row in x}


# ---- every table design ---------------------------------------------------------------------

@pytest.mark.parametrize("k,runs", TABLE, ids=IDS)
def test_table_design_is_an_orthogonal_principal_fraction(k: int, runs: int) -> None:
    frac = minimum_aberration(k, runs)
    x = frac.matrix()
    assert x.shape == (runs, k) and x.dtype == np.int8 and frac.runs == runs
    assert len(_rows(x)) == runs  # distinct runs
    assert (x.sum(axis=0) == 0).all()  # balanced
    assert (x.T.astype(int) @ x == runs * np.eye(k, dtype=int)).all()  # orthogonal main effects
    assert frac.contains_all_plus and (1,) * k in _rows(x)


@pytest.mark.parametrize("k,runs", TABLE, ids=IDS)
def test_defining_relation_is_what_the_matrix_shows(k: int, runs: int) -> None:
    frac = minimum_aberration(k, runs)
    relation = frac.defining_relation()
    assert len(relation) == 2**frac.p - 1
    assert set(relation) == _words_from_matrix(frac.matrix())
    assert empirical_defining_relation(frac.matrix()) == relation


@pytest.mark.parametrize("k,runs", TABLE, ids=IDS)
def test_resolution_and_word_length_pattern_are_the_published_ones(k: int, runs: int) -> None:
    frac = minimum_aberration(k, runs)
    assert (frac.resolution(), frac.word_length_pattern()) == PUBLISHED[(k, runs)]


def _wlp(masks: tuple[int, ...], k: int) -> tuple[int, ...]:
    """Word-length pattern of generators given as masks over the base factors."""
    counts = [0] * (k + 1)
    for r in range(1, len(masks) + 1):
        for subset in itertools.combinations(masks, r):
            counts[bin(np.bitwise_xor.reduce(subset)).count("1") + r] += 1
    return tuple(counts[3:])


def _best_wlp_exhaustive(k: int, runs: int) -> tuple[int, ...]:
    """The smallest word-length pattern over every set of p distinct base interactions (length
    >= 2) as generators: every regular 2^(k-p) design with distinct columns, up to relabelling."""
    p = k - runs.bit_length() + 1
    popcount = np.array([bin(m).count("1") for m in range(runs)])
    candidates = [m for m in range(runs) if popcount[m] >= 2]
    choices = np.array(list(itertools.combinations(candidates, p)))  # (N, p)
    counts = np.zeros((len(choices), k + 1), dtype=np.int64)
    rows = np.arange(len(choices))
    for r in range(1, p + 1):
        for subset in itertools.combinations(range(p), r):
            word = np.bitwise_xor.reduce(choices[:, list(subset)], axis=1)
            counts[rows, popcount[word] + r] += 1
    best = np.lexsort(counts[:, 3:].T[::-1])[0]
    return tuple(int(c) for c in counts[best, 3:])


def _beats(k: int, runs: int, bound: tuple[int, ...]) -> tuple[int, ...] | None:
    """Branch and bound: generators whose word-length pattern is lexicographically below `bound`,
    or None. Adding a generator only adds words, so a partial pattern >= bound is a dead end."""
    p, popcount = k - runs.bit_length() + 1, [bin(m).count("1") for m in range(runs)]
    candidates = [m for m in range(runs) if popcount[m] >= 2]

    def search(start: int, chosen: tuple[int, ...], group: list[tuple[int, int]], wlp: list[int]):
        if wlp >= list(bound):
            return None
        if len(chosen) == p:
            return chosen
        for j in range(start, len(candidates)):
            new = [(candidates[j], 1)] + [(w ^ candidates[j], n + 1) for w, n in group]
            grown = list(wlp)
            for w, n in new:
                grown[popcount[w] + n - 3] += 1
            found = search(j + 1, chosen + (candidates[j],), group + new, grown)
            if found is not None:
                return found
        return None

    return search(0, (), [], [0] * (k - 2))


def _choices(k: int, runs: int) -> int:
    """How many sets of generators `_best_wlp_exhaustive` enumerates."""
    return math.comb(runs - runs.bit_length(), k - runs.bit_length() + 1)


@pytest.mark.parametrize("k,runs", [kr for kr in TABLE if _choices(*kr) <= EXHAUSTIVE_LIMIT],
                         ids=[i for kr, i in zip(TABLE, IDS) if _choices(*kr) <= EXHAUSTIVE_LIMIT])
def test_table_design_has_minimum_aberration_by_enumeration(k: int, runs: int) -> None:
    assert minimum_aberration(k, runs).word_length_pattern() == _best_wlp_exhaustive(k, runs)


@pytest.mark.parametrize("k,runs", TABLE, ids=IDS)
def test_table_design_has_minimum_aberration_by_branch_and_bound(k: int, runs: int) -> None:
    assert _beats(k, runs, minimum_aberration(k, runs).word_length_pattern()) is None


def test_the_searches_find_a_better_design_when_there_is_one() -> None:
    """Neither search is vacuous: from a resolution III 2^(6-2) (E=AB, F=CD: words ABE, CDF,
    ABCDEF), repeated branch and bound descends to the resolution IV pattern, as enumeration does."""
    wlp = Fraction(6, ("E=AB", "F=CD")).word_length_pattern()
    assert wlp == (2, 0, 0, 1)
    while (found := _beats(6, 16, wlp)) is not None:
        assert _wlp(found, 6) < wlp
        wlp = _wlp(found, 6)
    assert wlp == _best_wlp_exhaustive(6, 16) == (0, 3, 0, 0)


# ---- alias chains ---------------------------------------------------------------------------

def test_known_alias_chains_of_a_2_6_2() -> None:
    frac = Fraction(6, ("E=ABC", "F=BCD"))
    assert frac.resolution() == 4 and frac.runs == 16
    assert [effect_name(w) for w, _ in frac.defining_relation()] == ["ABCE", "ADEF", "BCDF"]
    chains = [format_chain(c) for c in frac.chains()]
    assert chains == ["A", "B", "C", "D", "E", "F", "AB = CE", "AC = BE", "AD = EF", "AE = BC = DF",
                      "AF = DE", "BD = CF", "BF = CD"]
    assert [effect_name(e) for e, _ in frac.alias_chain("A")] == ["BCE", "DEF", "ABCDF"]
    assert frac.alias_chain("A", max_order=2) == ()
    assert frac.alias_chain((0, 1, 2, 4)) == ((frozenset(), 1), *frac.alias_chain("ABCE")[1:])


def test_signs_of_aliases_follow_the_generators_and_the_matrix() -> None:
    frac = Fraction(6, "E=-ABC, F=BCD")
    assert frac.generators == ("E=-ABC", "F=BCD")
    x = frac.matrix()
    assert format_chain(frac.chains()[6]) == "AB = -CE"
    for chain in frac.chains(max_order=3):
        lead, _ = chain[0]
        for effect, sign in chain:
            assert (_column(x, effect) == sign * _column(x, lead)).all(), format_chain(chain)
    for effect, sign in frac.alias_chain("AD"):
        assert (_column(x, effect) == sign * _column(x, frozenset({0, 3}))).all()


@pytest.mark.parametrize("k,runs", TABLE, ids=IDS)
def test_chains_from_the_generators_equal_chains_found_in_the_matrix(k: int, runs: int) -> None:
    for frac in (minimum_aberration(k, runs), minimum_aberration(k, runs).fold_over(0)):
        for order in (1, 2, 3):
            assert frac.chains(order) == empirical_chains(frac.matrix(), order)
        assert partial_aliases(frac.matrix()) == ()


def test_resolution_iv_shows_main_effects_alone() -> None:
    chains = minimum_aberration(8, 16).chains()
    assert all(len(c) == 1 for c in chains if len(c[0][0]) == 1)
    assert {len(c) for c in chains if len(c[0][0]) == 2} == {4}  # 2^(8-4): 28 2fi's in 7 chains of 4


# ---- fold-overs -----------------------------------------------------------------------------

@pytest.mark.parametrize("k,runs", RES_III, ids=[f"{k}-factors-{r}-runs" for k, r in RES_III])
def test_full_fold_over_of_a_resolution_iii_fraction_is_resolution_iv(k: int, runs: int) -> None:
    frac = minimum_aberration(k, runs)
    folded = frac.fold_over()
    assert _rows(folded.matrix()) == _rows(frac.folded_matrix()) == _rows(-frac.matrix())
    assert not folded.contains_all_plus  # odd words change sign: the recipe run is not in it
    both = np.vstack([frac.matrix(), folded.matrix()])
    relation = empirical_defining_relation(both)
    assert relation == tuple(w for w in frac.defining_relation() if len(w[0]) % 2 == 0)
    assert min(len(w) for w, _ in relation) >= 4
    chains = empirical_chains(both)
    assert all(len(c) == 1 for c in chains if len(c[0][0]) == 1)  # no main effect aliased with a 2fi
    assert partial_aliases(both) == ()
    assert folded.fold_over() == frac


@pytest.mark.parametrize("k,runs", [(5, 8), (7, 8), (9, 16), (6, 16)])
def test_fold_over_on_one_factor_frees_it_and_its_interactions(k: int, runs: int) -> None:
    frac = minimum_aberration(k, runs)
    for f in range(k):
        folded = frac.fold_over(f)
        assert folded == frac.fold_over(frac.letters[f]) and folded.fold_over(f) == frac
        assert _rows(folded.matrix()) == _rows(frac.folded_matrix(f))
        both = np.vstack([frac.matrix(), folded.matrix()])
        assert partial_aliases(both) == ()
        for chain in empirical_chains(both):
            if any(f in e and len(e) <= 2 for e, _ in chain):
                assert len(chain) == 1, format_chain(chain)  # alone among main effects and 2fi's


def test_fold_over_of_a_design_with_only_even_words_repeats_it() -> None:
    frac = minimum_aberration(4, 8)  # I = ABCD
    assert frac.fold_over() == frac and _rows(frac.folded_matrix()) == _rows(frac.matrix())


# ---- the all-(+1) run, full factorials, standard order ----------------------------------------

def test_sign_flipped_generators_can_leave_out_the_all_plus_run() -> None:
    frac = Fraction(5, ("E=-ABCD",))
    assert not frac.contains_all_plus and (1,) * 5 not in _rows(frac.matrix())
    assert ((frozenset(range(5)), -1),) == frac.defining_relation()
    assert Fraction(5, ("E=ABCD",)).contains_all_plus


@pytest.mark.parametrize("k,runs", [(3, 8), (4, 16), (4, 64), (1, 8)])
def test_runs_at_least_two_to_the_k_give_the_full_factorial(k: int, runs: int) -> None:
    frac = minimum_aberration(k, runs)
    assert frac.generators == () and frac.runs == 2**k and len(_rows(frac.matrix())) == 2**k
    assert frac.resolution() is None and frac.defining_relation() == ()
    assert frac.word_length_pattern() == (0,) * max(k - 2, 0)
    assert all(len(c) == 1 for c in frac.chains()) and frac.fold_over() == frac


def test_matrix_is_in_standard_order() -> None:
    x = Fraction(4, ("D=ABC",)).matrix()
    assert x[:, 0].tolist() == [-1, 1] * 4 and x[:, 1].tolist() == [-1, -1, 1, 1] * 2
    assert x[:, 2].tolist() == [-1] * 4 + [1] * 4 and (x[:, 3] == x[:, 0] * x[:, 1] * x[:, 2]).all()
    y = Fraction(3, ("A=BC",)).matrix()  # base factors need not come first
    assert y[:, 1].tolist() == [-1, 1, -1, 1] and (y[:, 0] == y[:, 1] * y[:, 2]).all()


def test_generators_are_normalised() -> None:
    frac = Fraction(6, ["f = -dcb", "E=+CBA"])
    assert frac.generators == ("E=ABC", "F=-BCD") and frac == Fraction(6, ("E=ABC", "F=-BCD"))
    assert frac.base_factors == (0, 1, 2, 3) and frac.p == 2


def test_effect_helpers() -> None:
    assert parse_effect("BA", 3) == frozenset({0, 1}) == parse_effect((1, 0), 3)
    assert parse_effect("I", 3) == frozenset() and effect_name(frozenset()) == "I"
    assert effect_name(frozenset({8, 0})) == "AJ"  # I is skipped
    with pytest.raises(DesignError, match="ABC"):
        parse_effect("AD", 3)


def test_partial_aliasing_is_reported_for_a_stack_missing_runs() -> None:
    x = minimum_aberration(7, 8).matrix()[:7]  # one run lost
    pairs = partial_aliases(x)
    assert pairs and all(abs(c) < 1 for _, _, c in pairs)


def test_unequal_rounds_of_a_fraction_and_its_fold_over_alias_partially() -> None:
    """Fraction, fold-over, fraction (alternating rounds): A and BD of the 2^(5-2) (D=AB, E=AC:
    A = BD = CE) are no longer equal, nor orthogonal: cosine (2 - 1) / 3."""
    frac = minimum_aberration(5, 8)
    stack = np.vstack([frac.matrix(), frac.fold_over().matrix(), frac.matrix()])
    pairs = {(effect_name(a), effect_name(b)): c for a, b, c in partial_aliases(stack)}
    assert pairs[("A", "BD")] == pytest.approx(1 / 3)
    assert partial_aliases(np.vstack([stack, frac.fold_over().matrix()])) == ()  # two of each: regular again


def test_a_constant_column_is_aliased_with_the_mean() -> None:
    x = Fraction(3).matrix()
    x[:, 2] = -1  # C never changes
    chains = empirical_chains(x)
    assert [format_chain(c) for c in chains] == ["I = -C", "A = -AC", "B = -BC", "AB"]


def test_import_needs_only_numpy() -> None:
    code = ("import sys, segsweep.analysis.fraction; print(sorted({'torch', 'scipy', 'optuna', 'pandas'} "
            "& {m.split('.')[0] for m in sys.modules}))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


# ---- errors -----------------------------------------------------------------------------------

@pytest.mark.parametrize("k,generators,expected", [
    (5, ("E=ABX",), ["'E=ABX'", "X", "ABCDE"]),
    (5, ("E=ABI",), ["'E=ABI'", "I is skipped"]),
    (5, ("EABC",), ["'EABC'", "E=ABC"]),
    (5, ("E=",), ["'E='", "two or more"]),
    (5, ("E=A",), ["'E=A'", "two or more"]),
    (5, ("E=AAB",), ["'E=AAB'", "repeats"]),
    (6, ("E=ABC", "E=BCD"), ["'E=ABC'", "'E=BCD'", "both define E"]),
    (6, ("E=ABC", "F=ABE"), ["'F=ABE'", "only the base factors ABCD", "generated factors EF"]),
    (6, ("E=ABC", "F=-ABC"), ["'E=ABC'", "'F=-ABC'", "same word"]),
    (0, (), ["k=0", "1..25"]),
    (26, (), ["k=26"]),
])
def test_bad_generators_are_refused_with_what_is_valid(k: int, generators: tuple[str, ...], expected: list[str]) -> None:
    with pytest.raises(ValueError) as info:
        Fraction(k, generators)
    assert isinstance(info.value, DesignError)
    for text in expected:
        assert text in str(info.value)


@pytest.mark.parametrize("k,runs", [(12, 64), (8, 8), (5, 12), (5, 128), (0, 8)])
def test_unknown_table_entries_are_refused_in_one_line(k: int, runs: int) -> None:
    with pytest.raises(DesignError) as info:
        minimum_aberration(k, runs)
    message = str(info.value)
    assert "\n" not in message and f"k={k}" in message and "8, 16, 32, 64" in message and "k <= 11" in message


def test_bad_fold_over_factor_and_matrix_are_refused() -> None:
    frac = minimum_aberration(5, 8)
    for bad in (5, -1, "F", "AB", "I"):
        with pytest.raises(DesignError, match="fold-over factor"):
            frac.fold_over(bad)
    with pytest.raises(DesignError, match="±1"):
        empirical_chains(np.zeros((4, 2)))
    with pytest.raises(DesignError, match="shape"):
        empirical_defining_relation(np.ones(4))
    with pytest.raises(DesignError, match="max_order"):
        frac.chains(0)
