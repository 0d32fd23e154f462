"""Markdown pieces the reports are written with: tables, lists of levels, paths as seen from
the report's folder."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..format import format_level
from ..analysis.arms import MAX_CURVE_LEVELS


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A Markdown table (with `|` escaped in cells), followed by a blank line."""
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(esc, row)) + " |" for row in rows]
    return lines + [""]


def levels_text(levels: Sequence[Any]) -> str:
    """A factor's levels, shortened to the first and last when there are many."""
    if len(levels) > MAX_CURVE_LEVELS:
        return f"{len(levels)} levels, {format_level(levels[0])} … {format_level(levels[-1])}"
    return ", ".join(format_level(v) for v in levels)


def relative_path(path: Path, start: Path) -> str:
    """`path` relative to `start` in POSIX form (as given when no relative path exists)."""
    try:
        return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()
    except ValueError:  # another drive on Windows
        return path.as_posix()


def distinct(values: Iterable[Any]) -> list[str]:
    """The distinct non-empty values as sorted strings."""
    return sorted({str(v) for v in values if v not in (None, "")})



def soft_dice_mean(arm: Any) -> float:
    """Mean `test/dice_soft_batch8` (the study's soft batch Dice) over an arm's counted runs; NaN
    when none recorded it (runs made before it existed)."""
    values = [r.number("test/dice_soft_batch8") for r in arm.by_seed.values()]
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan
