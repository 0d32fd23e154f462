"""Spec files and the trees they hold: YAML read safely (a repeated key is refused with both
line numbers), nested mappings merged and flattened to dotted keys, and dotted overrides.

`segsweep.spec` builds on these (and re-exports them); they know nothing of the spec's fields.
"""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from .errors import SpecError


class DuplicateKeyError(yaml.YAMLError):
    """A mapping that sets the same key twice (YAML would silently keep the last)."""

    def __init__(self, key: Any, first: int, second: int):
        super().__init__(f"key {key!r} appears twice (lines {first} and {second}); keep one")
        self.problem, self.problem_mark = str(self), None


class UniqueKeyLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses a key repeated in one mapping, at any nesting level."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<:` merges; its keys may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise DuplicateKeyError(key, seen[key], line)
                seen[key] = line
            except TypeError:  # an unhashable key: SafeLoader says so itself
                pass
        return super().construct_mapping(node, deep=deep)


def safe_load_unique(text: str) -> Any:
    """`yaml.safe_load`, but a repeated key is a `DuplicateKeyError` with both line numbers."""
    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


# Characters a spec may hold by accident that show as nothing in an error or an editor.
_INVISIBLE = {
    "\ufeff": "a byte-order mark (U+FEFF), an invisible character; remove it (a file may begin with one, "
               "nowhere else)",
    "\x00": "a NUL byte (U+0000), which YAML text cannot hold (a binary or damaged file?); remove it",
}


def _position(text: str, index: int) -> str:
    """'line 3, column 8' of `text[index]` (both from 1)."""
    return f"line {text.count(chr(10), 0, index) + 1}, column {index - text.rfind(chr(10), 0, index)}"


def _refuse_invisible(path: Path, text: str) -> None:
    """A NUL byte anywhere, or a byte-order mark anywhere but the very start (e.g. a doubled one),
    is named with its line, not shown as itself."""
    found = [i for i in (text.find("\x00"), text.find("\ufeff", 1)) if i >= 0]
    if found:
        index = min(found)
        raise SpecError(f"{path}: {_position(text, index)}: {_INVISIBLE[text[index]]}")


def read_yaml(path: Path) -> dict[str, Any]:
    """Read one YAML mapping with `safe_load` (repeated keys refused); anything else is a
    `SpecError` naming the file."""
    if path.is_dir():
        raise SpecError(f"{path}: is a directory, expected a YAML spec file")
    if not path.is_file():
        raise SpecError(f"{path}: spec file not found")
    try:
        text = path.read_text(encoding="utf-8")
        _refuse_invisible(path, text)
        data = safe_load_unique(text)
    except DuplicateKeyError as exc:
        raise SpecError(f"{path}: {exc}") from None
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow: say which, and where
        raise SpecError(f"{path}: {_position(text, exc.position)}: invalid YAML: character "
                        f"U+{exc.character:04X} is not allowed ({exc.reason})") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" line {where.line + 1}" if where is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(f"{path}:{line}: invalid YAML: {problem}") from None
    except UnicodeDecodeError:
        raise SpecError(f"{path}: not a UTF-8 text file") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a mapping of sections at the top level, got {type(data).__name__}")
    return data


def deep_merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """`top` over `base`, recursively for nested mappings; other values are replaced."""
    merged = copy.deepcopy(dict(base))
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}. Lists and tuples stay values."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def parse_override(text: str) -> tuple[str, Any]:
    """'optim.lr=1e-3' -> ('optim.lr', 0.001): the value is a YAML scalar (or flow list)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")) or " " in key:
        raise SpecError(f"override {text!r}: expected dotted key=value, e.g. optim.lr=1e-3")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        raise SpecError(f"override {text!r}: value {raw!r} is not a valid YAML scalar") from None
    if isinstance(value, dict):
        raise SpecError(f"override {text!r}: set nested keys one by one (a.b=1), not a mapping")
    # YAML reads 1e-3 as a string (it wants 1.0e-3); users mean a number.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value.lower() for c in ".e") and value.strip() else value
        except ValueError:
            pass
    return key, value


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set `tree[a][b] = value` for key 'a.b', creating sections as needed."""
    parts = key.split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise SpecError(f"override {key}: {'.'.join(parts[: i + 1])} is a value, not a section")
        node = child
    node[parts[-1]] = value


def typed_overrides(overrides: Sequence[str] | Mapping[str, Any]) -> dict[str, Any]:
    """Dotted key -> value from CLI text (['optim.lr=1e-3']) or an already-typed mapping
    ({'optim.lr': 0.001}, as Optuna and W&B give them): the one way overrides are read."""
    return dict(overrides.items()) if isinstance(overrides, Mapping) else dict(map(parse_override, overrides))


def short_hash(tree: Any) -> str:
    """12 hex digits of the sha256 of `tree` as canonical JSON: the identity of configs and sweeps."""
    blob = json.dumps(tree, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def apply_overrides(tree: Mapping[str, Any], overrides: Sequence[str] | Mapping[str, Any]) -> dict[str, Any]:
    """Return a copy of `tree` with dotted overrides applied.

    `overrides` is either CLI text (['optim.lr=1e-3', ...]) or an already-typed mapping
    ({'optim.lr': 0.001}, as Optuna and W&B give them). All callers go through here.
    """
    out = copy.deepcopy(dict(tree))
    for key, value in typed_overrides(overrides).items():
        set_dotted(out, key, value)
    return out
