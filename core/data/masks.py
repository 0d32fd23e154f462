"""Masks read as what they are, and what a split's masks hold.

A palette PNG is read by index and a single-channel mask (8 or 16 bit) by value; a colour mask
(RGB, RGBA, grey + alpha) is refused unless `data.folder.mask_channel` or
`data.folder.foreground_color` says how to read it. Each mask also reports the raw values it
holds, so a split whose masks never contain the foreground can be refused with what they do
contain (`MaskCheck`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError

SINGLE_CHANNEL_MODES = ("1", "L", "P", "I", "I;16", "I;16B", "I;16L", "I;16N")
LOSSY_SUFFIXES = (".jpg", ".jpeg")
SHOWN_VALUES = 12  # values named in an error line (the rest are counted)
STORED_VALUES = 256  # values kept in a cache's record


def shown(path: Path | str) -> str:
    """A path as it can always be printed: bytes that are not UTF-8 become backslash escapes."""
    return os.fsencode(os.fspath(path)).decode("utf-8", "backslashreplace")


def open_mask(path: Path) -> tuple[np.ndarray, str]:
    """(pixels, PIL mode): palette images as indices, no EXIF rotation, no colour conversion."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            mode = opened.mode
            pixels = np.asarray(opened)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise DataError(f"{shown(path)}: unreadable or corrupt mask file") from None
    if pixels.dtype == bool:
        pixels = pixels.astype(np.uint8)
    return pixels, mode


def _colour_rule_error(path: Path, mode: str, channels: int) -> DataError:
    return DataError(
        f"{shown(path)}: mask is a colour image (mode {mode}, {channels} channels), which has no single value per "
        f"pixel; set data.folder.mask_channel (0..{channels - 1}) to read one channel by value, or "
        "data.folder.foreground_color: [r, g, b] to make one colour the foreground")


def _values(raw: np.ndarray) -> np.ndarray:
    if raw.dtype == np.uint8:
        return np.flatnonzero(np.bincount(raw.ravel(), minlength=256))
    return np.unique(raw).astype(np.int64)


def _packed(pixels: np.ndarray) -> np.ndarray:
    rgb = pixels[..., :3].astype(np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def read_binary(path: Path, source: Any) -> tuple[np.ndarray, np.ndarray]:
    """A folder mask as (foreground bool (H, W), raw values found) under the source's rule."""
    pixels, mode = open_mask(path)
    colour = pixels.ndim == 3
    if source.foreground_color is not None:
        if not colour or pixels.shape[2] < 3:
            raise DataError(f"{shown(path)}: mask is mode {mode} (no r, g, b channels) but "
                            "data.folder.foreground_color is set; it applies to colour masks only "
                            "(use data.folder.foreground_value for single-channel masks)")
        packed = _packed(pixels)
        r, g, b = source.foreground_color
        return packed == ((r << 16) | (g << 8) | b), np.unique(packed)
    if colour:
        if source.mask_channel is None:
            raise _colour_rule_error(path, mode, pixels.shape[2])
        if source.mask_channel >= pixels.shape[2]:
            raise DataError(f"{shown(path)}: data.folder.mask_channel={source.mask_channel} but the mask has "
                            f"{pixels.shape[2]} channels (mode {mode}); valid: 0..{pixels.shape[2] - 1}")
        pixels = pixels[..., source.mask_channel]
    elif source.mask_channel is not None:
        raise DataError(f"{shown(path)}: mask is single-channel (mode {mode}) but data.folder.mask_channel is set; "
                        "it applies to colour masks only (remove it)")
    fg = pixels > 0 if source.foreground_value is None else pixels == source.foreground_value
    return fg, _values(pixels)


def read_trimap(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A trimap's raw values (H, W) (first channel of a colour file) and the values found."""
    pixels, _ = open_mask(path)
    raw = pixels[..., 0] if pixels.ndim == 3 else pixels
    return raw, _values(raw)


@dataclass
class MaskCheck:
    """What one split's masks hold: raw values, masks with any foreground, masks empty at the
    training size (where per-image Dice falls back to the both-empty convention)."""

    images: int = 0
    with_foreground: int = 0
    empty: int = 0
    values: set[int] = field(default_factory=set)

    def add(self, values: np.ndarray, has_foreground: bool, empty_resized: bool) -> None:
        self.images += 1
        self.with_foreground += bool(has_foreground)
        self.empty += bool(empty_resized)
        if len(self.values) < STORED_VALUES:
            self.values.update(int(v) for v in values[:STORED_VALUES])

    def to_json(self) -> dict[str, Any]:
        return {"images": self.images, "with_foreground": self.with_foreground, "empty": self.empty,
                "values": sorted(self.values)[:STORED_VALUES]}

    @classmethod
    def from_json(cls, stored: Any) -> "MaskCheck | None":
        if not isinstance(stored, dict) or not {"images", "with_foreground", "empty", "values"} <= set(stored):
            return None
        return cls(stored["images"], stored["with_foreground"], stored["empty"], set(stored["values"]))


def describe_values(values: set[int], colours: bool) -> str:
    ordered = sorted(values)
    text = [f"[{v >> 16}, {(v >> 8) & 255}, {v & 255}]" if colours else str(v) for v in ordered[:SHOWN_VALUES]]
    more = f" and {len(ordered) - SHOWN_VALUES} more" if len(ordered) > SHOWN_VALUES else ""
    return ", ".join(text) + more if text else "none"


def require_foreground(source: Any, check: MaskCheck) -> None:
    """Refuse a split in which no mask has a foreground pixel, naming the values found."""
    if check.images == 0 or check.with_foreground > 0:
        return
    colours = getattr(source, "foreground_color", None) is not None
    found = f"{'colours' if colours else 'values'} found: {describe_values(check.values, colours)}"
    where = f"{source.dataset} {source.split} split ({check.images} masks)"
    if source.mask_kind == "trimap":
        rule = f"data.mask={source.mask_mode} marks no pixel of any mask of the {where} as foreground"
    elif colours:
        rule = f"data.folder.foreground_color={list(source.foreground_color)} occurs in no mask of the {where}"
    elif source.foreground_value is not None:
        rule = f"data.folder.foreground_value={source.foreground_value} occurs in no mask of the {where}"
    else:
        rule = f"no mask of the {where} has a value above 0 (the foreground when data.folder.foreground_value is unset)"
    raise DataError(f"{shown(source.samples[0].mask.parent)}: {rule}; {found}")


def lossy_masks(source: Any) -> int:
    """How many of the split's masks are stored in a lossy format (JPEG)."""
    return sum(sample.mask.suffix.lower() in LOSSY_SUFFIXES for sample in source.samples)
