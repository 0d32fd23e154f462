"""Where samples come from: split lists for each dataset layout, and the one `load_sample` step.

`load_sample` (decode, check, resize to a square, map the annotation to a {0, 1, 255} mask) is
the only path from files to pixels: the memory-mapped cache stores exactly what it returns.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from ..errors import DataError

# Bump when load_sample's output changes for the same files: it is part of every cache key.
LOADER_VERSION = 1

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MaskKind = Literal["trimap", "binary"]


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


def _stem_files(folder: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."):
            if path.stem in files:
                raise DataError(f"{path}: two files with stem {path.stem!r} in {folder} ({files[path.stem].name})")
            files[path.stem] = path
    return files


def _unit_hash(stem: str) -> int:
    return int.from_bytes(hashlib.sha256(stem.encode()).digest()[:8], "big")


def folder_splits(root: Path, val_fraction: float, test_fraction: float,
                  foreground_value: int | None) -> dict[str, SplitSource]:
    """`images/` + `masks/` with matching stems. Stems are ordered by a hash of the name (stable,
    independent of file order); the first round(n * test_fraction) go to test, the next
    round(n * val_fraction) to val (at least 1 each when the fraction is > 0), the rest to train."""
    if not root.is_dir():
        raise DataError(f"{root}: data root not found (expected images/ and masks/ with matching file stems)")
    for sub in ("images", "masks"):
        if not (root / sub).is_dir():
            raise DataError(f"{root / sub}: folder not found (the folder layout needs images/ and masks/)")
    images, masks = _stem_files(root / "images"), _stem_files(root / "masks")
    no_mask = sorted(set(images) - set(masks))
    no_image = sorted(set(masks) - set(images))
    if no_mask or no_image:
        parts = []
        if no_mask:
            parts.append(f"{len(no_mask)} image(s) without a mask, e.g. {images[no_mask[0]]}")
        if no_image:
            parts.append(f"{len(no_image)} mask(s) without an image, e.g. {masks[no_image[0]]}")
        raise DataError(f"{root}: images/ and masks/ stems do not match: {'; '.join(parts)}")
    stems = sorted(images, key=lambda s: (_unit_hash(s), s))
    n = len(stems)

    def count(fraction: float) -> int:
        return 0 if fraction <= 0 else max(1, round(n * fraction))

    n_test, n_val = count(test_fraction), count(val_fraction)
    parts = {"test": stems[:n_test], "val": stems[n_test:n_test + n_val], "train": stems[n_test + n_val:]}
    mode = "binary" if foreground_value is None else f"value{foreground_value}"
    out = {}
    for split in ("train", "val", "test"):
        names = sorted(parts[split])
        if not names:
            raise DataError(
                f"{root}: the {split} split is empty ({n} image/mask pairs, "
                f"folder.val_fraction={val_fraction}, folder.test_fraction={test_fraction})"
            )
        samples = tuple(Sample(s, images[s], masks[s]) for s in names)
        out[split] = SplitSource("folder", split, samples, "binary", mode, foreground_value)
    return out


# --------------------------------------------------------------------------- pixels


def _read(path: Path, flags: int, what: str) -> np.ndarray:
    try:
        buffer = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise DataError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    pixels = cv2.imdecode(buffer, flags) if buffer.size else None
    if pixels is None:
        raise DataError(f"{path}: unreadable or corrupt {what} file")
    return pixels


def decode_image(path: Path) -> np.ndarray:
    """RGB uint8 (H, W, 3). EXIF orientation is ignored so pixels stay aligned with the annotation
    (as PIL and torchvision read them)."""
    pixels = _read(path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION, "image")
    if pixels.dtype != np.uint8:  # 16-bit PNG/TIFF
        pixels = (pixels / 257).round().astype(np.uint8)
    return cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)


def decode_annotation(path: Path) -> np.ndarray:
    """The raw annotation (H, W): trimap values or folder mask values (first channel if colour)."""
    pixels = _read(path, cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION, "mask")
    return pixels[..., 0] if pixels.ndim == 3 else pixels


def annotation_to_mask(raw: np.ndarray, source: SplitSource) -> np.ndarray:
    """uint8 mask with 0 = background, 1 = foreground, 255 = ignored."""
    if source.mask_kind == "binary":
        fg = raw > 0 if source.foreground_value is None else raw == source.foreground_value
        return fg.astype(np.uint8)
    mode = source.mask_mode  # trimap: 1 = pet, 2 = background, 3 = boundary
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


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Squash to (size, size): area averaging when shrinking, bilinear when enlarging."""
    h, w = image.shape[:2]
    if (h, w) == (size, size):
        return np.ascontiguousarray(image)
    shrink = size < h or size < w
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def resize_pair(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """`resize_image`, and pixel-centred nearest neighbour for the mask (255 never blends into 0/1)."""
    if mask.shape != (size, size):
        mask = cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST_EXACT)
    return resize_image(image, size), np.ascontiguousarray(mask)


def _check_sizes(sample: Sample, image_hw: tuple[int, int], mask_hw: tuple[int, int]) -> None:
    if image_hw != mask_hw:
        raise DataError(
            f"{sample.image}: image is {image_hw[1]}x{image_hw[0]} but its mask {sample.mask} "
            f"is {mask_hw[1]}x{mask_hw[0]} (width x height); they must match"
        )


def load_sample(sample: Sample, source: SplitSource, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Decode, check and resize one sample: (uint8 (size, size, 3) RGB, uint8 (size, size) mask)."""
    image = decode_image(sample.image)
    raw = decode_annotation(sample.mask)
    _check_sizes(sample, image.shape[:2], raw.shape[:2])
    return resize_pair(image, annotation_to_mask(raw, source), size)


def check_headers(source: SplitSource) -> None:
    """Without a cache nothing is decoded up front: read every file's header (~0.1 ms each) so
    unreadable files and size mismatches stop the run before training, not in the middle."""
    from PIL import Image, UnidentifiedImageError

    def header_size(path: Path, what: str) -> tuple[int, int]:
        try:
            with Image.open(path) as opened:
                width, height = opened.size
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            raise DataError(f"{path}: unreadable or corrupt {what} file") from None
        return height, width

    for sample in source.samples:
        _check_sizes(sample, header_size(sample.image, "image"), header_size(sample.mask, "mask"))
