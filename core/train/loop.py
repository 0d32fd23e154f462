"""The one training loop: `fit(spec, run_dir, tracker, on_epoch_end) -> RunResult`.

It reads top to bottom: seed, build, loop over epochs (train, evaluate, callbacks), test the
best checkpoint, return. What reacts to training (the record, checkpoints, trackers, early
stopping, the time budget, the sweep hook) is a callback (`callbacks.py`); when to stop is the
stop controller's (`stop.py`); what resume needs is the `TrainState`'s (`state.py`). Sweep
drivers hook in through `on_epoch_end(epoch, metrics)` and may raise `StopTraining` (pruning,
early stopping); nothing else reaches inside.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from ..checkpoint import load_checkpoint, load_model_state
from ..data import build_data
from ..distributed import broadcast_module, main_value
from ..errors import CheckpointError
from ..losses import build_loss
from ..metrics import SegmentationMeter
from ..models import build_model, predict_batch
from ..optim import LrSchedule
from ..schema import TEST_KEYS, TESTED_STATUSES
from ..spec import ExperimentSpec, spec_from_dict
from .callbacks import (
    Callback, CallbackList, Checkpoints, EarlyStopping, EpochHook, RunRecord, SweepHook, TimeBudget, Trackers,
)
from .device import autocast, resolve_device, resolve_precision, unwrap
from .results import Diverged, EvalResult, RunResult, StopTraining  # noqa: F401  (StopTraining: for hooks)
from .seeding import derive_seed, seed_everything
from .speed import SpeedChoice
from .state import EpochProgress, TrainState
from .stop import StopController

__all__ = ["EvalResult", "RunResult", "StopTraining", "evaluate", "evaluate_checkpoint", "fit", "load_run_spec",
           "train_one_epoch"]


def fit(
    spec: ExperimentSpec,
    run_dir: str | Path,
    tracker: Any = None,
    on_epoch_end: EpochHook | None = None,
    *,
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
) -> RunResult:
    """Train `spec` into `run_dir`, keep the best checkpoint, test it, and return the result.

    Checkpoints: `last.pt` after every epoch, and also when SIGINT/SIGTERM stops the run
    mid-epoch (then with the batches done, running loss and RNG states). `resume=True`
    continues from `run_dir/checkpoints/last.pt`: weights, optimiser, LR schedule, gradient
    scaler, epoch, global step and position in the epoch, early-stopping, top-k and metrics
    history. Data order, augmentation and dropout derive from (seed, epoch), so with
    `train.deterministic` on CPU a resumed run's metrics.csv equals an uninterrupted one's in
    every column but the wall-clock `epoch_s` and `img_per_s`. After a SIGKILL the run resumes
    from the last saved point (end of an epoch, or an interruption), redoing what came after.

    summary.json is written once, when the run ends, with status completed, failed, diverged,
    interrupted or pruned (a Python-level error is `failed`, then re-raised). A run folder
    without summary.json is still running or was killed (SIGKILL, power loss): resume it.
    `callbacks` run after the built-in ones (see `Callback` for the hooks).
    """
    run_dir = Path(run_dir)
    started = time.perf_counter()
    last_path = run_dir / "checkpoints" / "last.pt"
    payload = load_checkpoint(last_path) if resume else None
    state = TrainState.build(spec, run_dir, started, resumed_speed(payload))
    budget = TimeBudget(spec.train.time_budget_s, state.elapsed)
    stop = StopController(state.world, budget)
    record = RunRecord()
    state.callbacks = parts = CallbackList([
        budget, Checkpoints(state), record, Trackers(tracker), SweepHook(on_epoch_end, stop),
        EarlyStopping(spec.train.early_stopping_patience, stop), stop, *callbacks,
    ])
    if payload is not None:
        state.load_state_dict(payload, last_path)
    state.wrap_model()
    with stop:
        stop.on_exit_now = lambda: finish(state, record, "interrupted", "a second signal: exited at once", quick=True)
        try:
            parts.on_fit_start(state)
            status, error = run_epochs(state, parts, stop)
            parts.on_train_end(state)
            status = test_best(state, parts, stop, status)
            signum = stop.signum() if status == "interrupted" else None
        except BaseException as exc:  # recorded (failed, or interrupted by KeyboardInterrupt), then re-raised
            stop.on_exit_now = None
            if isinstance(exc, Exception):
                status, error = "failed", f"{type(exc).__name__}: {exc}"
            else:
                status, error = "interrupted", type(exc).__name__
            finish(state, parts, status, error, quick=True)
            raise
        stop.on_exit_now = None  # a signal from here on changes nothing: the run has ended
        summary = finish(state, parts, status, error)
    return RunResult(status=status, run_dir=run_dir, best_epoch=state.best["epoch"], metrics=summary, signal=signum)


def run_epochs(state: TrainState, callbacks: Callback, stop: StopController) -> tuple[str, str | None]:
    """The epochs, until the last, a stop or a signal; returns (status, error) so far."""
    status, error = "completed", None
    try:
        for epoch in range(state.epoch + 1, state.spec.train.epochs + 1):
            if stop.stop is not None or stop.agreed()[0]:
                break
            row = train_and_validate(state, callbacks, stop, epoch)
            if row is None:  # a signal stopped the epoch part-way: saved, resumable
                break
            state.end_epoch(row)
            callbacks.on_epoch_end(state, row)
            stop.decide()
            callbacks.on_epoch_decided(state, row)
    except Diverged as exc:
        status, error = "diverged", str(exc)
        state.summary.update({"diverged_epoch": exc.epoch, "diverged_step": exc.step})
    if stop.stop is not None:
        status = stop.stop[0]
        if stop.stop[1]:
            state.summary["stopped_early"] = stop.stop[1]
    elif stop.agreed()[0] and status == "completed":
        status = "interrupted"
    return status, error


def train_and_validate(state: TrainState, callbacks: Callback, stop: StopController,
                       epoch: int) -> dict[str, float] | None:
    """One epoch's training pass and validation: its metrics.csv row, or None when a signal
    stopped it (then last.pt keeps the batches done)."""
    spec = state.spec
    # Data order, augmentation and dropout all derive from (seed, epoch): resumable.
    seed_everything(derive_seed(spec.seed, epoch))
    state.data.train_sampler.set_epoch(epoch)
    loader = state.epoch_loader()  # continues an epoch that a signal stopped part-way
    progress = state.progress
    t0 = time.perf_counter() - progress.train_s
    callbacks.on_train_epoch_start(state, epoch)
    train_loss, seen, state.step = train_one_epoch(
        state.train_model, loader, state.loss_fn, state.optimizer, state.schedule, state.scaler, epoch=epoch,
        step=state.step, device=state.device, precision=state.precision, channels_last=state.channels_last,
        grad_clip=spec.train.grad_clip, should_stop=stop.should_stop, progress=progress,
        on_batch=lambda: callbacks.on_train_batch_start(state),
    )
    callbacks.on_train_epoch_end(state, epoch)
    progress.train_s = time.perf_counter() - t0
    if not stop.agreed()[0]:
        val = _evaluate(state, callbacks, stop, "val", f"epoch {epoch} val")
    if stop.agreed()[0]:
        callbacks.on_interrupt(state, epoch)
        return None
    if state.world > 1:  # over every rank's images, not rank 0's shard alone
        loss_sum, seen_all = _all_reduce_sum(torch.tensor(train_loss * seen, dtype=torch.float64), seen, state.device)
        train_loss = float(loss_sum) / max(1, seen_all)
    return {"epoch": epoch, "train/loss": train_loss, **val.metrics("val"),
            "lr": state.optimizer.param_groups[0]["lr"], "epoch_s": time.perf_counter() - t0,
            "img_per_s": seen * state.world / max(progress.train_s, 1e-9)}


def _evaluate(state: TrainState, callbacks: Callback, stop: StopController, split: str, desc: str) -> EvalResult:
    callbacks.on_eval_start(state, split)
    result = evaluate(state.train_model, getattr(state.data, split), state.loss_fn,
                      ids=state.data.datasets[split].ids, desc=desc, should_stop=stop.interrupted,
                      **state.eval_kwargs())
    callbacks.on_eval_end(state, split)
    return result


def test_best(state: TrainState, callbacks: Callback, stop: StopController, status: str) -> str:
    """Test the best checkpoint (chosen on validation by `checkpoint.monitor`) once, unless the
    spec keeps the test split out (a study tuning on val); returns the status (interrupted if a
    signal cut it short). When `checkpoint.floor` kept no epoch, the last epoch's weights are
    tested instead and summary.json says so (`floor_passed: false`).

    Rank 0 decides and loads best.pt; the other ranks get its weights (no shared disk needed).
    """
    best_path = state.run_dir / "checkpoints" / "best.pt"
    below_floor = state.spec.checkpoint.floor is not None and state.best["epoch"] == 0 and state.epoch > 0
    if state.spec.checkpoint.floor is not None:
        state.summary["floor_passed"] = not below_floor
    testable = best_path.exists() or (below_floor and status != "diverged")
    if not main_value(state.spec.train.final_test and status in TESTED_STATUSES and testable):
        return status
    # The weights in memory are best.pt's when the best epoch is the last one saved and no step
    # ran after it (a divergence stops part-way into an epoch): no reload then. Below the floor
    # they are the last epoch's, which are what is tested.
    if not below_floor and not (status != "diverged" and state.best["epoch"] == state.epoch and state.epoch > 0):
        if state.is_main:
            load_model_state(unwrap(state.model), load_checkpoint(best_path)["model"], best_path)
        broadcast_module(unwrap(state.model))
    state.summary["tested_epoch"] = state.epoch if below_floor else state.best["epoch"]
    test = _evaluate(state, callbacks, stop, "test", "test")
    if stop.agreed()[0]:  # resuming will test again
        return "interrupted"
    state.summary.update({k: v for k, v in test.metrics("test").items() if k != "test/loss"})
    callbacks.on_test_end(state, test)
    return status


def finish(state: TrainState, callbacks: Callback, status: str, error: str | None,
           quick: bool = False) -> dict[str, Any]:
    """The summary.json contents; the callbacks write it (and curves.png, the tracker's finish).

    `quick` is for runs ending in an error or a second signal: plots are skipped and a failure
    to write (a full disk) is reported on stderr rather than hiding the original error.
    """
    summary = {**state.summary}
    # val/dice (and the monitored metric) describe the weights tested: the best epoch kept, or
    # the last one when checkpoint.floor kept none.
    tested = state.best_row() or (state.history[-1] if summary.get("floor_passed") is False and state.history else None)
    summary.update({
        "status": status, "best_epoch": state.best["epoch"],
        "val/dice": tested["val/dice"] if tested else float("nan"),
        "epochs_run": len(state.history), "wall_s": round(state.elapsed(), 3),
    })
    monitor = state.spec.checkpoint.monitor
    if monitor != "val/dice":
        summary["checkpoint_monitor"] = monitor
        summary[monitor] = tested[monitor] if tested else float("nan")
    if state.spec.checkpoint.floor is not None:
        summary["checkpoint_floor"] = state.spec.checkpoint.floor
    for key in TEST_KEYS:
        summary.setdefault(key, float("nan"))
    if error:
        summary["error"] = error
    callbacks.on_fit_end(state, summary, quick)
    return summary


# --------------------------------------------------------------------------- the passes


def _progress(iterable: Any, desc: str, total: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True,
                disable=not sys.stderr.isatty())


def train_one_epoch(
    model: nn.Module, loader: Any, loss_fn: nn.Module, optimizer: torch.optim.Optimizer,
    schedule: LrSchedule, scaler: torch.amp.GradScaler | None, *, epoch: int, step: int,
    device: torch.device, precision: str, channels_last: bool, grad_clip: float | None,
    should_stop: Callable[[], bool], progress: EpochProgress | None = None,
    on_batch: Callable[[], None] | None = None,
) -> tuple[float, int, int]:
    """One pass over the training loader. Returns (mean loss, images seen, global step).

    `progress` (updated in place) carries the running totals, so an epoch interrupted after
    some batches continues from them when `loader` yields only the remaining batches.
    `on_batch` is called as each batch arrives, before its step (the benchmark's timer).
    """
    model.train()
    progress = progress if progress is not None else EpochProgress()
    total, images = torch.tensor(progress.loss_sum, dtype=torch.float64), progress.images
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    for batch_images, masks, _ in _progress(loader, f"epoch {epoch} train", len(loader)):
        if on_batch is not None:
            on_batch()
        schedule.apply(optimizer, step)  # lr (and onecycle's momentum) for this step
        batch_images = batch_images.to(device, non_blocking=True, memory_format=memory_format)
        masks = masks.to(device, non_blocking=True)
        with autocast(device, precision):
            output = model(batch_images)  # (B, 1, H, W)
        loss = loss_fn(output.float(), masks)
        if not torch.isfinite(loss):
            raise Diverged(epoch, step, float(loss.detach()))
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        total += loss.detach().double() * len(batch_images)
        images += len(batch_images)
        step += 1
        progress.batches += 1
        if should_stop():
            break
    progress.loss_sum, progress.images = float(total), images
    return float(total) / max(1, images), images, step


@torch.inference_mode()
def evaluate(
    model: nn.Module, loader: Any, loss_fn: nn.Module, *, head: str, device: torch.device,
    precision: str, channels_last: bool, ids: list[str], desc: str = "eval",
    should_stop: Callable[[], bool] | None = None, tta: str = "none",
) -> EvalResult:
    """Loss and Dice/IoU over a whole split (no training augmentation; `tta` as in
    `predict_batch`). Reduced over ranks under DDP.

    `should_stop` is checked after each batch; when it says stop, the result is partial and
    the caller must discard it.
    """
    model.eval()
    meter = SegmentationMeter()
    loss_sum, count = torch.zeros((), dtype=torch.float64), 0
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    for images, masks, index in _progress(loader, desc, len(loader)):
        images = images.to(device, non_blocking=True, memory_format=memory_format)
        masks = masks.to(device, non_blocking=True)
        with autocast(device, precision):
            output = predict_batch(model, images, tta)
        output = output.float()
        loss_sum += loss_fn(output, masks).double() * len(images)
        count += len(images)
        meter.update(output, masks, head, [ids[int(i)] for i in index])
        if should_stop is not None and should_stop():
            break
    loss_sum, count = _all_reduce_sum(loss_sum, count, device)
    result = meter.sync().compute(order=ids)  # every rank's images, once each; the study's batches in file order
    return EvalResult(float(loss_sum) / max(1, count), result["dice"], result["dice_global"], result["iou"],
                      result["per_image"], result["dice_soft_batch8"])


def _all_reduce_sum(loss_sum: torch.Tensor, count: int, device: torch.device) -> tuple[torch.Tensor, int]:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return loss_sum, count
    totals = torch.tensor([float(loss_sum), float(count)], dtype=torch.float64, device=device)
    dist.all_reduce(totals)
    return totals[0].cpu(), int(totals[1].item())


# --------------------------------------------------------------------------- from a run folder


def load_run_spec(run_dir: Path) -> ExperimentSpec:
    """The resolved spec a run folder was trained with (from its last checkpoint)."""
    last = run_dir / "checkpoints" / "last.pt"
    if not last.exists():
        raise CheckpointError(f"{run_dir}: cannot resume: no checkpoints/last.pt (the run saved no epoch yet)")
    return spec_from_dict(load_checkpoint(last).get("spec"), str(last))


def evaluate_checkpoint(
    checkpoint: str | Path, split: str = "test", overrides: Any = (),
) -> tuple[ExperimentSpec, EvalResult]:
    """Recompute a split's metrics from a checkpoint (a run folder means its `best.pt`).

    `overrides` may change where the data lives (`data.root=...`), not what was trained:
    the model section must stay as stored.
    """
    from ..errors import SpecError
    from ..spec import override_spec, typed_overrides

    path = Path(checkpoint)
    if path.is_dir():
        path = path / "checkpoints" / "best.pt"
        if not path.exists():
            raise CheckpointError(f"{checkpoint}: no checkpoints/best.pt in this run folder")
    typed = typed_overrides(overrides)
    fixed = [key for key in typed if key == "model" or key.startswith("model.")]
    if fixed:
        raise SpecError(f"override {fixed[0]}: the model is fixed by the checkpoint's weights ({path}); "
                        "only data and evaluation settings (data.*, train.device, ...) may be overridden")
    state = load_checkpoint(path)
    spec = override_spec(spec_from_dict(state.get("spec"), str(path)), typed)
    device = resolve_device(spec.train.device)
    precision = resolve_precision(spec.train.precision, device)
    data = build_data(spec)
    model = build_model(spec.model).to(device)
    load_model_state(model, state["model"], path)
    # The memory format the run trained in (recorded in the checkpoint), never a new probe.
    setting = spec.train.channels_last
    channels_last = resumed_speed(state).channels_last if setting == "auto" else setting
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    loader = {"train": data.train, "val": data.val, "test": data.test}[split]
    result = evaluate(model, loader, build_loss(spec.loss, spec.model.head), head=spec.model.head, device=device,
                      precision=precision, channels_last=channels_last,
                      ids=data.datasets[split].ids, desc=split, tta=spec.train.tta)
    return spec, result


def resumed_speed(payload: Mapping[str, Any] | None) -> SpeedChoice | None:
    """The memory format a checkpoint's run trained in (a resume keeps it: no new probe). A
    checkpoint from before `auto` (no "speed" in its state) trained channels_last, then the default."""
    if not payload:
        return None
    stored = SpeedChoice.from_dict((payload.get("state") or {}).get("speed", {"channels_last": True, "source": "-"}))
    return None if stored is None else SpeedChoice(stored.channels_last, "checkpoint", stored.ratio, stored.key)
