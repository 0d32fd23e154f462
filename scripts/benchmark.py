"""Speed of the training path against its ceiling, a naive baseline and a peer stack (issue 6).

    python scripts/benchmark.py                 # full run, 20-24 min on a quiet 2-core AVX2-only AMD EPYC
    python scripts/benchmark.py --quick         # smoke run, about 3 min there; no thresholds
    python scripts/benchmark.py --out bench.json --cache-dir /tmp/segsweep-cache

The same as `segsweep benchmark` (see `segsweep benchmark --help`); the code is `segsweep.bench`.
"""
import sys

from segsweep.cli import main

if __name__ == "__main__":
    main(["benchmark", *sys.argv[1:]])
