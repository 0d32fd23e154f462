"""No socket to anything but loopback: `run`, `sweep` (journal storage) and `report` with W&B offline
(auto without credentials) or disabled, and `import segsweep`.

Each command runs in a subprocess whose `sitecustomize.py` wraps `socket.getaddrinfo`,
`socket.create_connection` and `socket.socket.connect`/`connect_ex` in every Python process it
starts (threads, spawned sweep workers and wandb's Python side included): a non-loopback name or
address is written to a log and refused. wandb's service, wandb-core, is a Go binary that Python's
socket module does not see; every proxy variable points at a loopback listener that records any
connection, so an HTTP(S) request from it (or from any Python client that honours the variables)
is caught there too.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator

import pytest

from test_sweeps import write_sweep

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "experiments" / "quickstart.yaml"

GUARD = r'''
import errno, ipaddress, os, socket, threading

_LOG = os.environ["SEGSWEEP_NET_GUARD_LOG"]
_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", ""}


def _loopback(host):
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode()
    host = str(host).strip("[]").split("%")[0]
    if host.lower() in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _refuse(kind, target):
    with open(_LOG, "a") as fh:
        fh.write(f"{os.getpid()} {threading.current_thread().name} {kind} {target!r}\n")
    raise OSError(errno.ENETUNREACH, f"segsweep network guard: {kind} {target!r}")


_getaddrinfo, _create_connection = socket.getaddrinfo, socket.create_connection
_connect, _connect_ex = socket.socket.connect, socket.socket.connect_ex


def getaddrinfo(host, *args, **kwargs):
    if not _loopback(host):
        _refuse("getaddrinfo", host)
    return _getaddrinfo(host, *args, **kwargs)


def create_connection(address, *args, **kwargs):
    if not _loopback(address[0]):
        _refuse("create_connection", address)
    return _create_connection(address, *args, **kwargs)


def _check(sock, address):
    if sock.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address[0]):
        _refuse("connect", address)


def connect(self, address):
    _check(self, address)
    return _connect(self, address)


def connect_ex(self, address):
    _check(self, address)
    return _connect_ex(self, address)


socket.getaddrinfo, socket.create_connection = getaddrinfo, create_connection
socket.socket.connect, socket.socket.connect_ex = connect, connect_ex
'''


class ProxyRecorder:
    """A loopback listener that every proxy variable points at: it records who connected, then hangs up."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.seen: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:  # closed
                return
            with conn:
                conn.settimeout(2)
                try:
                    self.seen.append(conn.recv(200) or b"<connected>")
                except OSError:
                    self.seen.append(b"<connected>")

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[tuple[dict[str, str], Path, ProxyRecorder]]:
    """(env, guard log, proxy recorder): no W&B credentials, no albumentations flag, the guard on."""
    guard_dir = tmp_path / "guard"
    guard_dir.mkdir()
    (guard_dir / "sitecustomize.py").write_text(GUARD)
    log = tmp_path / "network.log"
    log.touch()
    home = tmp_path / "home"
    home.mkdir()
    proxy = ProxyRecorder()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("WANDB_") and k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
           and k != "NO_ALBUMENTATIONS_UPDATE"}
    url = f"http://127.0.0.1:{proxy.port}"
    env.update({
        "PYTHONPATH": os.pathsep.join([str(guard_dir), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "SEGSWEEP_NET_GUARD_LOG": str(log), "HOME": str(home), "NETRC": str(home / "netrc"),
        "WANDB_CONFIG_DIR": str(home / "wandb-config"), "WANDB_CACHE_DIR": str(home / "wandb-cache"),
        "WANDB_DATA_DIR": str(home / "wandb-data"),
        **{k: url for k in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")},
    })
    yield env, log, proxy
    proxy.close()


def segsweep(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "segsweep", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def assert_no_network(log: Path, proxy: ProxyRecorder) -> None:
    assert log.read_text() == "", f"non-loopback network use:\n{log.read_text()}"
    assert proxy.seen == [], f"requests through the proxy variables: {proxy.seen}"


def test_the_guard_catches_a_lookup_from_a_thread(guarded, tmp_path: Path) -> None:
    """The guard itself works (else the tests below could not fail): a lookup in a thread is logged."""
    env, log, _ = guarded
    code = ("import socket, threading\n"
            "def look():\n"
            "    try: socket.getaddrinfo('pypi.org', 443)\n"
            "    except OSError: pass\n"
            "t = threading.Thread(target=look, name='probe'); t.start(); t.join()\n"
            "socket.getaddrinfo('127.0.0.1', 1)\n")
    subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, check=True, timeout=60)
    assert log.read_text().split()[1:] == ["probe", "getaddrinfo", "'pypi.org'"]


def test_import_segsweep_is_offline_and_light(guarded, tmp_path: Path) -> None:
    env, log, proxy = guarded
    code = "import sys, segsweep; print(sorted(m for m in ('albumentations', 'wandb', 'torch') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == "[]"
    assert_no_network(log, proxy)


def test_run_sweep_and_report_open_no_socket_beyond_loopback(guarded, tmp_path: Path, tiny_overrides: dict) -> None:
    """`run` with W&B auto (no credentials: offline), TensorBoard and albumentations' colour jitter
    (its import is where the PyPI check was); a 2-cell grid sweep on the journal storage with W&B
    offline in its trials; a report over the sweep."""
    env, log, proxy = guarded
    overrides = {**tiny_overrides, "train.epochs": 1, "tracking.wandb.mode": "auto", "tracking.tensorboard": True,
                 "data.augment.color_jitter_p": 0.5}
    done = segsweep(env, tmp_path, "run", QUICKSTART, *[f"{k}={v}" for k, v in overrides.items()],
                    "--results", tmp_path / "results")
    assert "wandb sync" in done.stdout + done.stderr  # W&B did record, offline
    assert_no_network(log, proxy)

    sweep_file = write_sweep(tmp_path / "net_guard.yaml", parameters={"model.batchnorm": {"values": [True, False]}},
                             seeds=[0])
    sweep_overrides = {**overrides, "tracking.wandb.mode": "offline"}
    segsweep(env, tmp_path, "sweep", sweep_file, *[f"{k}={v}" for k, v in sweep_overrides.items()],
             "--results", tmp_path / "results")
    sweep_dir = tmp_path / "results" / "sweeps" / "net_guard"
    assert len(list(sweep_dir.glob("runs/*/*/summary.json"))) == 2
    assert_no_network(log, proxy)

    segsweep(env, tmp_path, "report", sweep_dir, "--out", tmp_path / "report")
    assert (tmp_path / "report" / "report.md").is_file()
    assert_no_network(log, proxy)
