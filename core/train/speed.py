"""Speed settings decided by measurement: `train.channels_last: auto` becomes channels_last or
NCHW by a short probe of the actual model, image size, batch and threads on the actual device
(both memory formats, their training steps interleaved, medians compared), cached per machine in
the user cache. An explicit `true` or `false` is never overridden; a sweep resolves `auto` once
before its workers start and every trial uses that choice; a resumed run keeps the choice it was
started with. Precision is not decided by timing: it changes the numbers, so it stays part of a
config's identity.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import statistics
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import SegsweepError
from ..record import atomic_write_text
from ..spec import ExperimentSpec
from .device import cpu_info

log = logging.getLogger(__name__)

PROBE_WARMUP = 2  # steps per format before timing
PROBE_STEPS = 5  # timed steps per format, interleaved
CACHE_NAME = "speed_probes.json"
probes_run = 0  # probes this process ran (what the tests count)
_from_sweep: dict[str, "SpeedChoice"] = {}  # a sweep's choices in this worker, by `sweep_key`


@dataclass(frozen=True)
class SpeedChoice:
    """How a run lays out its tensors, and why."""

    channels_last: bool
    source: str  # "spec" (set explicitly), "probe", "probe-failed" (NCHW), "cache", "sweep", "checkpoint"
    ratio: float | None = None  # NCHW step time / channels_last step time: above 1, channels_last is faster
    key: str = ""  # the probe cache key ('' when set explicitly)

    def summary(self) -> dict[str, Any]:
        """What summary.json records of it."""
        return {"channels_last": self.channels_last, "channels_last_source": self.source,
                "channels_last_ratio": None if self.ratio is None else round(self.ratio, 4)}

    @classmethod
    def from_dict(cls, tree: Any) -> "SpeedChoice | None":
        try:
            return cls(bool(tree["channels_last"]), str(tree["source"]), tree.get("ratio"), str(tree.get("key", "")))
        except (KeyError, TypeError):
            return None


def cache_path() -> Path:
    """The probe cache: one JSON object, probe key -> choice, in the user cache."""
    from ..data.cache import default_user_cache

    return default_user_cache() / CACHE_NAME


def cpu_identity() -> dict[str, str]:
    """The machine as far as speed goes: CPU model and instruction-set flags, torch's build."""
    info = cpu_info()
    return {"cpu": info.model, "flags": hashlib.sha256(info.flags.encode()).hexdigest()[:12],
            "torch": torch.__version__, "capability": torch.backends.cpu.get_cpu_capability()}


def architecture(spec: ExperimentSpec) -> dict[str, Any]:
    """The model settings that decide its layers' shapes (not its init, dropout rate or head), so the
    arms of an ablation over those share one probe."""
    m = spec.model
    return {"name": m.name, "base_channels": m.base_channels, "batchnorm": m.batchnorm, "decoder": m.decoder}


def probe_key(spec: ExperimentSpec, device: torch.device, precision: str, threads: int) -> str:
    """What a probe's answer depends on: the machine, the device, the model, size, batch, threads, precision."""
    what = {**cpu_identity(), "device": str(device),
            "cuda": torch.cuda.get_device_name(device) if device.type == "cuda" else "",
            "model": architecture(spec), "size": spec.data.image_size, "batch": spec.train.batch_size,
            "threads": threads, "precision": precision}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def sweep_key(spec: ExperimentSpec) -> str:
    """What a sweep's choice is for, on any machine: the model, size, batch and precision setting."""
    what = {"model": architecture(spec), "size": spec.data.image_size, "batch": spec.train.batch_size,
            "precision": spec.train.precision}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def install_sweep_choices(choices: dict[str, Any]) -> None:
    """Make a sweep's choices (`sweep_key` -> SpeedChoice as a dict) the ones this process uses."""
    _from_sweep.clear()
    for key, tree in choices.items():
        found = SpeedChoice.from_dict(tree)
        if found is not None:
            _from_sweep[key] = SpeedChoice(found.channels_last, "sweep", found.ratio, found.key)


def resolve_speed(spec: ExperimentSpec, device: torch.device, precision: str,
                  given: SpeedChoice | None = None) -> SpeedChoice:
    """The run's choice: the spec's when explicit, else the one given (a checkpoint's), else the
    sweep's, else the cached probe for this key, else a new probe (cached)."""
    setting = spec.train.channels_last
    if setting != "auto":
        return SpeedChoice(bool(setting), "spec")
    if given is not None:
        return given
    if sweep_key(spec) in _from_sweep:
        return _from_sweep[sweep_key(spec)]
    threads = torch.get_num_threads()
    key = probe_key(spec, device, precision, threads)
    path = cache_path()
    cached = _read_cache(path)
    if key in cached:
        found = SpeedChoice.from_dict(cached[key])
        if found is not None:
            return SpeedChoice(found.channels_last, "cache", found.ratio, key)
    try:
        ratio = probe_ratio(spec, device, precision)
    except (RuntimeError, ValueError) as exc:  # out of memory, a shape the model refuses: the run says so itself
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        log.warning(f"warning: train.channels_last: auto: the speed probe failed ({reason}); using NCHW")
        return SpeedChoice(False, "probe-failed")
    choice = SpeedChoice(ratio > 1.0, "probe", ratio, key)
    entry = {**asdict(choice), "source": "probe", "measured": time.time()}
    _write_cache(path, {**_read_cache(path, quiet=True), key: entry})  # re-read: keep what others wrote meanwhile
    return choice


def sweep_choices(specs: list[ExperimentSpec], threads: int | None, record: Path) -> dict[str, dict]:
    """A sweep's `auto` settings, decided once: per distinct `sweep_key` of its specs, probed with
    the threads its trials train with (`train.threads`, else the workers' `threads`), or read
    from this machine's cache. `record` (in the sweep folder) makes
    the first decision final: several SLURM tasks starting together may each probe, but the first
    to link its answer into place wins and every one of them uses that answer."""
    if record.is_file():
        found = _read_record(record)
        if found is not None:
            return found
    choices: dict[str, dict] = {}
    before = torch.get_num_threads()
    try:
        for spec in specs:
            key = sweep_key(spec)
            if spec.train.channels_last == "auto" and key not in choices:
                from .device import resolve_device, resolve_precision

                torch.set_num_threads(spec.train.threads or threads or before)  # as the trials will train
                device = resolve_device(spec.train.device)
                choice = resolve_speed(spec, device, resolve_precision(spec.train.precision, device))
                choices[key] = {"channels_last": choice.channels_last, "source": choice.source,
                                "ratio": choice.ratio, "key": choice.key}
    finally:
        torch.set_num_threads(before)
    record.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(record)
    tmp.write_text(json.dumps(choices, indent=1, sort_keys=True), encoding="utf-8")
    try:
        os.link(tmp, record)  # atomic, also on NFS: exactly one writer succeeds
    except FileExistsError:
        pass
    except OSError:  # a filesystem without hard links: exclusive creation decides instead
        try:
            with open(record, "x", encoding="utf-8") as fh:
                fh.write(tmp.read_text(encoding="utf-8"))
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)
    return _read_record(record) or choices


def _temporary(path: Path) -> Path:
    """A temporary name beside `path` that no other process, on this host or another, uses."""
    return path.with_name(f".{path.name}.tmp-{platform.node()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _read_record(path: Path) -> dict[str, dict] | None:
    try:
        tree = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return tree if isinstance(tree, dict) else None


def cached_probes() -> dict[str, dict]:
    """The probe cache's entries (what `segsweep cache list` shows); {} when absent or unreadable."""
    path = cache_path()
    return {k: v for k, v in _read_cache(path).items() if isinstance(v, dict)} if path.is_file() else {}


def clear_probes(older_than_days: float | None = None) -> int:
    """Remove every cached probe (None) or those measured `older_than_days` ago or earlier; returns how many."""
    path = cache_path()
    cached = _read_cache(path) if path.is_file() else {}
    if not cached:
        path.unlink(missing_ok=True)
        return 0
    cutoff = time.time() - 86400 * (older_than_days or 0.0)
    old = {k for k, v in cached.items() if older_than_days is None or not isinstance(v, dict)
           or float(v.get("measured", 0)) <= cutoff}
    kept = {k: v for k, v in cached.items() if k not in old}
    if kept:
        _write_cache(path, kept)
    else:
        path.unlink(missing_ok=True)
    return len(old)


def _read_cache(path: Path, quiet: bool = False) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        tree = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(tree, dict):
            raise ValueError("not a JSON object")
        return tree
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        if not quiet:
            log.warning(f"warning: {path}: unreadable speed-probe cache ({type(exc).__name__}: {exc}); probing again")
        return {}


def _write_cache(path: Path, tree: dict[str, Any]) -> None:
    try:
        atomic_write_text(path, json.dumps(tree, indent=1, sort_keys=True))
    except (OSError, SegsweepError) as exc:  # unwritable, or a full disk: the run goes on, unprobed next time
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        log.warning(f"warning: {path}: cannot write the speed-probe cache ({reason}); the next run "
                    "probes again")


def probe_ratio(spec: ExperimentSpec, device: torch.device, precision: str) -> float:
    """NCHW step time / channels_last step time, medians of interleaved training steps on random
    data of the run's batch and size (the model's own init; the optimiser the spec names)."""
    global probes_run
    from ..losses import build_loss
    from ..models import build_model
    from ..optim import build_optimizer
    from .device import autocast
    from .memory import images_per_step

    probes_run += 1
    state = torch.get_rng_state()
    try:
        generator = torch.Generator().manual_seed(0)
        # a batch beyond the training split is the split; at least 2 (BatchNorm trains on no fewer)
        n, size = min(spec.train.batch_size, max(2, images_per_step(spec))), spec.data.image_size
        images = torch.randn(n, 3, size, size, generator=generator).to(device)
        masks = (torch.rand(n, size, size, generator=generator) > 0.5).to(torch.uint8).to(device)
        loss_fn = build_loss(spec.loss, spec.model.head)
        steps = {}
        for fmt in (torch.contiguous_format, torch.channels_last):
            torch.manual_seed(0)
            model = build_model(spec.model).to(device).to(memory_format=fmt).train()
            optimizer = build_optimizer(spec, model.parameters())
            batch = images.contiguous(memory_format=fmt)

            def step(model=model, optimizer=optimizer, batch=batch) -> float:
                start = time.perf_counter()
                with autocast(device, precision):
                    output = model(batch)
                loss = loss_fn(output.float(), masks)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                return time.perf_counter() - start

            steps[fmt] = step
        times: dict[Any, list[float]] = {fmt: [] for fmt in steps}
        for i in range(PROBE_WARMUP + PROBE_STEPS):
            for fmt in (list(steps) if i % 2 == 0 else list(reversed(steps))):  # interleaved, order alternating
                elapsed = steps[fmt]()
                if i >= PROBE_WARMUP:
                    times[fmt].append(elapsed)
        nchw, cl = (statistics.median(times[f]) for f in (torch.contiguous_format, torch.channels_last))
        return nchw / cl if cl > 0 else math.inf
    finally:
        torch.set_rng_state(state)
