"""User-facing errors: each names what went wrong, where, and what would be valid.

Scripts turn any `SegsweepError` into one line on stderr and exit code 2.
"""
from __future__ import annotations

import difflib
import math
from typing import Any, Callable, Mapping, Sequence


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


def unknown_key(key: str, valid: Sequence[str]) -> str:
    """'unknown key; did you mean 'lr'? valid keys: ...': the message for a key not in `valid`."""
    close = difflib.get_close_matches(key, list(valid), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown key; {hint}valid keys: {', '.join(valid)}"


RANGE_ERRORS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal")


def validation_problem(error: Mapping[str, Any], *, where: str = "",
                       valid_keys: Callable[[list[str]], Sequence[str] | None] | None = None,
                       meanings: Mapping[str, str | None] | None = None) -> tuple[str, str]:
    """(dotted key, one-line message) for one pydantic error: the one translation every schema
    (experiment specs, sweep files, schedules, `slurm:` blocks, claims) goes through.

    A rule that names its key (`SpecFieldError`, raised in a validator) keeps it, below `where`;
    an unknown name keeps its message (it lists what exists); an unknown key lists the valid
    keys of its section (`valid_keys(section location)`, None when the place takes no keys of
    ours) with the closest match; a non-finite number says so; a number out of range says what
    `meanings` says the key means; anything else is pydantic's message with the value it got.
    """
    cross = error.get("ctx", {}).get("error")
    if isinstance(cross, SpecFieldError):
        return ".".join(p for p in (where, cross.key) if p), cross.message
    loc, _ = user_parts(error["loc"])
    key = ".".join(p for p in (where, *loc) if p)
    if isinstance(cross, UnknownNameError):
        return key, str(cross)
    value = error.get("input")
    if error["type"] == "extra_forbidden":
        valid = list(valid_keys(loc[:-1]) or ()) if valid_keys is not None else []
        if not valid:
            return key, "unknown key"
        return key, unknown_key(loc[-1], valid)
    if isinstance(value, float) and not math.isfinite(value):  # nan fails a range check too: say which
        bound = f" {error['msg'].removeprefix('Input should be ')}" if error["type"] in RANGE_ERRORS else ""
        return key, f"expected a finite number{bound}, got {value!r}"
    meaning = (meanings or {}).get(loc[-1]) if loc else None
    if meaning and error["type"] in RANGE_ERRORS:
        return key, f"expected {meaning}, got {value!r}"
    message = error["msg"].removeprefix("Value error, ")
    if "input" in error and error["type"] != "missing" and not isinstance(value, Mapping) and "got" not in message:
        message = f"{message} (got {value!r})"
    return key, message
