"""Shared by the entry points: one-line errors with exit code 2, and the repo on sys.path."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, NoReturn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from core.errors import SegsweepError  # noqa: E402


class Parser(argparse.ArgumentParser):
    """argparse, but a usage problem is one line on stderr (exit 2), like every other bad input."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {self.prog}: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def run_main(main: Callable[[], int | None]) -> NoReturn:
    """Run `main`; a `SegsweepError` becomes `error: <message>` on stderr and exit code 2."""
    try:
        code = main()
    except SegsweepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as exc:  # e.g. an output path that cannot be written
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        raise SystemExit(2) from None
    raise SystemExit(code or 0)
