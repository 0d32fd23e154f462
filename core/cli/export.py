"""Export a trained model: ONNX, safetensors, a plain state dict, or smp's format.

    segsweep export results/runs/quickstart/20261124-101500-a1b2c3 --format onnx --out quickstart.onnx
    segsweep export path/to/best.pt --format safetensors --out model.safetensors
    segsweep export RUN_DIR --format state_dict --out model.pt
    segsweep export RUN_DIR --format smp --out smp_unet/     # decoder: smp runs; smp.from_pretrained(...)

ONNX takes RGB in [0, 1] (B, 3, H, W), normalises inside, and returns foreground probabilities
(B, 1, H, W); batch, H and W are dynamic, H and W multiples of the model's size divisor (unet 16,
resnet34_unet 32). It is checked with onnxruntime against PyTorch before it is kept.
"""
from __future__ import annotations

import argparse

FORMAT_NAMES = "onnx, safetensors, state_dict, smp"  # help text only; segsweep.export.FORMATS decides


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="a run folder (uses checkpoints/best.pt) or a .pt checkpoint")
    parser.add_argument("--format", required=True, metavar="FORMAT", help=f"one of {FORMAT_NAMES}")
    parser.add_argument("--out", required=True, metavar="PATH", help="a new file (smp: a new folder); never overwritten")


def main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from ..export import export_model

    export_model(args.source, args.format, args.out)  # logs what it wrote
    return 0
