"""Registries: every name a spec can hold (model, decoder, loss term, dataset, optimiser,
scheduler) is found in one, and the spec validates names against it."""
from __future__ import annotations

import difflib
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from .errors import UnknownNameError


def unknown_name(kind: str, name: object, valid: list[str]) -> str:
    """'unknown model 'vit'; did you mean ...? valid: ...': the one line for a name not in `valid`."""
    close = difflib.get_close_matches(str(name), valid, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ";"
    return f"unknown {kind} {name!r}{hint} valid: {', '.join(map(repr, valid))}"


class Registry:
    """Maps names to entries (classes or factories); `build(name, **params)` calls the entry.

    An unknown name raises `UnknownNameError` listing what exists (and the closest match).
    Registering a name makes it a valid value of the spec field that names this kind.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: `@MODELS.register("unet") class UNet(...)`."""
        def decorator(entry: Callable[..., Any]) -> Callable[..., Any]:
            assert name not in self._entries, f"{self.kind} {name!r} registered twice"
            self._entries[name] = entry
            return entry

        return decorator

    def unregister(self, name: str) -> None:
        self.get(name)
        del self._entries[name]

    @contextmanager
    def registered(self, name: str, entry: Callable[..., Any]) -> Iterator[Callable[..., Any]]:
        """Register `entry` for the duration of a `with` block (tests, notebooks)."""
        self.register(name)(entry)
        try:
            yield entry
        finally:
            self._entries.pop(name, None)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def describe(self) -> dict[str, str]:
        """name -> first line of the entry's docstring (what `segsweep` can list)."""
        return {name: ((self._entries[name].__doc__ or "").strip().splitlines() or [""])[0] for name in self.names()}

    def unknown(self, name: str) -> str:
        """The one-line message for a name nobody registered."""
        return unknown_name(self.kind, name, self.names())

    def get(self, name: str) -> Callable[..., Any]:
        if name not in self._entries:
            raise UnknownNameError(self.unknown(name))
        return self._entries[name]

    def build(self, name: str, **params: Any) -> Any:
        return self.get(name)(**params)
