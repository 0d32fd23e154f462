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
    args = parser.parse_args()

    import cv2
    from tqdm.auto import tqdm

    from core.errors import DataError
    from core.inference import Predictor, overlay
    from core.record import atomic_write_bytes

    missing = [p for p in args.images if not Path(p).is_file()]
    if missing:
        raise DataError(f"{missing[0]}: image not found")
    predictor = Predictor(args.checkpoint)
    out = Path(args.out)
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
