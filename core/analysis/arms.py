"""The design of an ablation: arms (runs sharing a config but the seed), factors, their
baselines, and which arms pair up to compare one factor's levels."""
from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from ..errors import SegsweepError
from ..format import format_level
from ..spec import parse_override
from .records import ReportError, RunRecord

# Config keys that never change what is trained or how it is scored: not factors, not arms.
IGNORED_KEYS = (
    "name", "seed", "data.cache", "data.cache_dir", "data.num_workers", "data.download",
    "train.threads", "train.eval_batch_size", "train.predictions_every",
    "checkpoint.keep_best", "checkpoint.save_last",
)
IGNORED_PREFIXES = ("tracking.",)
MAX_CURVE_LEVELS = 8  # more levels than this (e.g. a continuous random-search factor): no curves


def _ignored(key: str) -> bool:
    return key in IGNORED_KEYS or key.startswith(IGNORED_PREFIXES)


def _freeze(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


def level_key(value: Any) -> tuple:
    """Sort key for factor levels of mixed types: null, booleans, numbers, strings, others."""
    if value is None:
        return (0, 0.0, "")
    if isinstance(value, bool):
        return (1, float(value), "")
    if isinstance(value, int | float):
        return (2, float(value), "")
    if isinstance(value, str):
        return (3, 0.0, value)
    return (4, 0.0, json.dumps(value, default=str))


def same_level(a: Any, b: Any) -> bool:
    """Whether two levels are the same: booleans only equal booleans, numbers compare with 1e-9 tolerance."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)
    return a == b


@dataclass(frozen=True)
class Arm:
    """Runs that share a config apart from seed (and the ignored keys)."""

    id: str  # "A1", "A2", ... in sorted order of factor levels
    levels: dict[str, Any]  # factor -> level
    config: dict[str, Any]  # relevant flattened config
    runs: tuple[RunRecord, ...]  # every run of the arm, sorted by seed then folder
    by_seed: dict[int, RunRecord]  # the counted run per seed (latest folder if repeated)

    def label(self) -> str:
        return ", ".join(f"{k}={format_level(v)}" for k, v in self.levels.items()) or "(single arm)"


@dataclass(frozen=True)
class Factor:
    key: str
    levels: tuple[Any, ...]  # sorted with `level_key`
    baseline: Any
    # "--baseline"; "base experiment" (its value, where that is not also the level most arms
    # share); "most arms" (ties: first in sorted order; also where the base experiment agrees)
    chosen_by: str


@dataclass(frozen=True)
class Study:
    runs: tuple[RunRecord, ...]
    arms: tuple[Arm, ...]
    factors: tuple[Factor, ...]
    design: str  # "single arm" | "one factor" | "one-factor-at-a-time" | "full factorial" | "other"
    baseline_arm: Arm | None
    common: dict[str, Any]  # relevant config keys equal in every arm
    duplicates: tuple[RunRecord, ...]  # counted runs superseded by a later run of the same arm and seed

    def factor(self, key: str) -> Factor:
        return next(f for f in self.factors if f.key == key)


def parse_baseline(texts: Iterable[str]) -> dict[str, Any]:
    """['model.init=pytorch', ...] -> {'model.init': 'pytorch'} with YAML-typed values."""
    out: dict[str, Any] = {}
    for text in texts:
        try:
            key, value = parse_override(text)
        except SegsweepError as exc:
            raise ReportError(f"--baseline: {exc}") from None
        out[key] = _freeze(value)
    return out




def group_arms(runs: Sequence[RunRecord], baseline: Mapping[str, Any] | None = None,
               base: Mapping[str, Any] | None = None) -> Study:
    """Group runs into arms, find the factors, their baselines and the design.

    Each factor's baseline is its `baseline` entry (--baseline), else its value in `base` (the
    sweep's base experiment, flattened) when that is one of its levels, else the level most
    arms share."""
    if not runs:
        raise ReportError("no runs to group into arms")
    groups, configs = _group_configs(runs)
    factors, varying = _find_factors(configs, dict(baseline or {}), dict(base or {}))
    order = sorted(
        groups,
        key=lambda k: tuple(level_key(_canonical(configs[k].get(f.key), f)) for f in factors),
    )
    arms, duplicates = _build_arms(order, groups, configs, factors)
    base_levels = {f.key: f.baseline for f in factors}
    baseline_arm = next((a for a in arms if _differs(a.levels, base_levels) == []), None)
    design = _design(factors, arms, baseline_arm)
    common = {k: v for k, v in configs[order[0]].items() if k not in varying}
    return Study(tuple(runs), tuple(arms), tuple(factors), design, baseline_arm, common, tuple(duplicates))


def _group_configs(runs: Sequence[RunRecord]) -> tuple[dict[str, list[RunRecord]], dict[str, dict[str, Any]]]:
    """Runs by their relevant config (as canonical JSON), and that config per group."""
    groups: dict[str, list[RunRecord]] = defaultdict(list)
    configs: dict[str, dict[str, Any]] = {}
    for run in runs:
        relevant = {k: _freeze(v) for k, v in run.config.items() if not _ignored(k)}
        key = json.dumps(relevant, sort_keys=True, default=str)
        groups[key].append(run)
        configs[key] = relevant
    return groups, configs


def cell_factors(cells: Mapping[str, Mapping[str, Any]],
                 base: Mapping[str, Any]) -> tuple[list[Factor], dict[str, dict[str, Any]]]:
    """The factors of cells given as {label: {key: value}} with the baselines `group_arms` picks
    when no --baseline is given, and each cell's values as the report holds them (lists as
    tuples, ignored keys dropped): the adaptive-seeds driver compares what the report compares."""
    configs = {label: {k: _freeze(v) for k, v in c.items() if not _ignored(k)} for label, c in cells.items()}
    return _find_factors(configs, {}, base)[0], configs


def _find_factors(configs: Mapping[str, dict[str, Any]], baseline: Mapping[str, Any],
                  base: Mapping[str, Any]) -> tuple[list[Factor], list[str]]:
    """The keys that vary across arms, as factors with their sorted levels and baseline."""
    all_keys = sorted(set().union(*(c.keys() for c in configs.values())))
    varying = [k for k in all_keys if len({json.dumps(c.get(k), default=str) for c in configs.values()}) > 1]
    factors: list[Factor] = []
    for key in varying:
        per_arm = [c.get(key) for c in configs.values()]
        levels: list[Any] = []
        for value in sorted(per_arm, key=level_key):
            if not any(same_level(value, seen) for seen in levels):
                levels.append(value)
        counts = [sum(same_level(v, level) for v in per_arm) for level in levels]
        if key in baseline:
            match = [lv for lv in levels if same_level(lv, baseline[key])]
            if not match:
                raise ReportError(
                    f"--baseline {key}={format_level(baseline[key])}: not a level of {key}; "
                    f"levels: {', '.join(format_level(v) for v in levels)}"
                )
            factors.append(Factor(key, tuple(levels), match[0], "--baseline"))
        else:
            most = levels[counts.index(max(counts))]
            own = [lv for lv in levels if key in base and same_level(lv, _freeze(base[key]))]
            if own and not same_level(own[0], most):
                factors.append(Factor(key, tuple(levels), own[0], "base experiment"))
            else:
                factors.append(Factor(key, tuple(levels), most, "most arms"))
    unknown = sorted(set(baseline) - set(varying))
    if unknown:
        raise ReportError(
            f"--baseline {unknown[0]}: not a factor of these runs; factors: {', '.join(varying) or 'none (one arm)'}"
        )
    return factors, varying


def _canonical(value: Any, factor: Factor) -> Any:
    return next(lv for lv in factor.levels if same_level(lv, value))


def _build_arms(order: Sequence[str], groups: Mapping[str, list[RunRecord]], configs: Mapping[str, dict[str, Any]],
                factors: Sequence[Factor]) -> tuple[list[Arm], list[RunRecord]]:
    """One arm per group in `order`, and the counted runs superseded by a repeat of their seed."""
    arms: list[Arm] = []
    duplicates: list[RunRecord] = []
    for i, key in enumerate(order):
        members = tuple(sorted(groups[key], key=lambda r: (r.seed, r.run_dir.name, str(r.run_dir))))
        by_seed: dict[int, RunRecord] = {}
        for run in members:
            if run.counted:
                if run.seed in by_seed:
                    duplicates.append(by_seed[run.seed])
                by_seed[run.seed] = run
        levels = {f.key: _canonical(configs[key].get(f.key), f) for f in factors}
        arms.append(Arm(f"A{i + 1}", levels, configs[key], members, by_seed))
    return arms, duplicates


def _design(factors: Sequence[Factor], arms: Sequence[Arm], baseline_arm: Arm | None) -> str:
    n_cells = math.prod(len(f.levels) for f in factors)
    base_levels = {f.key: f.baseline for f in factors}
    if not factors:
        return "single arm"
    if len(factors) == 1:
        return "one factor"
    if len(arms) == n_cells:
        return "full factorial"
    if baseline_arm is not None and all(len(_differs(a.levels, base_levels)) <= 1 for a in arms):
        return "one-factor-at-a-time"
    return "other"


def _differs(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    return [k for k in a if not same_level(a[k], b[k])]


def slices(study: Study, keys: Sequence[str]) -> dict[tuple, dict[tuple, Arm]]:
    """Arms grouped by the levels of every factor not in `keys`: other-levels -> {keys-levels: arm}."""
    out: dict[tuple, dict[tuple, Arm]] = defaultdict(dict)
    for arm in study.arms:
        rest = tuple((k, arm.levels[k]) for k in arm.levels if k not in keys)
        out[rest][tuple(arm.levels[k] for k in keys)] = arm
    return dict(out)


def slice_key(rest: tuple) -> tuple:
    """Sort key of a slice (the other factors' levels)."""
    return tuple((k, level_key(v)) for k, v in rest)


def matched_pairs(study: Study, factor: str, level: Any) -> list[tuple[Arm, Arm]]:
    """(arm at `level`, arm at the baseline level) for every pair of arms differing only in
    `factor`. Full factorial: one pair per combination of the other factors (a marginal
    effect); one-factor-at-a-time: the single pair with the baseline arm."""
    base = study.factor(factor).baseline
    pairs = []
    for _, cells in sorted(slices(study, [factor]).items(), key=lambda kv: slice_key(kv[0])):
        treated = next((a for lv, a in cells.items() if same_level(lv[0], level)), None)
        control = next((a for lv, a in cells.items() if same_level(lv[0], base)), None)
        if treated is not None and control is not None:
            pairs.append((treated, control))
    return pairs
