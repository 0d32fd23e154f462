"""Write an ablation report (report.md + PNG figures) from a sweep folder or run folders.

    python scripts/report.py results/sweeps/seed_ablations [more run dirs ...]
        [--out DIR] [--baseline model.init=pytorch ...] [--margin 0.005]

A search study (TPE/random) and the recipe it chose, trained and tested once per seed:

    python scripts/report.py --study results/sweeps/pets_mini_recipe --final RUN_DIR ... [--target 0.835]
"""
import sys

from segsweep.cli import main

if __name__ == "__main__":
    main(["report", *sys.argv[1:]])
