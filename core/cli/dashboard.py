"""Serve optuna-dashboard over a sweep's study, on this machine only (127.0.0.1 by default).

    segsweep dashboard results/sweeps/quickstart_grid          # the sweep's journal or database
    segsweep dashboard results/sweeps/quickstart_grid --port 0 # any free port
    segsweep dashboard postgresql://user@host/db               # every study in that database

The first line printed is the address to open; Ctrl-C stops the server. Needs the `dashboard`
extra: pip install 'segsweep[dashboard]'.
"""
from __future__ import annotations

import argparse
import ipaddress
import logging
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from ..errors import SegsweepError, SweepError

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", metavar="SWEEP_DIR_OR_STORAGE",
                        help="a sweep folder (results/sweeps/NAME), a journal file or a database URL")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080; 0: any free one)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only; the dashboard has no login)")


class _QuietHandler(WSGIRequestHandler):
    """wsgiref's handler without a stderr line per request."""

    def log_message(self, format: str, *args: Any) -> None:
        log.debug(f"dashboard: {format % args}")


def _open(target: str) -> tuple[Any, str, int | None]:
    """(storage, where, study id) for the target; the study id only when it names one sweep."""
    import optuna

    from ..sweeps.spec import OptunaSpec
    from ..sweeps.storage import is_rdb_url, locate_storage, masked_url, open_storage, quiet_optuna

    quiet_optuna()
    location, name = locate_storage(target)
    if is_rdb_url(location):
        storage = open_storage(location, OptunaSpec())
    else:  # plain Optuna over the file: what `optuna-dashboard journal.log` opens
        try:
            storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(location))
            studies = storage.get_all_studies()
        except Exception as exc:  # not a journal: a JSON decode error or the like
            raise SweepError(f"{location}: not an Optuna journal file ({type(exc).__name__}: {exc})") from None
        if not studies and name is None:
            raise SweepError(f"{location}: holds no study; expected the journal.log of a sweep folder")
    if name is None:
        return storage, masked_url(location), None
    try:
        return storage, masked_url(location), storage.get_study_id_from_name(name)
    except KeyError:
        raise SweepError(f"{target}: its storage {masked_url(location)} holds no study named {name!r} "
                         "(has the sweep started?)") from None


def main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    try:
        from optuna_dashboard import wsgi
    except ImportError:
        raise SegsweepError("segsweep dashboard needs optuna-dashboard, which is not installed: "
                            "pip install 'segsweep[dashboard]'") from None
    if not 0 <= args.port <= 65535:
        raise SegsweepError(f"--port {args.port}: expected 0 (any free port) to 65535")
    storage, where, study_id = _open(args.target)
    try:
        server = make_server(args.host, args.port, wsgi(storage), handler_class=_QuietHandler)
    except OSError as exc:
        raise SegsweepError(f"--host {args.host} --port {args.port}: cannot listen there ({exc.strerror or exc}); "
                            "pick another --port (0: any free one)") from None
    with server:
        page = f"/dashboard/studies/{study_id}" if study_id is not None else "/dashboard"
        host = f"[{args.host}]" if ":" in args.host else args.host
        print(f"optuna-dashboard: http://{host}:{server.server_port}{page}  (storage {where}; Ctrl-C stops)",
              flush=True)
        if not _is_loopback(args.host):
            log.warning(f"warning: listening on {args.host}: anyone who reaches this machine can read and edit "
                        "the study (optuna-dashboard has no login)")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
    return 0


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
