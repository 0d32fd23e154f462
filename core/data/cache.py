"""Decoded + resized samples in memory-mapped uint8 arrays, and the train split's pixel statistics.

One cache per (dataset, split, size, mask mode, resizing), keyed by a fingerprint of the source
files (names, sizes, mtimes, split order) and `LOADER_VERSION`, so a changed source simply gets a
new cache. Files are written under temporary names and renamed into place; the `.json` written last
marks a complete cache.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .masks import MaskCheck
from .sources import (
    DEFAULT_IMAGE_INTERPOLATION,
    DEFAULT_MASK_INTERPOLATION,
    LOADER_VERSION,
    SplitSource,
    check_sample,
    load_checked,
    load_sample,
)
from ..errors import DataError

CACHE_SUBDIR = ".segsweep_cache"


def default_user_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "segsweep"


def _writable(directory: Path) -> bool:
    """Probe by writing. A folder whose permission bits allow nobody to write (like the shared,
    read-only data) counts as read-only even for root, who could write anyway."""
    existing = next((p for p in (directory, *directory.parents) if p.exists()), None)
    if existing is None or not existing.stat().st_mode & 0o222:
        return False
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".probe-"):
            pass
        return True
    except OSError:
        return False


def resolve_cache_dir(cache_dir: str | None, root: Path) -> Path:
    """`data.cache_dir` if set; else `<root>/.segsweep_cache/` when writable; else ~/.cache/segsweep/."""
    if cache_dir is not None:
        directory = Path(cache_dir).expanduser()
        if not _writable(directory):
            raise DataError(f"{directory}: data.cache_dir is not a writable folder")
        return directory
    for directory in (root / CACHE_SUBDIR, default_user_cache()):
        if _writable(directory):
            return directory
    raise DataError(f"{root / CACHE_SUBDIR} and {default_user_cache()}: no writable cache folder; "
                    "set data.cache_dir or data.cache=false")


def resize_tag(source: SplitSource) -> list[str]:
    """The source's resizing where it is not the default, e.g. ['image_linear', 'mask_nearest']:
    part of the cache key only then, so keys made before these settings existed stay valid."""
    tags = [("image", source.image_interpolation, DEFAULT_IMAGE_INTERPOLATION),
            ("mask", source.mask_interpolation, DEFAULT_MASK_INTERPOLATION)]
    return [f"{what}_{rule}" for what, rule, default in tags if rule != default]


def cache_key(source: SplitSource, size: int) -> str:
    """'<dataset>-<split>-<size>px-<mask mode>[-image_<rule>][-mask_<rule>]-<fingerprint>' of
    exactly what load_sample reads (the resizing named only where it is not the default)."""
    resizing = resize_tag(source)
    digest = hashlib.sha256()
    digest.update(json.dumps([LOADER_VERSION, source.dataset, source.split, size, source.mask_mode,
                              *([resizing] if resizing else [])]).encode())
    for sample in source.samples:
        for path in (sample.image, sample.mask):
            stat = path.stat()
            digest.update(f"{sample.id}\0{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    mode = "-".join([source.mask_mode, *resizing])
    return f"{source.dataset}-{source.split}-{size}px-{mode}-{digest.hexdigest()[:16]}"


@dataclass(frozen=True)
class SplitCache:
    """The three files of one cached split: `<key>.images.npy` (N, S, S, 3), `<key>.masks.npy`
    (N, S, S) and `<key>.json` (ids; written last)."""

    directory: Path
    key: str

    @property
    def images_path(self) -> Path:
        return self.directory / f"{self.key}.images.npy"

    @property
    def masks_path(self) -> Path:
        return self.directory / f"{self.key}.masks.npy"

    @property
    def meta_path(self) -> Path:
        return self.directory / f"{self.key}.json"

    @property
    def stats_path(self) -> Path:
        return self.directory / f"{self.key}.stats.json"

    def complete(self) -> bool:
        return self.meta_path.is_file() and self.images_path.is_file() and self.masks_path.is_file()

    def check(self) -> MaskCheck | None:
        """What the cached split's masks hold (`MaskCheck`), from its record."""
        return MaskCheck.from_json(json.loads(self.meta_path.read_text(encoding="utf-8")).get("masks"))

    def open(self) -> tuple[np.ndarray, np.ndarray]:
        """Read-only memory maps (images, masks); pages are shared by every process that opens them."""
        return np.load(self.images_path, mmap_mode="r"), np.load(self.masks_path, mmap_mode="r")


def _progress(total: int, description: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="img", leave=False, disable=not sys.stderr.isatty())


def for_each_sample(source: SplitSource, description: str, work: Callable[[int], Any]) -> list[Any]:
    """`work(i)` for every sample of `source` on a few threads (OpenCV and PIL decode outside
    the GIL), in order, with a progress bar. An error or Ctrl-C cancels what has not started
    and waits for the rest, so nothing writes after this returns or raises."""
    n = len(source.samples)
    pool = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1))
    results = []
    try:
        with _progress(n, description) as bar:
            for result in pool.map(work, range(n)):
                results.append(result)
                bar.update()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return results


def scan_masks(source: SplitSource, size: int) -> MaskCheck:
    """Without a cache: check every image file and read every mask of the split (`check_sample`)."""
    check = MaskCheck()
    results = for_each_sample(source, f"checking {source.dataset}/{source.split}",
                              lambda i: check_sample(source.samples[i], source, size))
    for values, has_foreground, empty in results:
        check.add(values, has_foreground, empty)
    return check


def ensure_cache(source: SplitSource, size: int, directory: Path) -> SplitCache:
    """The cache of `source` at `size`, built (once, with a progress bar) if it is not there.

    Its record (`<key>.json`, written last) holds what the masks contain (`SplitCache.check`).
    A build stopped by an error or Ctrl-C leaves no file a later run would trust."""
    cache = SplitCache(directory, cache_key(source, size))
    if cache.complete():
        meta = json.loads(cache.meta_path.read_text(encoding="utf-8"))
        if meta.get("ids") == source.ids and MaskCheck.from_json(meta.get("masks")) is not None:
            with contextlib.suppress(OSError):  # `segsweep cache list` shows this as its last use
                os.utime(cache.meta_path)
            return cache
    n = len(source.samples)
    token = f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp_images = directory / f"{cache.key}{token}.images.npy"
    tmp_masks = directory / f"{cache.key}{token}.masks.npy"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        images = np.lib.format.open_memmap(tmp_images, mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
        masks = np.lib.format.open_memmap(tmp_masks, mode="w+", dtype=np.uint8, shape=(n, size, size))

        def fill(i: int) -> tuple[Any, bool, bool]:
            images[i], masks[i], values, has_foreground = load_checked(source.samples[i], source, size)
            return values, has_foreground, not bool((masks[i] == 1).any())

        check = MaskCheck()
        for values, has_foreground, empty in for_each_sample(
                source, f"caching {source.dataset}/{source.split} {size}px", fill):
            check.add(values, has_foreground, empty)
        images.flush()
        masks.flush()
        del images, masks
        os.replace(tmp_images, cache.images_path)
        os.replace(tmp_masks, cache.masks_path)
        _write_json(cache.meta_path, {"key": cache.key, "ids": source.ids, "size": size, "dataset": source.dataset,
                                      "split": source.split, "images": n, "masks": check.to_json()})
    except OSError as exc:
        raise DataError(f"{directory}: cannot write the data cache ({exc.strerror or exc}); "
                        "set data.cache_dir to a writable folder or data.cache=false") from None
    finally:
        for path in (tmp_images, tmp_masks):
            path.unlink(missing_ok=True)
    return cache


def _write_json(path: Path, payload: dict) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(payload) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def dataset_stats(source: SplitSource, size: int, directory: Path,
                  cache: SplitCache | None = None) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (population, in [0, 1] units) over `source`'s resized images.

    Computed once from exact integer sums and stored as `<key>.stats.json` beside the cache.
    """
    stats_path = (cache or SplitCache(directory, cache_key(source, size))).stats_path
    if stats_path.is_file():
        stored = json.loads(stats_path.read_text(encoding="utf-8"))
        return stored["mean"], stored["std"]
    total = np.zeros(3, np.int64)
    squares = np.zeros(3, np.int64)
    arrays = cache.open()[0] if cache is not None else None
    for i, sample in enumerate(source.samples):
        image = arrays[i] if arrays is not None else load_sample(sample, source, size)[0]
        pixels = np.asarray(image, np.int64).reshape(-1, 3)
        total += pixels.sum(0)
        squares += (pixels * pixels).sum(0)
    count = len(source.samples) * size * size
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0))
    mean_01, std_01 = (mean / 255).tolist(), np.maximum(std / 255, 1e-6).tolist()
    try:
        _write_json(stats_path, {"mean": mean_01, "std": std_01, "images": len(source.samples)})
    except OSError as exc:
        raise DataError(f"{stats_path}: cannot write dataset statistics ({exc.strerror or exc})") from None
    return mean_01, std_01
