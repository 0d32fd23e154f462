"""Reading W&B's offline transaction log (`run-*.wandb`) without wandb's service.

`load_wandb_log` decodes what a run logged (config, history, summary, artifacts), for tests and
for checking that W&B mirrors the local record; `wait_for_wandb_log` waits until it is complete.
"""
from __future__ import annotations

import json
import struct
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..errors import TrackingError

LOG_FLUSH_TIMEOUT_S = 15.0  # finish() waits at most this long for the `.wandb` log to be complete

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
