"""How values are written for people: config levels, labels, and the numbers in reports.

One place for the formatting that sweep labels and reports share, so a value reads the same
in a cell label, a report table and a figure legend.
"""
from __future__ import annotations

import math
from typing import Any

_YAML_WORDS = {True: "true", False: "false", None: "null"}


def fmt_value(value: Any) -> str:
    """A short, YAML-like rendering for labels: 0.0001 -> 1e-04, True -> true."""
    if isinstance(value, bool) or value is None:
        return _YAML_WORDS[value]
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_level(value: Any) -> str:
    """A level as YAML would write it: true/false, null, 0.0001, he_normal."""
    if isinstance(value, bool) or value is None:
        return _YAML_WORDS[value]
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return "[" + ", ".join(format_level(v) for v in value) + "]"
    return str(value)


def fmt_float(x: float | None, digits: int = 4) -> str:
    """A number with fixed digits; an em dash for a missing or non-finite one."""
    return "—" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def fmt_delta(x: float) -> str:
    """A signed difference: +0.0123."""
    return "—" if not math.isfinite(x) else f"{x:+.4f}"


def fmt_mean_sd(mean_sd: tuple[float, float]) -> str:
    """mean ± sd, or the mean alone when the sd is undefined (one value)."""
    mean, sd = mean_sd
    return fmt_float(mean) if not math.isfinite(sd) else f"{fmt_float(mean)} ± {fmt_float(sd)}"


def fmt_ci(ci: tuple[float, float]) -> str:
    """A signed interval: [-0.0100, +0.0200]."""
    return "—" if not all(math.isfinite(v) for v in ci) else f"[{ci[0]:+.4f}, {ci[1]:+.4f}]"


def fmt_p(p: float) -> str:
    """A p-value with 4 decimals, <0.0001 below that."""
    if not math.isfinite(p):
        return "—"
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def fmt_interval(ci: tuple[float, float]) -> str:
    """An interval of values (not differences): [0.8100, 0.8300]."""
    return "—" if not all(math.isfinite(v) for v in ci) else f"[{ci[0]:.4f}, {ci[1]:.4f}]"
