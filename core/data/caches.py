"""The data caches on disk, for `segsweep cache list` and `segsweep cache clear`.

A cache is the files `<key>.images.npy`, `<key>.masks.npy`, `<key>.json` (written last, touched
on every use) and `<key>.stats.json`, where the key is
`<dataset>-<split>-<size>px-<mask mode>[-image_<rule>][-mask_<rule>]-<16 hex digits>`
(`cache_key`; the resizing rules appear only where they are not the default). Files of a build that
was stopped (`<key>.tmp-...`) show as an incomplete cache. Nothing else in a folder is touched: a
file is a cache's only when its whole name is one of these (`<key>.json.bak` is not).
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from .cache import CACHE_SUBDIR, default_user_cache
from ..errors import DataError, SegsweepError

# Exactly the names `SplitCache` and `ensure_cache` / `dataset_stats` write: the four files, and the
# temporaries of a build (`<key>.tmp-<pid>-<hex>.images.npy`, `<key>.json.tmp-<pid>-<hex>`).
# Anything else beside them (`<key>.json.bak`, a user's notes) is not a cache's and is never touched.
_TOKEN = r"\.tmp-\d+-[0-9a-f]+"
_OWN_FILES = (r"\.images\.npy", r"\.masks\.npy", r"\.json", r"\.stats\.json",
              rf"{_TOKEN}\.(?:images|masks)\.npy", rf"\.(?:stats\.)?json{_TOKEN}")
KEY = re.compile(r"^(?P<key>(?P<dataset>[^-]+)-(?P<split>train|val|test)-(?P<size>\d+)px-(?P<mode>.+?)-[0-9a-f]{16})"
                 rf"(?P<rest>{'|'.join(_OWN_FILES)})\Z")
COMPLETE = (".images.npy", ".masks.npy", ".json")


@dataclass(frozen=True)
class CacheEntry:
    """One cache: its folder, key, the files it consists of and what its name or record says."""

    directory: Path
    key: str
    files: tuple[Path, ...]
    images: int | None = None  # from the record; None when incomplete
    bytes: int = 0
    last_used: float = 0.0  # epoch seconds: the record's mtime (touched on use), else the newest file's

    @property
    def dataset(self) -> str:
        return KEY.match(self.key + ".json")["dataset"]

    @property
    def split(self) -> str:
        return KEY.match(self.key + ".json")["split"]

    @property
    def size(self) -> int:
        return int(KEY.match(self.key + ".json")["size"])

    @property
    def complete(self) -> bool:
        names = {path.name for path in self.files}
        return all(f"{self.key}{end}" in names for end in COMPLETE)

    def age_days(self, now: float | None = None) -> float:
        return ((time.time() if now is None else now) - self.last_used) / 86400


def default_folders(specs: Iterable[Path] = ()) -> list[Path]:
    """Where caches are written: the user cache (XDG_CACHE_HOME or ~/.cache, then segsweep/),
    and for each experiment spec its data.cache_dir or the `.segsweep_cache` beside its data."""
    folders = [default_user_cache()]
    for path in specs:
        folders += spec_folders(path)
    return folders


def spec_folders(path: Path) -> list[Path]:
    """The cache folders an experiment spec uses (`SpecError` if the spec is invalid)."""
    from ..spec import load_spec

    data = load_spec(path).data
    if data.cache_dir is not None:
        return [Path(data.cache_dir).expanduser()]
    root = Path(data.root).expanduser()
    return [root / CACHE_SUBDIR, root / "oxford-iiit-pet" / CACHE_SUBDIR]


def resolve_folders(paths: Sequence[str]) -> list[Path]:
    """Each PATH: a cache folder, a data root (its `.segsweep_cache/`) or an experiment spec."""
    folders: list[Path] = []
    for text in paths:
        path = Path(text).expanduser()
        if path.is_file():
            if path.suffix.lower() not in (".yaml", ".yml"):
                raise DataError(f"{path}: expected a cache folder, a data root or an experiment spec (.yaml)")
            folders += spec_folders(path)
        elif path.is_dir():
            folders.append(path / CACHE_SUBDIR if (path / CACHE_SUBDIR).is_dir() else path)
        else:
            raise DataError(f"{path}: not found (expected a cache folder, a data root or an experiment spec)")
    return folders


def find_caches(folders: Iterable[Path]) -> list[CacheEntry]:
    """Every cache in `folders` (missing folders skipped, each folder once), oldest use first."""
    entries: list[CacheEntry] = []
    seen: set[Path] = set()
    for folder in folders:
        if not folder.is_dir() or folder.resolve() in seen:
            continue
        seen.add(folder.resolve())
        groups: dict[str, list[Path]] = {}
        for path in sorted(folder.iterdir()):
            match = KEY.match(path.name)
            if match and path.is_file():
                groups.setdefault(match["key"], []).append(path)
        entries += [_entry(folder, key, files) for key, files in groups.items()]
    return sorted(entries, key=lambda e: (e.last_used, str(e.directory), e.key))


def _entry(folder: Path, key: str, files: list[Path]) -> CacheEntry:
    stats = {path: path.stat() for path in files}
    meta_path = folder / f"{key}.json"
    images = None
    if meta_path in stats:
        try:
            images = len(json.loads(meta_path.read_text(encoding="utf-8")).get("ids", []))
        except (OSError, ValueError, AttributeError):
            images = None
    last = stats[meta_path].st_mtime if meta_path in stats else max(s.st_mtime for s in stats.values())
    return CacheEntry(folder, key, tuple(files), images, sum(s.st_size for s in stats.values()), last)


def remove(entry: CacheEntry) -> int:
    """Delete the entry's files (the record first, so a half-removed cache is never trusted);
    returns the bytes freed."""
    freed = 0
    for path in sorted(entry.files, key=lambda p: not p.name.endswith(f"{entry.key}.json")):
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise SegsweepError(f"{path}: cannot remove this cache file ({exc.strerror or exc})") from None
        freed += size
    return freed


def human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"
