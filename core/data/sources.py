"""Where samples come from: split lists for each dataset layout, and the one `load_sample` step.

`load_sample` (decode, check, resize to a square, map the annotation to a {0, 1, 255} mask) is
the only path from files to pixels: the memory-mapped cache stores exactly what it returns.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from ..errors import DataError
from .masks import read_binary, read_trimap, shown

# Bump when load_sample's output changes for the same files: it is part of every cache key.
LOADER_VERSION = 2  # 2: masks read with PIL (palette PNGs by index), colour masks need a rule

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MaskKind = Literal["trimap", "binary"]

# Resizing to data.image_size (`data.image_interpolation`, `data.mask_interpolation`); the first
# entry of each is the default. The image rule is (shrinking, enlarging).
IMAGE_INTERPOLATION = {"area_linear": (cv2.INTER_AREA, cv2.INTER_LINEAR), "linear": (cv2.INTER_LINEAR,) * 2}
MASK_INTERPOLATION = {"nearest_exact": cv2.INTER_NEAREST_EXACT, "nearest": cv2.INTER_NEAREST}
DEFAULT_IMAGE_INTERPOLATION = next(iter(IMAGE_INTERPOLATION))
DEFAULT_MASK_INTERPOLATION = next(iter(MASK_INTERPOLATION))


@dataclass(frozen=True)
class Sample:
    id: str  # the image stem, e.g. 'Abyssinian_1'
    image: Path
    mask: Path


@dataclass(frozen=True)
class SplitSource:
    """The files of one split and how to read their annotations."""

    dataset: str  # 'oxford_pet' | 'synthetic' | 'folder'
    split: str  # 'train' | 'val' | 'test'
    samples: tuple[Sample, ...]
    mask_kind: MaskKind
    mask_mode: str  # data.mask for trimaps; 'binary' or 'value<N>' for folder masks
    foreground_value: int | None = None  # folder masks only
    mask_channel: int | None = None  # folder colour masks: the channel read by value
    foreground_color: tuple[int, int, int] | None = None  # folder colour masks: the foreground colour
    image_interpolation: str = DEFAULT_IMAGE_INTERPOLATION  # data.image_interpolation
    mask_interpolation: str = DEFAULT_MASK_INTERPOLATION  # data.mask_interpolation

    @property
    def ids(self) -> list[str]:
        return [s.id for s in self.samples]


# --------------------------------------------------------------------------- Oxford layout


def resolve_oxford_root(root: Path) -> Path:
    """The folder holding `images/` and `annotations/`: `root` itself, or torchvision's
    `root/oxford-iiit-pet/` after `OxfordIIITPet(root, download=True)`."""
    for candidate in (root, root / "oxford-iiit-pet"):
        if (candidate / "images").is_dir() and (candidate / "annotations").is_dir():
            return candidate
    return root


def has_oxford_layout(root: Path) -> bool:
    base = resolve_oxford_root(root)
    return (base / "images").is_dir() and (base / "annotations").is_dir()


def download_oxford_pet(root: Path) -> None:
    """Fetch the official dataset into `root/oxford-iiit-pet/` with torchvision."""
    from torchvision.datasets import OxfordIIITPet

    try:
        root.mkdir(parents=True, exist_ok=True)
        OxfordIIITPet(str(root), split="trainval", target_types="segmentation", download=True)
    except Exception as exc:  # urllib/socket/ssl/md5 errors all mean "could not fetch"
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise DataError(
            f"{root}: could not download Oxford-IIIT Pet with torchvision ({reason}); "
            "is there network access? Otherwise copy the dataset there by hand "
            "(images/, annotations/trimaps/, annotations/trainval.txt, annotations/test.txt)"
        ) from None


def read_split_file(path: Path) -> list[str]:
    """The stem of each line of an official split file, skipping blanks and '#' comments."""
    if not path.is_file():
        raise DataError(f"{path}: split file not found (expected lines '<name> <class_id> <species> <breed_id>')")
    lines = (line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines())
    return [line.split()[0] for line in lines if line and not line.startswith("#")]


def oxford_splits(root: Path, val_every: int, mask_mode: str, dataset: str = "oxford_pet") -> dict[str, SplitSource]:
    """train = trainval lines with index % val_every != 0, val = index % val_every == 0, test = test.txt."""
    base = resolve_oxford_root(root)
    if not base.is_dir():
        raise DataError(f"{root}: data root not found (expected the Oxford-IIIT Pet layout: images/, annotations/)")
    for sub in ("images", "annotations/trimaps"):
        if not (base / sub).is_dir():
            raise DataError(f"{base / sub}: folder not found (expected the Oxford-IIIT Pet layout under {base})")
    trainval = read_split_file(base / "annotations" / "trainval.txt")
    test = read_split_file(base / "annotations" / "test.txt")

    def sample(stem: str) -> Sample:
        return Sample(stem, base / "images" / f"{stem}.jpg", base / "annotations" / "trimaps" / f"{stem}.png")

    stems = {
        "train": [s for i, s in enumerate(trainval) if i % val_every != 0],
        "val": [s for i, s in enumerate(trainval) if i % val_every == 0],
        "test": test,
    }
    out = {}
    for split, names in stems.items():
        file = "test.txt" if split == "test" else "trainval.txt"
        if not names:
            why = "no image lines" if split == "test" else f"{len(trainval)} image lines, data.val_every={val_every}"
            raise DataError(f"{base / 'annotations' / file}: the {split} split is empty ({why})")
        samples = tuple(sample(s) for s in names)
        for s in samples:
            if not s.image.is_file():
                raise DataError(f"{s.image}: image listed in {file} not found")
            if not s.mask.is_file():
                raise DataError(f"{s.image}: image has no trimap (expected {s.mask})")
        out[split] = SplitSource(dataset, split, samples, "trimap", mask_mode)
    return out


# --------------------------------------------------------------------------- folder layout


def _stem_files(folder: Path, suffix: str = "", keep: bool = True) -> dict[str, Path]:
    """Image files of `folder` by stem; with `suffix`, only the stems ending with it (`keep`) or
    only the others (`keep=False`), keyed by the stem without it."""
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not (path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")):
            continue
        try:
            path.name.encode("utf-8")
        except UnicodeEncodeError:
            raise DataError(f"{shown(path)}: file name is not valid UTF-8; rename it (run records "
                            "and reports name every image by its stem)") from None
        stem = path.stem
        if suffix and stem.endswith(suffix) != keep:
            continue
        key = stem[: len(stem) - len(suffix)] if suffix and keep else stem
        if key in files:
            raise DataError(f"{path}: two files with stem {stem!r} in {folder} ({files[key].name})")
        files[key] = path
    return files


def _folder_files(root: Path, images_dir: str, masks_dir: str, suffix: str) -> tuple[dict[str, Path], dict[str, Path]]:
    if root.is_file():
        raise DataError(f"{shown(root)}: data root is a file, expected a folder (holding {images_dir}/ and {masks_dir}/)")
    if not root.is_dir():
        raise DataError(f"{shown(root)}: data root not found (expected {images_dir}/ and {masks_dir}/ with matching "
                        "file stems; see data.folder.images and data.folder.masks)")
    for key, sub in (("images", images_dir), ("masks", masks_dir)):
        if not (root / sub).is_dir():
            found = sorted(p.name + "/" for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
            raise DataError(f"{shown(root / sub)}: folder not found (data.folder.{key}={sub!r}; folders in "
                            f"{shown(root)}: {', '.join(map(shown, found)) or 'none'})")
    if images_dir == masks_dir and not suffix:
        raise DataError(f"{shown(root / images_dir)}: data.folder.images and data.folder.masks name the same folder; "
                        "set data.folder.mask_suffix (e.g. '_mask') to tell masks from images")
    images = _stem_files(root / images_dir, suffix, keep=False) if images_dir == masks_dir else _stem_files(root / images_dir)
    return images, _stem_files(root / masks_dir, suffix)


def _unmatched(root: Path, images: dict[str, Path], masks: dict[str, Path], images_dir: str, masks_dir: str,
               suffix: str) -> None:
    no_mask = sorted(set(images) - set(masks))
    no_image = sorted(set(masks) - set(images))
    if not (no_mask or no_image):
        return
    parts = []
    if no_mask:
        expected = f"{masks_dir}/{no_mask[0]}{suffix}.<ext> with data.folder.mask_suffix={suffix!r}"
        parts.append(f"{len(no_mask)} image(s) without a mask, e.g. {shown(images[no_mask[0]])} (expected {expected})")
    if no_image:
        parts.append(f"{len(no_image)} mask(s) without an image, e.g. {shown(masks[no_image[0]])}")
    raise DataError(f"{shown(root)}: {images_dir}/ and {masks_dir}/ stems do not match: {'; '.join(parts)}")


def _unit_hash(stem: str) -> int:
    return int.from_bytes(hashlib.sha256(stem.encode()).digest()[:8], "big")


def folder_splits(root: Path, val_fraction: float, test_fraction: float, foreground_value: int | None,
                  folder: Any = None) -> dict[str, SplitSource]:
    """`<images>/` + `<masks>/` (`data.folder`) with matching stems (a mask's stem ends with
    `mask_suffix`). Stems are ordered by a hash of the name (stable, independent of file order);
    the first round(n * test_fraction) go to test, the next round(n * val_fraction) to val (at
    least 1 each when the fraction is > 0), the rest to train."""
    images_dir, masks_dir = getattr(folder, "images", "images"), getattr(folder, "masks", "masks")
    suffix = getattr(folder, "mask_suffix", "")
    channel, colour = getattr(folder, "mask_channel", None), getattr(folder, "foreground_color", None)
    images, masks = _folder_files(root, images_dir, masks_dir, suffix)
    _unmatched(root, images, masks, images_dir, masks_dir, suffix)
    stems = sorted(images, key=lambda s: (_unit_hash(s), s))
    n = len(stems)

    def count(fraction: float) -> int:
        return 0 if fraction <= 0 else max(1, round(n * fraction))

    n_test, n_val = count(test_fraction), count(val_fraction)
    parts = {"test": stems[:n_test], "val": stems[n_test:n_test + n_val], "train": stems[n_test + n_val:]}
    mode = "binary" if foreground_value is None else f"value{foreground_value}"
    if colour is not None:
        mode = "color{}.{}.{}".format(*colour)
    elif channel is not None:
        mode = f"ch{channel}.{mode}"
    out = {}
    for split in ("train", "val", "test"):
        names = sorted(parts[split])
        if not names:
            raise DataError(
                f"{shown(root)}: the {split} split is empty ({n} image/mask pairs, "
                f"folder.val_fraction={val_fraction}, folder.test_fraction={test_fraction})"
            )
        samples = tuple(Sample(s, images[s], masks[s]) for s in names)
        out[split] = SplitSource("folder", split, samples, "binary", mode, foreground_value, channel,
                                 None if colour is None else tuple(colour))
    return out


# --------------------------------------------------------------------------- pixels


def _read(path: Path, flags: int, what: str) -> np.ndarray:
    try:
        buffer = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise DataError(f"{shown(path)}: cannot read {what} ({exc.strerror or exc})") from None
    pixels = cv2.imdecode(buffer, flags) if buffer.size else None
    if pixels is None:
        raise DataError(f"{shown(path)}: unreadable or corrupt {what} file")
    return pixels


def decode_image(path: Path) -> np.ndarray:
    """RGB uint8 (H, W, 3). EXIF orientation is ignored so pixels stay aligned with the annotation
    (as PIL and torchvision read them)."""
    pixels = _read(path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION, "image")
    if pixels.dtype != np.uint8:  # 16-bit PNG/TIFF
        pixels = (pixels / 257).round().astype(np.uint8)
    return cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)


def trimap_to_mask(raw: np.ndarray, mode: str) -> np.ndarray:
    """uint8 mask with 0 = background, 1 = foreground, 255 = ignored (trimap: 1 = pet, 2 =
    background, 3 = boundary)."""
    if mode == "pet":
        return (raw == 1).astype(np.uint8)
    if mode == "pet_and_boundary":
        return ((raw == 1) | (raw == 3)).astype(np.uint8)
    if mode == "boundary":
        return (raw == 3).astype(np.uint8)
    if mode == "ignore_boundary":
        mask = (raw == 1).astype(np.uint8)
        mask[raw == 3] = 255
        return mask
    raise ValueError(f"unknown mask mode {mode!r}")


def read_mask(path: Path, source: SplitSource) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 mask (H, W) in {0, 1, 255}, the raw values the file holds)."""
    if source.mask_kind == "binary":
        foreground, values = read_binary(path, source)
        return foreground.astype(np.uint8), values
    raw, values = read_trimap(path)
    return trimap_to_mask(raw, source.mask_mode), values


def _flag(table: dict[str, Any], name: str, key: str) -> Any:
    """cv2's flag(s) for an interpolation name (the spec has checked it; this guards direct calls)."""
    if name not in table:
        raise ValueError(f"{key}: unknown interpolation {name!r}; expected one of {', '.join(table)}")
    return table[name]


def resize_image(image: np.ndarray, size: int, interpolation: str = DEFAULT_IMAGE_INTERPOLATION) -> np.ndarray:
    """Squash to (size, size). `area_linear`: area averaging when shrinking (either side),
    bilinear when enlarging; `linear`: bilinear always (albumentations' `Resize`)."""
    h, w = image.shape[:2]
    if (h, w) == (size, size):
        return np.ascontiguousarray(image)
    shrink, enlarge = _flag(IMAGE_INTERPOLATION, interpolation, "data.image_interpolation")
    return cv2.resize(image, (size, size), interpolation=shrink if size < h or size < w else enlarge)


def resize_mask(mask: np.ndarray, size: int, interpolation: str = DEFAULT_MASK_INTERPOLATION) -> np.ndarray:
    """Squash to (size, size) by nearest neighbour, so 255 never blends into 0/1: `nearest_exact`
    samples at pixel centres; `nearest` is cv2's INTER_NEAREST, albumentations' `Resize` default
    (the floor of the scaled index: up to half an output pixel up and left of the image)."""
    if mask.shape[:2] == (size, size):
        return np.ascontiguousarray(mask)
    flag = _flag(MASK_INTERPOLATION, interpolation, "data.mask_interpolation")
    return cv2.resize(mask, (size, size), interpolation=flag)


def resize_pair(image: np.ndarray, mask: np.ndarray, size: int,
                source: SplitSource | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`resize_image` and `resize_mask` with the source's interpolation (the defaults without one)."""
    image_rule = source.image_interpolation if source else DEFAULT_IMAGE_INTERPOLATION
    mask_rule = source.mask_interpolation if source else DEFAULT_MASK_INTERPOLATION
    return resize_image(image, size, image_rule), resize_mask(mask, size, mask_rule)


def _check_sizes(sample: Sample, image_hw: tuple[int, int], mask_hw: tuple[int, int]) -> None:
    if image_hw != mask_hw:
        raise DataError(
            f"{sample.image}: image is {image_hw[1]}x{image_hw[0]} but its mask {sample.mask} "
            f"is {mask_hw[1]}x{mask_hw[0]} (width x height); they must match"
        )


def load_checked(sample: Sample, source: SplitSource, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """`load_sample`, plus the mask file's raw values and whether it has any foreground pixel."""
    image = decode_image(sample.image)
    mask, values = read_mask(sample.mask, source)
    _check_sizes(sample, image.shape[:2], mask.shape[:2])
    has_foreground = bool((mask == 1).any())
    image, mask = resize_pair(image, mask, size, source)
    return image, mask, values, has_foreground


def load_sample(sample: Sample, source: SplitSource, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Decode, check and resize one sample: (uint8 (size, size, 3) RGB, uint8 (size, size) mask)."""
    return load_checked(sample, source, size)[:2]


def check_sample(sample: Sample, source: SplitSource, size: int) -> tuple[np.ndarray, bool, bool]:
    """Without a cache images are not decoded up front: check the image file (header, and a
    PNG's chunks, so a truncated file stops the run before training) and read the mask in full.
    Returns (the mask's raw values, has foreground, empty at `size`)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(sample.image) as opened:
            width, height = opened.size
            opened.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise DataError(f"{shown(sample.image)}: unreadable or corrupt image file") from None
    mask, values = read_mask(sample.mask, source)
    _check_sizes(sample, (height, width), mask.shape[:2])
    has_foreground = bool((mask == 1).any())
    mask = resize_mask(mask, size, source.mask_interpolation)
    return values, has_foreground, not bool((mask == 1).any())
