"""Segment images with a trained checkpoint: writes <stem>_mask.png and <stem>_overlay.png.

    segsweep predict results/runs/quickstart/<stamp>/checkpoints/best.pt photo.jpg --out preds/
"""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a .pt checkpoint or a run folder (uses checkpoints/best.pt)")
    parser.add_argument("images", nargs="+", help="image files (JPEG/PNG)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--threshold", type=float, default=0.5, help="foreground probability threshold (0.5)")


def output_stems(images: list[str]) -> dict[str, str]:
    """The name each image's outputs start with: its stem, or stem + extension where two images
    share a stem (`3.png`, `3.jpg` -> `3_png`, `3_jpg`). Two files that would still collide
    (`a/3.png`, `b/3.png`) are refused before anything is written."""
    from ..errors import DataError

    stems: dict[str, list[str]] = {}
    for image in dict.fromkeys(images):
        stems.setdefault(Path(image).stem, []).append(image)
    names: dict[str, str] = {}
    for stem, group in stems.items():
        for image in group:
            names[image] = stem if len(group) == 1 else f"{stem}_{Path(image).suffix.lstrip('.').lower()}"
    seen: dict[str, str] = {}
    for image, name in names.items():
        if name in seen:
            raise DataError(f"{image}: its predictions would overwrite those of {seen[name]} (both {name}_mask.png); "
                            "give images with distinct names, or predict them into separate --out folders")
        seen[name] = image
    return names


def main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import cv2
    from tqdm.auto import tqdm

    from ..data.sources import decode_image
    from ..errors import DataError, SegsweepError
    from ..inference import Predictor, overlay
    from ..record import atomic_write_bytes

    if not 0 < args.threshold < 1:
        parser.error(f"--threshold {args.threshold}: expected a probability strictly between 0 and 1")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise SegsweepError(f"{out}: --out is a file, expected a folder for the masks and overlays")
    # Everything is checked before the first file is written: a bad input changes nothing.
    for path in map(Path, args.images):
        if path.is_dir():
            raise DataError(f"{path}: is a folder; predict takes image files (e.g. {path}/*.jpg)")
        if not path.is_file():
            raise DataError(f"{path}: image not found")
    names = output_stems(args.images)
    for path in args.images:
        decode_image(Path(path))  # DataError naming the file if unreadable
    predictor = Predictor(args.checkpoint)
    out.mkdir(parents=True, exist_ok=True)
    for path in tqdm(args.images, desc="predict", disable=len(args.images) < 5):
        image, prob = predictor.predict_file(path)
        mask = prob > args.threshold
        stem = names[path]
        for name, pixels in ((f"{stem}_mask.png", mask.astype("uint8") * 255),
                             (f"{stem}_overlay.png", cv2.cvtColor(overlay(image, mask), cv2.COLOR_RGB2BGR))):
            ok, png = cv2.imencode(".png", pixels)
            assert ok
            atomic_write_bytes(out / name, png.tobytes())
        print(f"{path}: foreground {mask.mean():.1%} -> {out / (stem + '_mask.png')}")
    return 0

