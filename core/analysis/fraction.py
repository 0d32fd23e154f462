"""Two-level regular fractional factorial designs: generators, the ±1 run matrix, the defining
relation, resolution and word-length pattern, alias chains, fold-overs and a table of
minimum-aberration designs. Pure combinatorics: nothing here knows runs, seeds or files.

Factors are indexed 0..k-1 and named A, B, C, ... (I is skipped: it names the identity). An
*effect* (or *word*) is a frozenset of factor indices: {i} a main effect, {i, j} a two-factor
interaction (2fi), frozenset() the mean. Levels are coded ±1. A *signed effect* is a pair
(effect, sign) and a *chain* a tuple of them, canonically sorted (by order, then by indices),
whose first member has sign +1 and whose every member's column equals its sign times the first
member's column over the runs of the design.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Iterable, Union

import numpy as np

from ..errors import SegsweepError

LETTERS = "ABCDEFGHJKLMNOPQRSTUVWXYZ"  # factor names; I is the identity, never a factor
RUN_SIZES = (8, 16, 32, 64)  # run sizes of the minimum-aberration table
MAX_TABLE_FACTORS = 11
MAX_EMPIRICAL_FACTORS = 16  # empirical_defining_relation enumerates all 2**k words

Effect = frozenset[int]  # factor indices
SignedEffect = tuple[Effect, int]  # (effect, +1 or -1)
Chain = tuple[SignedEffect, ...]
EffectLike = Union[Iterable[int], str]  # frozenset({0, 1}), (0, 1) or "AB"


class DesignError(SegsweepError, ValueError):
    """A fraction that cannot be built as asked (bad generators, unknown table entry, bad factor)."""


# Minimum-aberration generators: the table of selected 2^(k-p) designs in Montgomery, "Design and
# Analysis of Experiments" (ch. 8, after Box, Hunter & Hunter). Every entry is checked in
# tests/test_fraction.py against the word-length pattern of Chen, Sun & Wu (1993) and proven
# minimum aberration there by exhaustive search over every choice of generators.
MINIMUM_ABERRATION: dict[tuple[int, int], tuple[str, ...]] = {
    (4, 8): ("D=ABC",),
    (5, 8): ("D=AB", "E=AC"),
    (6, 8): ("D=AB", "E=AC", "F=BC"),
    (7, 8): ("D=AB", "E=AC", "F=BC", "G=ABC"),
    (5, 16): ("E=ABCD",),
    (6, 16): ("E=ABC", "F=BCD"),
    (7, 16): ("E=ABC", "F=BCD", "G=ACD"),
    (8, 16): ("E=BCD", "F=ACD", "G=ABC", "H=ABD"),
    (9, 16): ("E=ABC", "F=BCD", "G=ACD", "H=ABD", "J=ABCD"),
    (10, 16): ("E=ABC", "F=BCD", "G=ACD", "H=ABD", "J=ABCD", "K=AB"),
    (11, 16): ("E=ABC", "F=BCD", "G=ACD", "H=ABD", "J=ABCD", "K=AB", "L=AC"),
    (6, 32): ("F=ABCDE",),
    (7, 32): ("F=ABCD", "G=ABDE"),
    (8, 32): ("F=ABC", "G=ABD", "H=BCDE"),
    (9, 32): ("F=BCDE", "G=ACDE", "H=ABDE", "J=ABCE"),
    (10, 32): ("F=ABCD", "G=ABCE", "H=ABDE", "J=ACDE", "K=BCDE"),
    (11, 32): ("F=ABC", "G=BCD", "H=CDE", "J=ACD", "K=ADE", "L=BDE"),
    (7, 64): ("G=ABCDEF",),
    (8, 64): ("G=ABCD", "H=ABEF"),
    (9, 64): ("G=ABCD", "H=ACEF", "J=CDEF"),
    (10, 64): ("G=BCDF", "H=ACDF", "J=ABDE", "K=ABCE"),
    (11, 64): ("G=CDE", "H=ABCD", "J=ABF", "K=BDEF", "L=ADEF"),
}

_GENERATOR = re.compile(r"^([A-Z])=([+-]?)([A-Z]*)$")


def effect_key(effect: Effect) -> tuple[int, tuple[int, ...]]:
    """The canonical order of effects: the mean, main effects, 2fi's, ..., each by indices."""
    return len(effect), tuple(sorted(effect))


def effect_name(effect: Effect) -> str:
    """"AB" for {0, 1}; "I" for the mean."""
    return "".join(LETTERS[i] for i in sorted(effect)) or "I"


def format_chain(chain: Chain) -> str:
    """"AE = BC = -DF": each member's column is its sign times the first member's."""
    return " = ".join(("-" if sign < 0 else "") + effect_name(e) for e, sign in chain)


def parse_effect(effect: EffectLike, k: int) -> Effect:
    """An effect from letters ("AB"; "I" is the mean) or factor indices, checked against k factors."""
    letters = LETTERS[:k]
    if isinstance(effect, str):
        text = effect.replace(" ", "").upper()
        if text == "I":
            return frozenset()
        bad = [c for c in text if c not in letters]
        if bad or len(set(text)) != len(text):
            raise DesignError(f"effect {effect!r}: expected distinct letters among {letters} "
                              f"(one per factor; I is not a factor)")
        return frozenset(letters.index(c) for c in text)
    indices = tuple(effect)
    if any(isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < k for i in indices) \
            or len(set(indices)) != len(indices):
        raise DesignError(f"effect {indices}: expected distinct factor indices in 0..{k - 1}")
    return frozenset(int(i) for i in indices)


def _mask(effect: Effect) -> int:
    return sum(1 << i for i in effect)


def _unmask(mask: int) -> Effect:
    return frozenset(i for i in range(mask.bit_length()) if mask >> i & 1)


def _canonical(signed: Iterable[SignedEffect]) -> tuple[SignedEffect, ...]:
    return tuple(sorted(signed, key=lambda es: effect_key(es[0])))


def _generator_text(generated: int, mask: int, sign: int) -> str:
    return f"{LETTERS[generated]}={'-' if sign < 0 else ''}{effect_name(_unmask(mask))}"


def _parse_generators(k: int, generators: tuple[str, ...]) -> tuple[tuple[int, int, int], ...]:
    """(generated factor, mask of its word in the base factors, sign) per generator, sorted by
    the generated factor; every problem named with the generator and what would be valid."""
    letters = LETTERS[:k]
    parsed: list[tuple[int, int, int, str]] = []
    for text in generators:
        spec = "".join(str(text).split()).upper()
        m = _GENERATOR.match(spec)
        if m is None:
            raise DesignError(f"generator {text!r}: expected LETTER=WORD or LETTER=-WORD, e.g. 'E=ABC' or 'F=-BCD'")
        left, sign, word = m.groups()
        bad = sorted({c for c in left + word if c not in letters})
        if bad:
            raise DesignError(f"generator {text!r}: {', '.join(bad)} is not one of the {k} factors "
                              f"{letters} (I is skipped: it names the identity)")
        if len(set(word)) != len(word):
            raise DesignError(f"generator {text!r}: a letter repeats in {word!r} (each base factor at most once)")
        if len(word) < 2:
            raise DesignError(f"generator {text!r}: the word needs two or more base factors "
                              f"(a single factor would give {left} the same column as it)")
        parsed.append((letters.index(left), _mask(frozenset(letters.index(c) for c in word)), -1 if sign == "-" else 1, text))
    generated = {g for g, _, _, _ in parsed}
    base = "".join(letters[i] for i in range(k) if i not in generated)
    seen: dict[int, str] = {}
    for g, mask, _, text in parsed:
        if g in seen:
            raise DesignError(f"generators {seen[g]!r} and {text!r} both define {letters[g]}: each generated factor once")
        seen[g] = text
        if mask & _mask(frozenset(generated)):
            raise DesignError(f"generator {text!r}: its word may use only the base factors {base or '(none)'}, "
                              f"not the generated factors {''.join(letters[i] for i in sorted(generated))}")
    words = {}
    for g, mask, _, text in parsed:
        if mask in words:
            raise DesignError(f"generators {words[mask]!r} and {text!r} use the same word: the two generated "
                              f"factors would share one column (up to sign)")
        words[mask] = text
    return tuple(sorted((g, mask, s) for g, mask, s, _ in parsed))


@dataclass(frozen=True)
class Fraction:
    """A regular 2^(k-p) fraction: `k` factors, `p = len(generators)` of them generated as signed
    products of the others (the base factors), `runs = 2**(k-p)`. Generators (a sequence, or
    one comma-separated string) are normalised to "E=ABC" / "F=-BCD" and sorted by the generated
    factor, so the same generators however written compare equal. With every sign + (the
    principal fraction) the all-(+1) run is in the design."""

    k: int
    generators: tuple[str, ...] = ()
    _gens: tuple[tuple[int, int, int], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, (int, np.integer)) or not 1 <= self.k <= len(LETTERS):
            raise DesignError(f"k={self.k!r}: expected an integer number of factors in 1..{len(LETTERS)}")
        gens = self.generators.split(",") if isinstance(self.generators, str) else tuple(self.generators)
        gens = tuple(g for g in gens if not isinstance(g, str) or g.strip())
        parsed = _parse_generators(int(self.k), gens)
        object.__setattr__(self, "k", int(self.k))
        object.__setattr__(self, "_gens", parsed)
        object.__setattr__(self, "generators", tuple(_generator_text(*gen) for gen in parsed))

    @property
    def p(self) -> int:
        return len(self._gens)

    @property
    def runs(self) -> int:
        return 2 ** (self.k - self.p)

    @property
    def letters(self) -> str:
        return LETTERS[: self.k]

    @property
    def base_factors(self) -> tuple[int, ...]:
        """The factors not generated, in index order: they vary in standard (Yates) order."""
        generated = {g for g, _, _ in self._gens}
        return tuple(i for i in range(self.k) if i not in generated)

    @property
    def contains_all_plus(self) -> bool:
        """Whether the all-(+1) run is one of the design's runs (true iff every generator has a
        + sign, i.e. this is the principal fraction)."""
        return all(s > 0 for _, _, s in self._gens)

    def matrix(self) -> np.ndarray:
        """(runs, k) int8 of ±1: base factors in standard order (the first base factor alternates
        fastest, the first run is all -1 on them), generated columns their signed products."""
        base = self.base_factors
        r = np.arange(self.runs)
        x = np.empty((self.runs, self.k), dtype=np.int8)
        for j, f in enumerate(base):
            x[:, f] = 2 * ((r >> j) & 1) - 1
        for g, mask, s in self._gens:
            x[:, g] = s * np.prod(x[:, sorted(_unmask(mask))], axis=1)
        return x

    def _words(self) -> list[tuple[int, int]]:
        """(mask, sign) of every element of the defining contrast subgroup but the identity."""
        group = [(0, 1)]
        for g, mask, s in self._gens:
            group += [(w ^ mask ^ (1 << g), t * s) for w, t in group]
        return group[1:]

    def defining_relation(self) -> tuple[SignedEffect, ...]:
        """The 2**p - 1 signed words W of I = ±W (the product of W's columns is that sign on
        every run), canonically sorted; empty for a full factorial."""
        return _canonical((_unmask(w), s) for w, s in self._words())

    def resolution(self) -> int | None:
        """The length of the shortest defining word; None for a full factorial (no word: nothing
        is aliased, resolution "infinity")."""
        words = self._words()
        return min(bin(w).count("1") for w, _ in words) if words else None

    def word_length_pattern(self) -> tuple[int, ...]:
        """(A3, A4, ..., Ak): how many defining words have each length (lengths 1 and 2 cannot
        occur: generators are words of two or more base factors, all distinct)."""
        counts = [0] * (self.k + 1)
        for w, _ in self._words():
            counts[bin(w).count("1")] += 1
        return tuple(counts[3:])

    def alias_chain(self, effect: EffectLike, max_order: int | None = None) -> tuple[SignedEffect, ...]:
        """The signed effects aliased with `effect` (letters or indices): (X, s) with column X = s
        times column `effect` over the runs, X of order <= max_order (None: all), canonically
        sorted; `effect` itself is left out, the mean (frozenset()) is in when `effect` is a word."""
        mask = _mask(parse_effect(effect, self.k))
        out = [(_unmask(mask ^ w), s) for w, s in self._words()]
        return _canonical(e for e in out if max_order is None or len(e[0]) <= max_order)

    def chains(self, max_order: int = 2) -> tuple[Chain, ...]:
        """The alias chains of every effect of order 1..max_order, leaving out effects of higher
        order: each effect is in exactly one chain (alone when nothing of order <= max_order is
        aliased with it); a chain aliased with the mean starts with the mean. Chains in
        canonical order of their first member."""
        words = self._words()
        seen: set[int] = set()
        chains = []
        for effect in _effects(self.k, max_order):
            mask = _mask(effect)
            if mask in seen:
                continue
            members = [(mask, 1)] + [(mask ^ w, s) for w, s in words if bin(mask ^ w).count("1") <= max_order]
            seen.update(m for m, _ in members)
            if len(members) > 1 or mask:
                chains.append(_canonical((_unmask(m), s) for m, s in members))
        return tuple(chains)

    def _factor(self, factor: int | str) -> int:
        if isinstance(factor, str) and factor.strip().upper() in tuple(self.letters):
            return self.letters.index(factor.strip().upper())
        if isinstance(factor, (int, np.integer)) and not isinstance(factor, bool) and 0 <= factor < self.k:
            return int(factor)
        raise DesignError(f"fold-over factor {factor!r}: expected an index in 0..{self.k - 1} or one letter among {self.letters}")

    def folded_matrix(self, factor: int | str | None = None) -> np.ndarray:
        """`matrix()` with the column of `factor` (index or letter) negated, or every column when
        `factor` is None, row for row."""
        x = self.matrix()
        if factor is None:
            return -x
        x[:, self._factor(factor)] *= -1
        return x

    def fold_over(self, factor: int | str | None = None) -> Fraction:
        """The fold-over as a fraction: the same words, with the signs of `folded_matrix(factor)`
        (its `matrix()` holds the same runs, in its own standard order). Run beside this fraction,
        a fold-over on one factor frees that factor's main effect and every 2fi containing it from
        the other main effects and 2fi's (the words containing the factor drop out); the full
        fold-over (`factor` None) frees every main effect from the 2fi's (the odd words drop out:
        resolution III becomes IV). Words that keep their sign stay: see `empirical_chains`."""
        f = None if factor is None else self._factor(factor)
        gens = []
        for g, mask, s in self._gens:
            odd = (bin(mask).count("1") + 1) % 2 == 1  # every column negated: odd words change sign
            flips = odd if f is None else (f == g or bool(mask >> f & 1))
            gens.append(_generator_text(g, mask, -s if flips else s))
        return Fraction(self.k, tuple(gens))


def _effects(k: int, max_order: int) -> Iterable[Effect]:
    """The mean, then every effect of order 1..max_order, in canonical order."""
    if isinstance(max_order, bool) or not isinstance(max_order, (int, np.integer)) or max_order < 1:
        raise DesignError(f"max_order={max_order!r}: expected an integer >= 1 (1: main effects, 2: and 2fi's, ...)")
    for order in range(0, min(max_order, k) + 1):
        for combo in itertools.combinations(range(k), order):
            yield frozenset(combo)


def minimum_aberration(k: int, runs: int) -> Fraction:
    """A minimum-aberration 2^(k-p) fraction of k factors in `runs` runs (runs = 2**(k-p)), from
    `MINIMUM_ABERRATION`; `runs >= 2**k` gives the full factorial (2**k runs: replicating it is
    the caller's choice). The principal fraction: the all-(+1) run is always in it."""
    known = (not isinstance(k, bool) and isinstance(k, (int, np.integer)) and 1 <= k <= MAX_TABLE_FACTORS
             and runs in RUN_SIZES and (runs >= 2**k or (int(k), runs) in MINIMUM_ABERRATION))
    if not known:
        raise DesignError(f"no minimum-aberration design for k={k!r} factors in runs={runs!r}: the table has "
                          f"runs in {', '.join(map(str, RUN_SIZES))} with 1 <= k <= {MAX_TABLE_FACTORS} "
                          f"(8 runs: k <= 7; runs >= 2**k: the full factorial)")
    return Fraction(int(k)) if runs >= 2**k else Fraction(int(k), MINIMUM_ABERRATION[(int(k), runs)])


def _check_matrix(matrix: np.ndarray) -> np.ndarray:
    x = np.asarray(matrix)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise DesignError(f"expected a (runs, k) matrix with at least one run and one factor, got shape {x.shape}")
    if not np.isin(x, (-1, 1)).all():
        raise DesignError("expected a matrix of ±1 codes, found other values")
    return x.astype(np.int8)


def empirical_defining_relation(matrix: np.ndarray) -> tuple[SignedEffect, ...]:
    """The signed words (W, s) whose columns multiply to the constant s on every run of `matrix`
    (any stack of ±1 runs: a fraction plus its fold-over, ...), canonically sorted. Enumerates
    all 2**k words, so k <= 16."""
    x = _check_matrix(matrix)
    n, k = x.shape
    if k > MAX_EMPIRICAL_FACTORS:
        raise DesignError(f"empirical_defining_relation enumerates 2**k words: k={k} is above {MAX_EMPIRICAL_FACTORS}")
    products = np.ones((1, n), dtype=np.int8)
    for j in range(k):  # products[m] = product of the columns in mask m
        products = np.concatenate([products, products * x[:, j]])
    constant = (products == products[:, :1]).all(axis=1)
    return _canonical((_unmask(int(m)), int(products[m, 0])) for m in np.flatnonzero(constant) if m)


def empirical_chains(matrix: np.ndarray, max_order: int = 2) -> tuple[Chain, ...]:
    """The alias chains of `matrix` (any stack of ±1 runs) found from its columns: effects of
    order 1..max_order whose product columns are equal or opposite over the runs share a chain,
    in the format of `Fraction.chains` (the mean leads a chain whose effects are constant).
    Columns neither equal up to sign nor orthogonal (partial aliasing, e.g. a stack missing
    runs) are not grouped: see `partial_aliases`."""
    x = _check_matrix(matrix)
    groups: dict[bytes, list[tuple[Effect, int]]] = {}
    for effect in _effects(x.shape[1], max_order):
        col = np.prod(x[:, sorted(effect)], axis=1, dtype=np.int8) if effect else np.ones(len(x), dtype=np.int8)
        groups.setdefault((col * col[0]).tobytes(), []).append((effect, int(col[0])))
    chains = []
    for members in groups.values():  # members already in canonical order: the first leads
        lead_sign = members[0][1]
        if len(members) > 1 or members[0][0]:
            chains.append(tuple((e, s * lead_sign) for e, s in members))
    return tuple(sorted(chains, key=lambda c: effect_key(c[0][0])))


def partial_aliases(matrix: np.ndarray, max_order: int = 2) -> tuple[tuple[Effect, Effect, float], ...]:
    """Pairs among the mean and the chains of `empirical_chains(matrix, max_order)` (each by its
    first effect) whose columns are neither orthogonal nor equal up to sign: (effect, effect,
    cosine of the two columns), canonically ordered. Empty for a regular fraction, a fraction
    stacked with its fold-over, and equal replicates of either; not for unequal stacks (two
    rounds of a fraction and one of its fold-over) nor for stacks missing runs."""
    x = _check_matrix(matrix)
    leads = sorted({frozenset()} | {c[0][0] for c in empirical_chains(x, max_order)}, key=effect_key)
    cols = np.stack([np.prod(x[:, sorted(e)], axis=1, dtype=np.int64) for e in leads], axis=1)  # (runs, chains)
    cosine = cols.T @ cols / len(x)
    return tuple((leads[a], leads[b], float(cosine[a, b]))
                 for a, b in itertools.combinations(range(len(leads)), 2) if cosine[a, b] != 0)
