"""Recompute a run's metrics from its checkpoint.

    segsweep evaluate results/runs/quickstart/20261124-101500-a1b2c3 --split val
    segsweep evaluate path/to/best.pt --split test data.root=/data/pets
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a run folder (uses checkpoints/best.pt) or a .pt file")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. data.root=...")
    parser.add_argument("--split", choices=("train", "val", "test"), default="test")
    parser.add_argument("--per-image", metavar="CSV", help="also write per-image Dice/IoU to this CSV")


def main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from ..record import write_per_image
    from ..train.loop import evaluate_checkpoint

    spec, result = evaluate_checkpoint(args.checkpoint, args.split, args.overrides)
    metrics = result.metrics(args.split)
    print(json.dumps({k: round(v, 6) for k, v in metrics.items()}, indent=2))
    if args.per_image:
        out = Path(args.per_image)
        write_per_image(out.parent, result.per_image, out.name)
        print(f"per-image metrics: {out}")
    return 0

