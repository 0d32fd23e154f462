"""The `segsweep` command: one parser with a subcommand per job, over the library's functions.

    segsweep run experiments/quickstart.yaml train.epochs=2
    segsweep sweep sweeps/quickstart_grid.yaml --workers 2
    segsweep report results/sweeps/quickstart_grid
    python -m segsweep --help

Each subcommand lives in its own module with `add_arguments(parser)` and `main(args, parser)`;
`scripts/*.py` are shims that call `main(["<subcommand>", ...])`.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn, Sequence

from .. import __version__
from ..errors import SegsweepError
from ..logs import install_log_handler  # re-exported: it lived here before core/logs.py

# name -> (module, one-line help); a module is imported only when its subcommand runs.
COMMANDS = {
    "run": ("run", "train one experiment from a YAML spec, or resume a run"),
    "sweep": ("sweep", "run a sweep file: an ablation grid or a random/TPE search"),
    "report": ("report", "write an ablation (or study) report from sweep or run folders"),
    "evaluate": ("evaluate", "recompute a run's metrics from its checkpoint"),
    "predict": ("predict", "segment images with a trained checkpoint"),
    "export": ("export", "export a trained model: onnx, safetensors, state_dict or smp"),
    "benchmark": ("benchmark", "time the training path against its ceiling, a naive baseline and a peer stack"),
    "dashboard": ("dashboard", "serve optuna-dashboard over a sweep's study on 127.0.0.1"),
    "cache": ("cache", "list the data caches (sizes, last use) or clear them"),
}


class Parser(argparse.ArgumentParser):
    """argparse, but a usage problem is one line on stderr (exit 2), like every other bad input."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {self.prog}: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def build_parser(prog: str = "segsweep") -> tuple[Parser, dict[str, Parser]]:
    parser = Parser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"segsweep {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    subparsers = {}
    for name, (module, help_text) in COMMANDS.items():
        mod = importlib.import_module(f".{module}", __name__)
        sub = commands.add_parser(name, help=help_text, description=mod.__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(sub)
        subparsers[name] = sub
    return parser, subparsers


def one_line(exc: BaseException) -> str:
    """The line a user sees for a bad input: the error's own message, or an OSError's path."""
    if isinstance(exc, OSError) and not isinstance(exc, SegsweepError):
        where = f"{exc.filename}: " if exc.filename else ""
        return f"error: {where}{exc.strerror or exc}"
    return f"error: {exc}"


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Parse `argv` (default: sys.argv[1:]) and run the subcommand; exits with its code.

    A `SegsweepError` or an `OSError` (e.g. an unwritable output path) becomes one line on
    stderr and exit code 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, subparsers = build_parser()
    if not argv or argv[0] not in COMMANDS:
        parser.parse_args(argv or ["--help"])  # --help, --version, or one line naming a bad command
        raise SystemExit(2)
    command, sub = argv[0], subparsers[argv[0]]
    module = importlib.import_module(f".{COMMANDS[command][0]}", __name__)
    if getattr(module, "INTERMIXED", True):
        args = sub.parse_intermixed_args(argv[1:])  # overrides may follow options
    else:
        args = sub.parse_args(argv[1:])
    install_log_handler()
    try:
        code = module.main(args, sub)
    except (SegsweepError, OSError) as exc:
        print(one_line(exc), file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:  # Ctrl-C outside a run's own handler (e.g. while the data cache is built)
        print(f"error: segsweep {command}: interrupted (SIGINT)", file=sys.stderr)
        raise SystemExit(130) from None
    raise SystemExit(code or 0)
