"""Segment images with a trained checkpoint: writes <stem>_mask.png and <stem>_overlay.png.

    python scripts/predict.py results/runs/quickstart/<stamp>/checkpoints/best.pt photo.jpg --out preds/
"""
import sys

from segsweep.cli import main

if __name__ == "__main__":
    main(["predict", *sys.argv[1:]])
