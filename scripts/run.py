"""Train one experiment from a YAML spec, or resume an interrupted run.

    python scripts/run.py experiments/unet_he_init.yaml model.init=paper optim.lr=1e-3
    python scripts/run.py experiments/quickstart.yaml --print
    python scripts/run.py --resume results/runs/quickstart/20261124-101500-a1b2c3

Exit codes: 0 completed (or pruned; or --resume of a run that already ended), 1 diverged or
failed, 2 bad input (one line on stderr), 130 / 143 stopped by SIGINT / SIGTERM (resumable:
last.pt holds every batch done). A second Ctrl-C exits at once.
"""
from __future__ import annotations

import signal
import sys
from pathlib import Path

from _cli import Parser, run_main

from core.errors import SegsweepError
from core.spec import load_spec, spec_to_yaml


FINISHED = ("completed", "diverged", "pruned")  # a run ended with one of these has nothing to resume


def main() -> int:
    parser = Parser(prog="run.py", description=__doc__, formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    parser.add_argument("spec", nargs="?", help="experiment spec (YAML)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. optim.lr=1e-3")
    parser.add_argument("--results", help="results root (default: results)")
    parser.add_argument("--print", action="store_true", help="print the resolved spec and exit")
    parser.add_argument("--resume", metavar="RUN_DIR",
                        help="continue an interrupted, failed or killed run from its checkpoints/last.pt")
    args = parser.parse_intermixed_args()  # overrides may follow options

    from core.record import check_writable, new_run_dir, read_json

    if args.resume:
        from core.trainer import load_run_spec

        if args.spec or args.overrides or args.results:
            parser.error("--resume takes only the run folder (its spec is stored in the checkpoint)")
        run_dir = Path(args.resume)
        if not run_dir.is_dir():
            raise SegsweepError(f"{run_dir}: --resume expects an existing run folder")
        if args.print:
            print(spec_to_yaml(load_run_spec(run_dir)), end="")
            return 0
        if (run_dir / "summary.json").exists():
            status = read_json(run_dir / "summary.json").get("status")
            if status in FINISHED:
                print(f"{run_dir}: the run already ended ({status}); nothing to resume")
                return 0
        spec = load_run_spec(run_dir)
        check_writable(run_dir)
    else:
        if not args.spec:
            parser.error("the experiment spec is required (or --resume RUN_DIR)")
        spec = load_spec(args.spec, args.overrides)
        if args.print:
            print(spec_to_yaml(spec), end="")
            return 0
        run_dir = new_run_dir(args.results or "results", spec.name, create=False)

    from core.distributed import main_value, process_group
    from core.tracking import build_tracker
    from core.trainer import fit

    # Under torchrun: one process per rank, DDP; rank 0 names the folder, writes and reports.
    with process_group(spec.train.device, spec.train.threads) as ranks:
        run_dir = main_value(run_dir)
        say = print if ranks.is_main else (lambda *args, **kwargs: None)
        say(f"run folder: {run_dir}", flush=True)
        tracker = build_tracker(spec, run_dir) if ranks.is_main else None
        result = fit(spec, run_dir, tracker=tracker, resume=bool(args.resume))
    s = result.metrics
    say(f"status: {result.status}")
    say(f"best val/dice: {s['val/dice']:.4f} (epoch {result.best_epoch})")
    if spec.train.final_test:
        say(f"test/dice: {s['test/dice']:.4f}  test/dice_global: {s['test/dice_global']:.4f}  test/iou: {s['test/iou']:.4f}")
    else:
        say("test split not evaluated (train.final_test: false)")
    say(f"results: {run_dir} (metrics.csv, summary.json, curves.png, predictions.png, checkpoints/)")
    if result.status == "interrupted":
        # last.pt holds every batch done, so nothing is lost (see core.trainer.fit).
        launcher = f"torchrun --nproc_per_node={ranks.local_world_size}" if ranks.world_size > 1 else "python"
        say(f"resume with: {launcher} scripts/run.py --resume {run_dir}", file=sys.stderr)
        return 128 + (result.signal or signal.SIGINT)
    if result.status in ("diverged", "failed"):
        say(f"run {result.status}: {s.get('error', '')}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run_main(main)
