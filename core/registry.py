"""A small name -> factory registry, so models and losses are found by name."""
from __future__ import annotations

import difflib
from typing import Any, Callable

from core.errors import SpecError


class Registry:
    """Maps names to factories; `build(name, **params)` calls the factory.

    An unknown name raises `SpecError` listing what exists (and the closest match).
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._factories: dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def decorator(factory: Callable[..., Any]) -> Callable[..., Any]:
            assert name not in self._factories, f"{self.kind} {name!r} registered twice"
            self._factories[name] = factory
            return factory

        return decorator

    def names(self) -> list[str]:
        return sorted(self._factories)

    def get(self, name: str) -> Callable[..., Any]:
        if name not in self._factories:
            close = difflib.get_close_matches(name, self.names(), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise SpecError(f"unknown {self.kind} {name!r}{hint} valid: {', '.join(self.names())}")
        return self._factories[name]

    def build(self, name: str, **params: Any) -> Any:
        return self.get(name)(**params)
