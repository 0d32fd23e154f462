"""Write an ablation report (report.md + PNG figures) from a sweep folder or run folders.

    segsweep report results/sweeps/seed_ablations [more run dirs ...]
        [--out DIR] [--baseline model.init=pytorch ...] [--margin 0.005]

A search study (TPE/random) and the recipe it chose, trained and tested once per seed:

    segsweep report --study results/sweeps/pets_mini_recipe --final RUN_DIR ... [--target 0.835]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import SegsweepError

INTERMIXED = False  # --baseline and --final take several values: plain parsing


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", help="sweep folder and/or run folders (searched for summary.json)")
    parser.add_argument("--out", help="folder for report.md and figures (default: the first path)")
    parser.add_argument("--baseline", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="baseline level of a factor (default: the base experiment's value, else the "
                        "level in the most arms)")
    parser.add_argument("--allow-mixed-data", action="store_true",
                        help="report runs scored on different datasets or test splits (refused otherwise); "
                        "the report then carries a warning")
    parser.add_argument("--margin", type=float, default=0.005, help="equivalence margin in Dice (default 0.005)")
    parser.add_argument("--detect", type=float, help="difference the 'seeds needed' column is for (default: the margin)")
    parser.add_argument("--study", action="store_true",
                        help="the path is a search sweep: report the study (importances, best trials) instead")
    parser.add_argument("--final", nargs="+", action="extend", default=[], metavar="RUN_DIR",
                        help="with --study: the chosen recipe's run folders (one per seed and model), tested")
    parser.add_argument("--target", type=float, help="with --study: test Dice the final recipe should reach")


def check_out(out: str | None) -> None:
    """--out must be a folder or a path where one can be made: a file there (or above it) is named,
    before any run is read."""
    if out is None:
        return
    path = Path(out).expanduser()
    expected = "expected a folder for report.md and its figures (an existing folder, or a new path to create)"
    if path.exists() and not path.is_dir():
        raise SegsweepError(f"--out {out}: is a file, not a folder; {expected}")
    for above in path.parents:
        if above.exists() and not above.is_dir():
            raise SegsweepError(f"--out {out}: {above} is a file, so no folder can be made under it; {expected}")


def main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from ..reports.ablation import ReportOptions, write_report
    from ..reports.study import write_study_report

    check_out(args.out)
    if args.study:
        if len(args.paths) != 1:
            raise SegsweepError(f"--study takes one sweep folder, got {len(args.paths)} paths")
        report = write_study_report(args.paths[0], args.final, args.out, args.target)
    elif args.final or args.target is not None:
        raise SegsweepError("--final and --target go with --study")
    else:
        options = ReportOptions(margin=args.margin, allow_mixed_data=args.allow_mixed_data, detect=args.detect)
        report = write_report(args.paths, args.out, args.baseline, options)
    print(report)
    return 0
