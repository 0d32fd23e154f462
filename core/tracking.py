"""Trackers that mirror a run's local record to W&B (offline-first) and TensorBoard.

The local record written by the trainer is the source of truth: a tracker that fails warns once,
disables itself and lets training carry on. `load_wandb_log` reads W&B's offline transaction log.
"""
from __future__ import annotations

import json
import netrc
import os
import shlex
import struct
import threading
import time
import urllib.error
import urllib.request
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence
from urllib.parse import urlsplit

import numpy as np

from core.errors import TrackingError
from core.spec import ExperimentSpec, WandbSpec, flatten, spec_to_dict, spec_to_yaml

DEFAULT_WANDB_URL = "https://api.wandb.ai"
PROBE_TIMEOUT_S = 2.5  # `mode: auto` waits at most this long for the W&B server to answer
INIT_TIMEOUT_S = 30.0  # wandb.init gives up after this (online); offline starts in < 1 s
FINISH_TIMEOUT_S = 120.0  # an online run stops waiting for uploads; `wandb sync` sends the rest
LOG_FLUSH_TIMEOUT_S = 15.0  # finish() waits at most this long for the `.wandb` log to be complete


class TrackingWarning(UserWarning):
    """A tracker failed and was disabled; training and the local record carry on."""


class Tracker:
    """Mirror of one run. Every method is a no-op here; subclasses override what they log.

    Call order (rank 0 only): `start` once, then per epoch `log_epoch` and optionally
    `log_predictions`, then `finish` once (also for failed runs). Methods never raise.
    """

    sync_command: str | None = None  # `wandb sync ...` for an offline W&B run, once started

    def start(self, spec: ExperimentSpec, run_dir: Path, meta: Mapping[str, Any]) -> None:
        """`meta`: git_sha, config_hash, arm_hash."""

    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        """`metrics`: one metrics.csv row, e.g. {'train/loss': .., 'val/dice': .., 'lr': ..}."""

    def log_predictions(self, epoch: int, grid: np.ndarray) -> None:
        """`grid`: uint8 (H, W, 3) prediction overlay."""

    def finish(self, summary: Mapping[str, Any], best_checkpoint: Path | None) -> None:
        """`summary`: the summary.json dict; `best_checkpoint`: checkpoints/best.pt if any."""


class _Guarded(Tracker):
    """A tracker whose backend may fail: the first failure warns and turns it into a no-op."""

    name = "tracker"
    active = False
    error: str | None = None

    def _fail(self, action: str, exc: BaseException) -> None:
        self.active = False
        self.error = f"{action}: {type(exc).__name__}: {exc}"
        warnings.warn(
            f"{self.name} disabled after a failure in {self.error}; training continues and the "
            f"local run record is complete",
            TrackingWarning,
            stacklevel=3,
        )
        try:
            self._abandon()
        except Exception:  # the backend is already broken; nothing more to save
            pass

    def _abandon(self) -> None:
        """Release the backend after a failure (best effort)."""


# --------------------------------------------------------------------------- W&B


def _wandb_base_url() -> str:
    return os.environ.get("WANDB_BASE_URL") or DEFAULT_WANDB_URL


def _netrc_path() -> Path:
    # The same lookup wandb itself does: $NETRC, else ~/.netrc (~/_netrc on Windows).
    if os.environ.get("NETRC"):
        return Path(os.environ["NETRC"]).expanduser()
    home = Path.home()
    for name in (".netrc", "_netrc"):
        if (home / name).exists():
            return home / name
    return home / ".netrc"


def wandb_credentials(base_url: str | None = None) -> str | None:
    """Where W&B credentials for `base_url` are configured ('WANDB_API_KEY', a netrc path) or None.

    Reads the environment and the netrc file only: it never prompts and never logs in.
    """
    if os.environ.get("WANDB_API_KEY"):
        return "WANDB_API_KEY"
    if os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return "WANDB_IDENTITY_TOKEN_FILE"
    host = urlsplit(base_url or _wandb_base_url()).netloc
    path = _netrc_path()
    if not host or not path.is_file():
        return None
    try:
        entry = netrc.netrc(str(path)).authenticators(host)
    except (netrc.NetrcParseError, OSError):
        return None
    return str(path) if entry and entry[2] else None


def server_answers(base_url: str, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """True when an HTTP request to `base_url` gets any response within `timeout_s`.

    Runs in a daemon thread so that a hanging DNS lookup cannot hold the caller longer.
    """
    answered = threading.Event()

    def probe() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(base_url, method="HEAD"), timeout=timeout_s).close()
            answered.set()
        except urllib.error.HTTPError:  # a 4xx/5xx is still the server answering
            answered.set()
        except Exception:
            pass

    thread = threading.Thread(target=probe, name="segsweep-wandb-probe", daemon=True)
    thread.start()
    thread.join(timeout_s)
    return answered.is_set()


def resolve_wandb_mode(
    mode: str, probe: Callable[[str, float], bool] | None = None
) -> tuple[str, str]:
    """(mode, reason): the mode W&B runs in, decided without logging in.

    `auto` is online only with credentials AND a server that answers within PROBE_TIMEOUT_S;
    it honours WANDB_MODE=offline|disabled and probes nothing when no credentials are
    configured. `online` without credentials also becomes offline (wandb would prompt).
    """
    if mode == "online" and wandb_credentials() is None:
        # wandb would ask for an API key (or hang on a prompt): record offline instead.
        return "offline", "tracking.wandb.mode=online but no W&B credentials (WANDB_API_KEY or netrc)"
    if mode != "auto":
        return mode, f"tracking.wandb.mode={mode}"
    env_mode = os.environ.get("WANDB_MODE", "").lower()
    if env_mode in ("offline", "dryrun", "disabled"):
        return ("disabled" if env_mode == "disabled" else "offline"), f"WANDB_MODE={env_mode}"
    base_url = _wandb_base_url()
    source = wandb_credentials(base_url)
    if source is None:
        return "offline", "auto: no W&B credentials (WANDB_API_KEY or netrc)"
    started = time.perf_counter()
    if (probe or server_answers)(base_url, PROBE_TIMEOUT_S):
        return "online", f"auto: credentials in {source} and {base_url} answered"
    waited = time.perf_counter() - started
    return "offline", f"auto: {base_url} did not answer within {waited:.1f} s"


def _wandb_settings(wandb: Any, mode: str) -> Any:
    """Settings for a fast start that never prompts and never captures the console."""
    wanted = dict(
        mode=mode,
        silent=True,  # we print the one line that matters (where the run is, how to sync)
        console="off",  # do not wrap stdout/stderr: the trainer owns the terminal
        init_timeout=INIT_TIMEOUT_S,
        finish_timeout=FINISH_TIMEOUT_S if mode == "online" else 0.0,
        reinit="create_new",  # several runs per process (sweeps); never touches wandb.run
        x_disable_stats=True,  # no system-metrics sampler: the record has img_per_s and epoch_s
        x_disable_meta=True,
        x_disable_machine_info=True,
        x_save_requirements=False,
        disable_git=True,  # git_sha comes from meta
        disable_code=True,
        save_code=False,
        disable_job_creation=True,
    )
    known = getattr(wandb.Settings, "model_fields", None)
    if known is not None:  # older wandb: keep only the settings it has
        wanted = {k: v for k, v in wanted.items() if k in known}
    else:
        wanted = {k: wanted[k] for k in ("mode", "silent", "console")}
    return wandb.Settings(**wanted)


def _plain(value: Any) -> Any:
    """JSON-able scalar for W&B/TensorBoard (numpy/torch scalars become Python numbers)."""
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)


class WandbTracker(_Guarded):
    """One W&B run per training run, files in `<run_dir>/wandb/`, offline unless W&B is reachable.

    Curves plot against `epoch` (the step metric of every series). After `start`: `mode` is what
    was chosen and `mode_reason` why, `sync_dir` holds the run's files and, for offline runs,
    `sync_command` is the exact `wandb sync` command (printed at finish when `verbose`).
    """

    name = "W&B tracker"

    def __init__(self, settings: WandbSpec | None = None, *, verbose: bool = True):
        self.settings = settings  # None: `spec.tracking.wandb` of the spec given to start()
        self.verbose = verbose
        self.run: Any = None
        self.mode: str | None = None
        self.mode_reason = ""
        self.sync_dir: Path | None = None
        self.sync_command = None
        self.startup_s: float | None = None  # start() called -> run ready to log
        self._wb = settings or WandbSpec()

    def start(self, spec: ExperimentSpec, run_dir: Path, meta: Mapping[str, Any]) -> None:
        started = time.perf_counter()
        self._wb = wb = self.settings or spec.tracking.wandb
        self.mode, self.mode_reason = resolve_wandb_mode(wb.mode)
        if self.mode == "disabled":
            return
        if wb.mode == "online" and self.mode != "online":
            warnings.warn(f"W&B: {self.mode_reason}; logging offline", TrackingWarning, stacklevel=2)
        try:
            import wandb
        except Exception as exc:
            self._fail("import wandb", exc)
            return
        config = flatten(spec_to_dict(spec))  # dotted keys: W&B's parallel coordinates use them
        config.update({k: _plain(meta[k]) for k in ("git_sha", "config_hash", "arm_hash") if k in meta})
        init = dict(
            dir=str(run_dir), project=wb.project, entity=wb.entity, group=wb.group,
            job_type=wb.job_type, tags=list(wb.tags) or None, name=wb.name or spec.name,
            notes=wb.notes, config=config,
        )
        try:
            Path(run_dir).mkdir(parents=True, exist_ok=True)
            self.run = wandb.init(settings=_wandb_settings(wandb, self.mode), **init)
        except Exception as exc:
            if self.mode != "online":
                self._fail("wandb.init", exc)
                return
            # The server answered a moment ago; record offline rather than not at all.
            warnings.warn(f"W&B online start failed ({type(exc).__name__}: {exc}); continuing offline",
                          TrackingWarning, stacklevel=2)
            self.mode, self.mode_reason = "offline", "online start failed"
            try:
                self.run = wandb.init(settings=_wandb_settings(wandb, "offline"), **init)
            except Exception as exc2:
                self._fail("wandb.init (offline fallback)", exc2)
                return
        self.active = True
        try:
            self.run.define_metric("epoch")
            self.run.define_metric("*", step_metric="epoch")
            self.sync_dir = Path(self.run.settings.sync_dir)
        except Exception as exc:
            self._fail("define_metric", exc)
            return
        if self.mode == "offline":
            self.sync_command = f"wandb sync {shlex.quote(str(self.sync_dir))}"
        self.startup_s = time.perf_counter() - started
        if self.verbose:
            where = self.run.url if self.mode == "online" else self.sync_dir
            print(f"wandb: {self.mode} run {where} ({self.mode_reason}; "
                  f"ready in {self.startup_s:.1f} s)", flush=True)

    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        if not self.active:
            return
        try:
            self.run.log({**{k: _plain(v) for k, v in metrics.items()}, "epoch": int(epoch)})
        except Exception as exc:
            self._fail(f"log_epoch(epoch={epoch})", exc)

    def log_predictions(self, epoch: int, grid: np.ndarray) -> None:
        if not self.active or epoch % self._wb.images_every:
            return
        try:
            import wandb

            image = wandb.Image(np.ascontiguousarray(grid), caption=f"epoch {epoch}: validation predictions")
            self.run.log({"predictions": image, "epoch": int(epoch)})
        except Exception as exc:
            self._fail(f"log_predictions(epoch={epoch})", exc)

    def finish(self, summary: Mapping[str, Any], best_checkpoint: Path | None) -> None:
        if self.active:
            try:
                # The record's summary: best val/dice and its epoch, test metrics, status, hashes.
                self.run.summary.update({k: _plain(v) for k, v in summary.items()})
                if best_checkpoint is not None and self._wb.log_checkpoints == "best":
                    self._log_checkpoint(Path(best_checkpoint), summary)
                failed = summary.get("status") in ("failed", "diverged", "interrupted")
                self._close(exit_code=1 if failed else 0)
                self.active = False
            except Exception as exc:
                self._fail("finish", exc)
        if self.sync_command and self.verbose:
            print(f"wandb: offline run saved; to upload it: {self.sync_command}", flush=True)

    def _log_checkpoint(self, path: Path, summary: Mapping[str, Any]) -> None:
        import wandb

        keys = ("best_epoch", "val/dice", "config_hash", "git_sha")
        artifact = wandb.Artifact(f"model-{self.run.id}", type="model",
                                  metadata={k: _plain(summary[k]) for k in keys if k in summary})
        # `immutable`: best.pt is final by now, so W&B need not stage a copy of it.
        artifact.add_file(str(path), name=path.name, policy="immutable")
        self.run.log_artifact(artifact, aliases=["best"])

    def _close(self, exit_code: int) -> None:
        """Finish the run and wait until its transaction log is complete on disk.

        `run.finish()` returns before wandb's service has written the log out (the file can
        still be empty), so reading it or syncing it right away would find records missing.
        """
        sync_file = Path(self.run.settings.sync_file)
        self.run.finish(exit_code=exit_code)
        self.run = None
        if not wait_for_wandb_log(sync_file, LOG_FLUSH_TIMEOUT_S):
            warnings.warn(f"W&B: {sync_file} was not complete {LOG_FLUSH_TIMEOUT_S:.0f} s after finish; "
                          f"wandb may still be writing it", TrackingWarning, stacklevel=3)

    def _abandon(self) -> None:
        if self.run is None:
            return
        try:
            self._close(exit_code=1)
        except Exception:
            # Its service is gone: reset wandb's connection so that later runs start a new one.
            self.run = None
            import wandb

            wandb.teardown()


# --------------------------------------------------------------------------- TensorBoard


class TensorBoardTracker(_Guarded):
    """Event files in `<run_dir>/tensorboard/`: every metric as a scalar (step = epoch), the
    prediction grid as image `predictions`, the resolved spec and the summary as text."""

    name = "TensorBoard tracker"

    def __init__(self) -> None:
        self.writer: Any = None
        self.log_dir: Path | None = None

    def start(self, spec: ExperimentSpec, run_dir: Path, meta: Mapping[str, Any]) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.log_dir = Path(run_dir) / "tensorboard"
            self.writer = SummaryWriter(log_dir=str(self.log_dir))
            self.active = True
            header = "  \n".join(f"{k}: {meta[k]}" for k in ("git_sha", "config_hash", "arm_hash") if k in meta)
            self.writer.add_text("config", f"{header}\n\n```yaml\n{spec_to_yaml(spec)}```", 0)
        except Exception as exc:
            self._fail("start", exc)

    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        if not self.active:
            return
        try:
            for key, value in metrics.items():
                value = _plain(value)
                if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(key, value, epoch)
        except Exception as exc:
            self._fail(f"log_epoch(epoch={epoch})", exc)

    def log_predictions(self, epoch: int, grid: np.ndarray) -> None:
        if not self.active:
            return
        try:
            self.writer.add_image("predictions", np.ascontiguousarray(grid), epoch, dataformats="HWC")
        except Exception as exc:
            self._fail(f"log_predictions(epoch={epoch})", exc)

    def finish(self, summary: Mapping[str, Any], best_checkpoint: Path | None) -> None:
        if not self.active:
            return
        try:
            text = json.dumps({k: _plain(v) for k, v in summary.items()}, indent=2, default=str)
            self.writer.add_text("summary", f"```json\n{text}\n```", int(summary.get("best_epoch") or 0))
            self.writer.close()  # flushes
            self.active, self.writer = False, None
        except Exception as exc:
            self._fail("finish", exc)

    def _abandon(self) -> None:
        writer, self.writer = self.writer, None
        if writer is not None:
            writer.close()


# --------------------------------------------------------------------------- combining


class MultiTracker(Tracker):
    """Forwards every call to each tracker in turn; one failing never stops the others."""

    def __init__(self, trackers: Sequence[Tracker]):
        self.trackers = list(trackers)

    @property
    def sync_command(self) -> str | None:  # type: ignore[override]
        return next((t.sync_command for t in self.trackers if t.sync_command), None)

    def _each(self, method: str, *args: Any) -> None:
        for tracker in self.trackers:
            try:
                getattr(tracker, method)(*args)
            except Exception as exc:  # a tracker broke its own contract: keep training anyway
                warnings.warn(f"{type(tracker).__name__}.{method} raised {type(exc).__name__}: {exc}",
                              TrackingWarning, stacklevel=3)

    def start(self, spec: ExperimentSpec, run_dir: Path, meta: Mapping[str, Any]) -> None:
        self._each("start", spec, run_dir, meta)

    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        self._each("log_epoch", epoch, metrics)

    def log_predictions(self, epoch: int, grid: np.ndarray) -> None:
        self._each("log_predictions", epoch, grid)

    def finish(self, summary: Mapping[str, Any], best_checkpoint: Path | None) -> None:
        self._each("finish", summary, best_checkpoint)


def build_tracker(spec: ExperimentSpec, run_dir: Path | None = None) -> Tracker:
    """The trackers `spec.tracking` asks for: W&B unless `mode: disabled`, TensorBoard if set.

    Nothing is imported or contacted here; `start` does that. `run_dir` is accepted for the
    contract's signature: every tracker writes inside the run_dir given to `start`.
    """
    trackers: list[Tracker] = []
    if spec.tracking.wandb.mode != "disabled":
        trackers.append(WandbTracker())
    if spec.tracking.tensorboard:
        trackers.append(TensorBoardTracker())
    if not trackers:
        return Tracker()
    return trackers[0] if len(trackers) == 1 else MultiTracker(trackers)


# --------------------------------------------------------------------------- reading W&B's log

_LOG_BLOCK = 32768
_LOG_HEADER = struct.Struct("<4sHB")  # ident b":W&B", magic 0xBEE1, version
_RECORD_HEADER = struct.Struct("<IHB")  # crc32 of (type, data), length, type
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def find_wandb_log(path: str | Path) -> Path:
    """The `run-*.wandb` transaction log for a run folder, a `wandb/*-run-*` folder or the file."""
    path = Path(path)
    if path.is_file():
        return path
    candidates = sorted(path.glob("run-*.wandb")) or sorted(path.glob("wandb/*-run-*/run-*.wandb"))
    if not candidates:
        raise TrackingError(f"{path}: no W&B transaction log (expected wandb/offline-run-*/run-*.wandb)")
    return max(candidates, key=lambda p: p.parent.name)  # latest run folder (timestamped names)


def read_wandb_records(path: str | Path) -> Iterator[Any]:
    """Yield each `wandb_internal_pb2.Record` of a `.wandb` transaction log, in order.

    The file is a LevelDB-style log: a 7-byte header, then 32 KiB blocks of records (7-byte
    header: crc32, length, type FULL/FIRST/MIDDLE/LAST). A torn tail (a killed writer) ends
    the scan; a checksum mismatch before it raises `TrackingError`.
    """
    from wandb.proto import wandb_internal_pb2

    path = find_wandb_log(path)
    data = path.read_bytes()
    if len(data) < _LOG_HEADER.size:
        raise TrackingError(f"{path}: too short to be a W&B transaction log")
    ident, magic, version = _LOG_HEADER.unpack_from(data)
    if ident != b":W&B" or magic != 0xBEE1:
        raise TrackingError(f"{path}: not a W&B transaction log (header {data[:7]!r})")
    pos, pending = _LOG_HEADER.size, bytearray()
    while pos + _RECORD_HEADER.size <= len(data):
        left_in_block = _LOG_BLOCK - pos % _LOG_BLOCK
        if left_in_block < _RECORD_HEADER.size:  # block trailer: zero padding
            pos += left_in_block
            continue
        crc, length, kind = _RECORD_HEADER.unpack_from(data, pos)
        if kind == 0 and length == 0:  # zero-filled rest of a block
            pos += left_in_block
            continue
        payload = data[pos + _RECORD_HEADER.size : pos + _RECORD_HEADER.size + length]
        if len(payload) < length:
            return  # torn tail
        if zlib.crc32(payload, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF != crc:
            raise TrackingError(f"{path}: corrupt record at byte {pos} (checksum mismatch)")
        pos += _RECORD_HEADER.size + length
        if kind == _FULL:
            chunk = bytes(payload)
        elif kind == _FIRST:
            pending = bytearray(payload)
            continue
        elif kind == _MIDDLE:
            pending += payload
            continue
        elif kind == _LAST:
            chunk, pending = bytes(pending + payload), bytearray()
        else:
            raise TrackingError(f"{path}: unknown record type {kind} at byte {pos}")
        record = wandb_internal_pb2.Record()
        record.ParseFromString(chunk)
        yield record


def wait_for_wandb_log(path: str | Path, timeout_s: float = LOG_FLUSH_TIMEOUT_S) -> bool:
    """Wait until a finished run's transaction log ends with its exit record; False on timeout."""
    deadline = time.perf_counter() + timeout_s
    while True:
        try:
            if any(record.HasField("exit") for record in read_wandb_records(path)):
                return True
        except (TrackingError, OSError):  # not created or not written out yet
            pass
        if time.perf_counter() >= deadline:
            return False
        time.sleep(0.05)


@dataclass(frozen=True)
class WandbLog:
    """What a W&B transaction log holds, decoded from JSON: the run's identity and config,
    every `log()` row in order (nested keys as dicts), and the final summary."""

    path: Path
    run: dict[str, Any]  # run_id, project, entity, group, job_type, display_name, notes, tags
    config: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    artifacts: list[dict[str, Any]] = field(default_factory=list)  # name, type, aliases, files
    exit_code: int | None = None


def _set_nested(tree: dict[str, Any], keys: Sequence[str], value: Any) -> None:
    for key in keys[:-1]:
        tree = tree.setdefault(key, {})
    tree[keys[-1]] = value


def _item_keys(item: Any) -> list[str]:
    return list(item.nested_key) if item.nested_key else [item.key]


def load_wandb_log(path: str | Path) -> WandbLog:
    """Decode a run's `.wandb` transaction log (see `find_wandb_log` for what `path` may be)."""
    path = find_wandb_log(path)
    run: dict[str, Any] = {}
    config: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    artifacts: list[dict[str, Any]] = []
    exit_code = None
    for record in read_wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run = {"run_id": r.run_id, "project": r.project, "entity": r.entity, "group": r.run_group,
                   "job_type": r.job_type, "display_name": r.display_name, "notes": r.notes,
                   "tags": list(r.tags)}
            for item in r.config.update:
                config[item.key] = json.loads(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                _set_nested(config, _item_keys(item), json.loads(item.value_json))
            for item in record.config.remove:
                config.pop(item.key, None)
        elif kind == "history":
            row: dict[str, Any] = {}
            for item in record.history.item:
                _set_nested(row, _item_keys(item), json.loads(item.value_json))
            history.append(row)
        elif kind == "summary":
            for item in record.summary.update:
                _set_nested(summary, _item_keys(item), json.loads(item.value_json))
        elif kind == "artifact":
            a = record.artifact
            artifacts.append({"name": a.name, "type": a.type, "aliases": list(a.aliases),
                              "files": [e.path for e in a.manifest.contents]})
        elif kind == "exit":
            exit_code = record.exit.exit_code
    config.pop("_wandb", None)
    return WandbLog(path, run, config, history, summary, artifacts, exit_code)
