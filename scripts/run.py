"""Train one experiment from a YAML spec, or resume an interrupted run.

    python scripts/run.py experiments/unet_he_init.yaml model.init=paper optim.lr=1e-3
    python scripts/run.py experiments/quickstart.yaml --print
    python scripts/run.py --resume results/runs/quickstart/20261124-101500-a1b2c3

Exit codes: 0 completed (or pruned; or --resume of a run that already ended), 1 diverged or
failed, 2 bad input (one line on stderr), 130 / 143 stopped by SIGINT / SIGTERM (resumable:
last.pt holds every batch done). A second Ctrl-C exits at once.
"""
import sys

from segsweep.cli import main

if __name__ == "__main__":
    main(["run", *sys.argv[1:]])
