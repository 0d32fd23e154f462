"""`WandbTracker`: one W&B run per training run, offline unless W&B is reachable.

`wandb` is imported only when a run starts, so `import segsweep.tracking` stays light. The run
id is kept in `<run_dir>/wandb_id`: a resumed run folder continues the same W&B run. An offline
run turns W&B's own telemetry off, so it opens no connection.
"""
from __future__ import annotations

import logging
import os
import shlex
import time
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..record import atomic_write_text
from ..spec import ExperimentSpec, WandbSpec, flatten, spec_to_dict
from .base import GuardedTracker, TrackingWarning, plain
from .offline_log import LOG_FLUSH_TIMEOUT_S, wait_for_wandb_log
from .wandb_mode import resolve_wandb_mode

log = logging.getLogger(__name__)

RUN_ID_FILE = "wandb_id"  # in the run folder: the W&B run that `--resume` continues
INIT_TIMEOUT_S = 30.0  # wandb.init gives up after this (online); offline starts in < 1 s
FINISH_TIMEOUT_S = 120.0  # an online run stops waiting for uploads; `wandb sync` sends the rest


def _wandb_settings(wandb: Any, mode: str) -> Any:
    """Settings for a fast start that never prompts and never captures the console."""
    wanted = dict(
        mode=mode,
        silent=True,  # we log the one line that matters (where the run is, how to sync)
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


def _offline_quiet() -> None:
    """No W&B telemetry from a process that records offline: set before `import wandb`.

    wandb 0.31's OpenTelemetry proxy takes its server from the process-wide settings, not the
    run's, so an offline run still posts its counters to api.wandb.ai from a background thread
    (at exit at the latest); wandb < 0.20 reads the same variable for its Sentry reports. A
    value the user set (WANDB_ERROR_REPORTING=true) is kept.
    """
    os.environ.setdefault("WANDB_ERROR_REPORTING", "false")


def _telemetry_off(wandb: Any) -> None:
    """Turn the OpenTelemetry proxy off for the process (wandb >= 0.31; older ones have none),
    unless the user asked for W&B's error reporting."""
    if wandb.env.error_reporting_enabled():
        return
    try:
        from wandb.analytics.opentelemetry import opentelemetry_proxy
    except ImportError:
        return
    opentelemetry_proxy.disable()


def read_run_id(run_dir: str | Path) -> str | None:
    """The W&B run id a run folder keeps in `wandb_id` (None before its first W&B start)."""
    try:
        return (Path(run_dir) / RUN_ID_FILE).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def offline_pieces(run_dir: str | Path, run_id: str) -> list[Path]:
    """The offline folders of one W&B run in a run folder, oldest first: one per session
    (a resumed run adds one; their names start with the session's start time)."""
    return sorted(Path(run_dir).glob(f"wandb/offline-run-*-{run_id}*"), key=lambda p: p.name)


class WandbTracker(GuardedTracker):
    """One W&B run per training run, files in `<run_dir>/wandb/`, offline unless W&B is reachable.

    Curves plot against `epoch` (the step metric of every series). After `start`: `mode` is what
    was chosen and `mode_reason` why, `sync_dir` holds the run's files and, for offline runs,
    `sync_command` is the exact `wandb sync` command (logged at finish when `verbose`).
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
        if self.mode != "online":
            _offline_quiet()
        try:
            import wandb

            if self.mode != "online":
                _telemetry_off(wandb)
        except Exception as exc:
            self._fail("import wandb", exc)
            return
        config = flatten(spec_to_dict(spec))  # dotted keys: W&B's parallel coordinates use them
        config.update({k: plain(meta[k]) for k in ("git_sha", "config_hash", "arm_hash") if k in meta})
        saved_id = read_run_id(run_dir)
        init = dict(
            dir=str(run_dir), project=wb.project, entity=wb.entity, group=wb.group,
            job_type=wb.job_type, tags=list(wb.tags) or None, name=wb.name or spec.name,
            notes=wb.notes, config=config,
            # A resumed run folder continues its W&B run (online: the same run on the server).
            **({"id": saved_id, "resume": "allow"} if saved_id else {}),
        )
        if not self._init(wandb, run_dir, init):
            return
        self.active = True
        try:
            self.run.define_metric("epoch")
            self.run.define_metric("*", step_metric="epoch")
            self.sync_dir = Path(self.run.settings.sync_dir)
            if saved_id != self.run.id:
                atomic_write_text(Path(run_dir) / RUN_ID_FILE, self.run.id + "\n")
        except Exception as exc:
            self._fail("define_metric", exc)
            return
        if self.mode == "offline":
            pieces = offline_pieces(run_dir, self.run.id) or [self.sync_dir]
            self.sync_command = "wandb sync " + " ".join(shlex.quote(str(p)) for p in pieces)
        self.startup_s = time.perf_counter() - started
        if self.verbose:
            where = self.run.url if self.mode == "online" else self.sync_dir
            resumed = f", continuing run {saved_id}" if saved_id else ""
            log.info(f"wandb: {self.mode} run {where} ({self.mode_reason}{resumed}; "
                     f"ready in {self.startup_s:.1f} s)")

    def _init(self, wandb: Any, run_dir: Path, init: dict[str, Any]) -> bool:
        """`wandb.init`; an online start that fails is retried offline. False: disabled."""
        try:
            Path(run_dir).mkdir(parents=True, exist_ok=True)
            self.run = wandb.init(settings=_wandb_settings(wandb, self.mode), **init)
            return True
        except Exception as exc:
            if self.mode != "online":
                self._fail("wandb.init", exc)
                return False
            # The server answered a moment ago; record offline rather than not at all.
            warnings.warn(f"W&B online start failed ({type(exc).__name__}: {exc}); continuing offline",
                          TrackingWarning, stacklevel=3)
            self.mode, self.mode_reason = "offline", "online start failed"
        try:
            _telemetry_off(wandb)
            self.run = wandb.init(settings=_wandb_settings(wandb, "offline"), **init)
            return True
        except Exception as exc2:
            self._fail("wandb.init (offline fallback)", exc2)
            return False

    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        if not self.active:
            return
        try:
            self.run.log({**{k: plain(v) for k, v in metrics.items()}, "epoch": int(epoch)})
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
                self.run.summary.update({k: plain(v) for k, v in summary.items()})
                if best_checkpoint is not None and self._wb.log_checkpoints == "best":
                    self._log_checkpoint(Path(best_checkpoint), summary)
                failed = summary.get("status") in ("failed", "diverged", "interrupted")
                self._close(exit_code=1 if failed else 0)
                self.active = False
            except Exception as exc:
                self._fail("finish", exc)
        if self.sync_command and self.verbose:
            log.info(f"wandb: offline run saved; to upload it: {self.sync_command}")

    def _log_checkpoint(self, path: Path, summary: Mapping[str, Any]) -> None:
        import wandb

        keys = ("best_epoch", "val/dice", "config_hash", "git_sha")
        artifact = wandb.Artifact(f"model-{self.run.id}", type="model",
                                  metadata={k: plain(summary[k]) for k in keys if k in summary})
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
