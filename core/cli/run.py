"""Train one experiment from a YAML spec, or resume an interrupted run.

    segsweep run experiments/unet_he_init.yaml model.init=paper optim.lr=1e-3
    segsweep run experiments/quickstart.yaml --print
    segsweep run --resume results/runs/quickstart/20261124-101500-a1b2c3

Exit codes: 0 completed (or pruned; or --resume of a run that already ended), 1 diverged or
failed (out of memory during training included: one line with the size, batch and a hint), 2 bad
input (one line on stderr; also a run whose activations alone cannot fit in memory, refused before
the data are built, a --resume whose last.pt belongs to another run, and one whose metrics.csv is
damaged or was edited: --rewrite-record then resumes and rewrites it from last.pt, keeping the old
file as metrics.csv.before-rewrite), 130 / 143 stopped by SIGINT / SIGTERM (resumable: last.pt
holds every batch done). A second Ctrl-C exits at once.
"""
from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Any, Callable

import yaml

from ..errors import SegsweepError, SpecError
from ..spec import ExperimentSpec, load_spec, spec_to_yaml

FINISHED = ("completed", "diverged", "pruned")  # a run ended with one of these has nothing to resume


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", nargs="?", help="experiment spec (YAML)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. optim.lr=1e-3")
    parser.add_argument("--results", help="results root (default: results)")
    parser.add_argument("--print", action="store_true", help="print the resolved spec and exit")
    parser.add_argument("--resume", metavar="RUN_DIR",
                        help="continue an interrupted, failed or killed run from its checkpoints/last.pt")
    parser.add_argument("--rewrite-record", action="store_true",
                        help="with --resume: when metrics.csv is damaged or was edited, rewrite it from the epochs "
                        "last.pt records (the old file is kept as metrics.csv.before-rewrite)")


def refuse_sweep_file(path: Path) -> None:
    """A sweep file given to `run` gets one line saying which command takes it."""
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return  # load_spec says what is wrong with the file
    if isinstance(tree, dict) and "parameters" in tree and ("method" in tree or "experiment" in tree):
        raise SpecError(f"{path}: this is a sweep file (it has `method:` and `parameters:`), not an experiment; "
                        f"run it with: segsweep sweep {path}")


def keep_old_record(run_dir: Path, problem: str) -> None:
    """Before --rewrite-record replaces metrics.csv, keep the file as it was beside it (only rank 0
    under torchrun), and say so."""
    import os
    import shutil

    from ..record import atomic_write

    if os.environ.get("RANK", "0") != "0":
        return
    old = run_dir / "metrics.csv"
    names = ("metrics.csv.before-rewrite", *(f"metrics.csv.before-rewrite-{n}" for n in range(2, 1000)))
    kept = next(run_dir / name for name in names if not (run_dir / name).exists())  # an earlier one stays too
    atomic_write(kept, lambda tmp: shutil.copyfile(old, tmp))
    print(f"{old}: {problem}; it is rewritten from checkpoints/last.pt as the run resumes (the file as it was "
          f"is kept as {kept.name})", flush=True)


def folder_line(say: Callable[..., None], run_dir: Path) -> Any:
    """A `fit` callback that prints `run folder: ...` once the folder exists (when fit starts, or
    by `.now()` for a folder already there), once: a run refused while it is built (memory, data)
    never had a folder to name."""
    from ..train.callbacks import Callback

    class FolderLine(Callback):
        said = False

        def now(self) -> None:
            if not self.said and run_dir.is_dir():
                self.said = True
                say(f"run folder: {run_dir}", flush=True)

        def on_fit_start(self, state: Any) -> None:
            self.now()

    return FolderLine()


def main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from ..record import check_writable, new_run_dir, read_json

    if args.resume:
        from ..checkpoint import check_resume_identity
        from ..train.loop import load_run_spec

        if args.spec or args.overrides or args.results:
            parser.error("--resume takes only the run folder (its spec is stored in the checkpoint)")
        run_dir = Path(args.resume).expanduser()
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
        # another run's last.pt, or a damaged metrics.csv without --rewrite-record: refused
        problem = check_resume_identity(run_dir, run_dir / "checkpoints" / "last.pt", args.rewrite_record)
        check_writable(run_dir)
        if problem is not None:
            keep_old_record(run_dir, problem)
    else:
        if not args.spec:
            parser.error("the experiment spec is required (or --resume RUN_DIR)")
        if args.rewrite_record:
            parser.error("--rewrite-record goes with --resume RUN_DIR")
        refuse_sweep_file(Path(args.spec))
        spec = load_spec(args.spec, args.overrides)
        if args.print:
            print(spec_to_yaml(spec), end="")
            return 0
        run_dir = new_run_dir(Path(args.results or "results").expanduser(), spec.name, create=False)

    from ..distributed import main_value, process_group
    from ..tracking import build_tracker
    from ..train.loop import fit
    from ..train.memory import is_out_of_memory, out_of_memory

    # Under torchrun: one process per rank, DDP; rank 0 names the folder, writes and reports.
    with process_group(spec.train.device, spec.train.threads) as ranks:
        run_dir = main_value(run_dir)
        say = print if ranks.is_main else (lambda *args, **kwargs: None)
        folder = folder_line(say, run_dir)
        folder.now()  # a resumed run's folder is there already
        tracker = build_tracker(spec, run_dir) if ranks.is_main else None
        try:
            result = fit(spec, run_dir, tracker=tracker, resume=bool(args.resume), callbacks=[folder])
        except (RuntimeError, MemoryError) as exc:  # recorded as failed in the run folder; one line here
            if not is_out_of_memory(exc):
                raise
            say(f"error: {out_of_memory(spec, exc)}", file=sys.stderr)
            return 1
        finally:
            folder.now()  # a run that failed after its folder was made: name it
    s = result.metrics
    for line in outcome_lines(spec, result, run_dir):
        say(line)
    if result.status == "interrupted":
        # last.pt holds every batch done, so nothing is lost (see segsweep.train.fit).
        launcher = f"torchrun --nproc_per_node={ranks.local_world_size} -m segsweep" if ranks.world_size > 1 else "segsweep"
        say(f"resume with: {launcher} run --resume {run_dir}", file=sys.stderr)
        return 128 + (result.signal or signal.SIGINT)
    if result.status in ("diverged", "failed"):
        say(f"run {result.status}: {s.get('error', '')}", file=sys.stderr)
        return 1
    return 0



def outcome_lines(spec: ExperimentSpec, result: Any, run_dir: Path) -> list[str]:
    """What a finished run prints: its status, the epoch kept, its test Dice and where it is."""
    s, monitor = result.metrics, spec.checkpoint.monitor
    lines = [f"status: {result.status}"]
    if s.get("floor_passed") is False:
        lines.append(f"no epoch's {monitor} passed checkpoint.floor {spec.checkpoint.floor:g}: nothing kept as best; "
                     f"the last epoch ({s.get('tested_epoch')}) was tested (val/dice {s['val/dice']:.4f})")
    else:
        shown = f"  ({monitor} {s[monitor]:.4f})" if monitor != "val/dice" and monitor in s else ""
        lines.append(f"best val/dice: {s['val/dice']:.4f} (epoch {result.best_epoch}){shown}")
    if spec.train.final_test:
        lines.append(f"test/dice: {s['test/dice']:.4f}  test/dice_global: {s['test/dice_global']:.4f}  "
                     f"test/iou: {s['test/iou']:.4f}")
    else:
        lines.append("test split not evaluated (train.final_test: false)")
    return lines + [f"results: {run_dir} (metrics.csv, summary.json, curves.png, predictions.png, checkpoints/)"]
