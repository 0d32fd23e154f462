"""Segment images with a trained checkpoint: writes <stem>_mask.png and <stem>_overlay.png.

    python scripts/predict.py results/runs/quickstart/<stamp>/checkpoints/best.pt photo.jpg --out preds/
"""
from __future__ import annotations

import argparse
from pathlib import Path

from _cli import Parser, run_main


def main() -> int:
    parser = Parser(prog="predict.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a .pt checkpoint or a run folder (uses checkpoints/best.pt)")
    parser.add_argument("images", nargs="+", help="image files (JPEG/PNG)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--threshold", type=float, default=0.5, help="foreground probability threshold (0.5)")
    args = parser.parse_intermixed_args()  # overrides may follow options

    import cv2
    from tqdm.auto import tqdm

    from core.data.sources import decode_image
    from core.errors import DataError, SegsweepError
    from core.inference import Predictor, overlay
    from core.record import atomic_write_bytes

    if not 0 < args.threshold < 1:
        parser.error(f"--threshold {args.threshold}: expected a probability strictly between 0 and 1")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise SegsweepError(f"{out}: --out is a file, expected a folder for the masks and overlays")
    # Everything is checked before the first file is written: a bad input changes nothing.
    missing = [p for p in args.images if not Path(p).is_file()]
    if missing:
        raise DataError(f"{missing[0]}: image not found")
    for path in args.images:
        decode_image(Path(path))  # DataError naming the file if unreadable
    predictor = Predictor(args.checkpoint)
    out.mkdir(parents=True, exist_ok=True)
    for path in tqdm(args.images, desc="predict", disable=len(args.images) < 5):
        image, prob = predictor.predict_file(path)
        mask = prob > args.threshold
        stem = Path(path).stem
        for name, pixels in ((f"{stem}_mask.png", mask.astype("uint8") * 255),
                             (f"{stem}_overlay.png", cv2.cvtColor(overlay(image, mask), cv2.COLOR_RGB2BGR))):
            ok, png = cv2.imencode(".png", pixels)
            assert ok
            atomic_write_bytes(out / name, png.tobytes())
        print(f"{path}: foreground {mask.mean():.1%} -> {out / (stem + '_mask.png')}")
    return 0


if __name__ == "__main__":
    run_main(main)
