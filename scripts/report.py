"""Write an ablation report (report.md + PNG figures) from a sweep folder or run folders.

    python scripts/report.py results/sweeps/seed_ablations [more run dirs ...]
        [--out DIR] [--baseline model.init=pytorch ...] [--margin 0.005]
"""
from __future__ import annotations

import argparse
import sys

from core.errors import SegsweepError
from core.reports import ReportOptions, write_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="sweep folder and/or run folders (searched for summary.json)")
    parser.add_argument("--out", help="folder for report.md and figures (default: the first path)")
    parser.add_argument("--baseline", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="baseline level of a factor (default: the level in the most arms)")
    parser.add_argument("--margin", type=float, default=0.005, help="equivalence margin in Dice (default 0.005)")
    args = parser.parse_args(argv)
    try:
        report = write_report(args.paths, args.out, args.baseline, ReportOptions(margin=args.margin))
    except SegsweepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
