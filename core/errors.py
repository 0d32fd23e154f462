"""User-facing errors: each names what went wrong, where, and what would be valid.

Scripts turn any `SegsweepError` into one line on stderr and exit code 2.
"""
from __future__ import annotations


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
