"""User-facing errors: each names what went wrong, where, and what would be valid.

Scripts turn any `SegsweepError` into one line on stderr and exit code 2.
"""
from __future__ import annotations

from typing import Any, Sequence


class SegsweepError(Exception):
    """A problem the user can fix (bad spec, missing data, unusable checkpoint...)."""


class SpecError(SegsweepError):
    """An experiment or sweep spec (file, extends chain or override) is invalid."""


class DataError(SegsweepError):
    """A dataset is missing, incomplete or unreadable."""


class CheckpointError(SegsweepError):
    """A checkpoint cannot be loaded or does not fit the model."""


class SweepError(SegsweepError):
    """A sweep cannot be started, joined or resumed."""


class ExportError(SegsweepError):
    """A trained model cannot be exported as asked (format, source or output path)."""


class TrackingError(SegsweepError):
    """A tracker cannot be used as configured (only raised where failing fast is the contract)."""


class SpecFieldError(SpecError, ValueError):
    """A spec value that is invalid given the rest of the spec, raised with the dotted key it
    concerns (e.g. by a model's `check_spec`). A `ValueError` too, so pydantic validators that
    raise it report it as a validation error; the spec loader prefixes the file."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


class UnknownNameError(SpecError, ValueError):
    """A name that no registry entry has (`Registry.get`); the message lists what exists."""


class ResourceError(SegsweepError):
    """A run that cannot fit in this machine's memory (found before it starts, or when it ran out)."""


UNION_BRANCHES = {"int", "float", "str", "bool", "none"}


def user_parts(loc: Sequence[Any]) -> tuple[list[str], int]:
    """(the parts of the location a user wrote, how many of pydantic's union-branch parts were
    dropped) for a pydantic error location: ('seeds', 'tuple[int, ...]', 1) -> ['seeds[1]'];
    list indices in brackets, branch names ('int', 'float', 'literal[...]', 'function-after[...]')
    left out. A part may itself hold dots (a dotted spec key under `parameters`)."""
    parts: list[str] = []
    dropped = 0
    for part in loc:
        text = str(part)
        if isinstance(part, int):
            if parts:
                parts[-1] += f"[{part}]"
            else:
                parts.append(f"[{part}]")
        elif text in UNION_BRANCHES or any(c in text for c in "[(") or text.startswith(("function-", "constrained-")):
            dropped += 1
        else:
            parts.append(text)
    return parts, dropped


def user_location(loc: Sequence[Any]) -> tuple[str, int]:
    """`user_parts` joined into the dotted key ('seeds[1]', 'claims[0].expect')."""
    parts, dropped = user_parts(loc)
    return ".".join(parts), dropped
