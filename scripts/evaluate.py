"""Recompute a run's metrics from its checkpoint.

    python scripts/evaluate.py results/runs/quickstart/20261124-101500-a1b2c3 --split val
    python scripts/evaluate.py path/to/best.pt --split test data.root=/data/pets
"""
import sys

from segsweep.cli import main

if __name__ == "__main__":
    main(["evaluate", *sys.argv[1:]])
