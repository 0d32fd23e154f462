"""Callbacks: the parts of a run that react to training, each owning its own state.

`fit` calls the hooks of a `CallbackList` in order: time budget (LR plan), checkpoints and
top-k, the local record (metrics.csv, plots, summary.json), trackers, the sweep hook, early
stopping, then any callbacks the caller passes (e.g. the benchmark's timer). A callback with
state returns it from `state_dict`; it is saved in every checkpoint under the callback's
`state_key` (its class name unless it says otherwise) and given back to it alone on resume.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch

from ..checkpoint import BackgroundSaver, TopK, save_checkpoint, stage_checkpoint
from ..errors import SegsweepError
from ..losses import DOUBLE_SIGMOID_WARNING
from ..metrics import probabilities
from ..record import (
    atomic_write_text, plot_curves, prediction_grid, remove_temporaries, save_prediction_png, write_json,
    write_metrics, write_per_image,
)
from ..spec import spec_to_yaml
from .device import autocast, unwrap
from .results import EvalResult, StopTraining

if TYPE_CHECKING:
    from .state import TrainState
    from .stop import StopController

log = logging.getLogger(__name__)

EpochHook = Callable[[int, dict[str, float]], None]


class Callback:
    """Hooks `fit` calls, in this order (each a no-op here):

    on_fit_start; per epoch: on_train_epoch_start, on_train_batch_start (each batch, as it
    arrives), on_train_epoch_end, on_eval_start / on_eval_end ("val"), then on_epoch_end (the
    row of metrics.csv; may ask the stop controller to stop) and on_epoch_decided (every rank
    knows whether training goes on) -- or on_interrupt when a signal stopped the epoch part-way;
    after the epochs, on_train_end, then on_eval_start / on_eval_end ("test") and on_test_end; last, on_fit_end
    (summary.json's contents; `quick` when the run ends in an error or a second signal).
    """

    def on_fit_start(self, state: TrainState) -> None: ...
    def on_train_epoch_start(self, state: TrainState, epoch: int) -> None: ...
    def on_train_batch_start(self, state: TrainState) -> None: ...
    def on_train_epoch_end(self, state: TrainState, epoch: int) -> None: ...
    def on_eval_start(self, state: TrainState, split: str) -> None: ...
    def on_eval_end(self, state: TrainState, split: str) -> None: ...
    def on_epoch_end(self, state: TrainState, row: dict[str, float]) -> None: ...
    def on_epoch_decided(self, state: TrainState, row: dict[str, float]) -> None: ...
    def on_interrupt(self, state: TrainState, epoch: int) -> None: ...
    def on_train_end(self, state: TrainState) -> None: ...
    def on_test_end(self, state: TrainState, result: EvalResult) -> None: ...
    def on_fit_end(self, state: TrainState, summary: dict[str, Any], quick: bool) -> None: ...

    @property
    def state_key(self) -> str:
        """Where this callback's `state_dict` is kept in a checkpoint (`state["callbacks"][key]`)."""
        return type(self).__name__

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class CallbackList(Callback):
    """Calls each hook on every member, in order; merges their state dicts."""

    def __init__(self, callbacks: Sequence[Callback]):
        self.callbacks = list(callbacks)
        keys = [c.state_key for c in self.callbacks if type(c).state_dict is not Callback.state_dict]  # those with state
        twice = sorted({k for k in keys if keys.count(k) > 1})
        if twice:
            raise SegsweepError(f"callbacks: two callbacks keep their state as {twice[0]!r}; give one of them "
                                "its own `state_key`")

    def _call(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(*args)

    def on_fit_start(self, state: TrainState) -> None:
        self._call("on_fit_start", state)

    def on_train_epoch_start(self, state: TrainState, epoch: int) -> None:
        self._call("on_train_epoch_start", state, epoch)

    def on_train_batch_start(self, state: TrainState) -> None:
        self._call("on_train_batch_start", state)

    def on_train_epoch_end(self, state: TrainState, epoch: int) -> None:
        self._call("on_train_epoch_end", state, epoch)

    def on_eval_start(self, state: TrainState, split: str) -> None:
        self._call("on_eval_start", state, split)

    def on_eval_end(self, state: TrainState, split: str) -> None:
        self._call("on_eval_end", state, split)

    def on_epoch_end(self, state: TrainState, row: dict[str, float]) -> None:
        self._call("on_epoch_end", state, row)

    def on_epoch_decided(self, state: TrainState, row: dict[str, float]) -> None:
        self._call("on_epoch_decided", state, row)

    def on_interrupt(self, state: TrainState, epoch: int) -> None:
        self._call("on_interrupt", state, epoch)

    def on_train_end(self, state: TrainState) -> None:
        self._call("on_train_end", state)

    def on_test_end(self, state: TrainState, result: EvalResult) -> None:
        self._call("on_test_end", state, result)

    def on_fit_end(self, state: TrainState, summary: dict[str, Any], quick: bool) -> None:
        self._call("on_fit_end", state, summary, quick)

    def state_dict(self) -> dict[str, Any]:
        """Each member's state under its `state_key` (members without state are left out)."""
        states: dict[str, Any] = {}
        for callback in self.callbacks:
            own = callback.state_dict()
            if own:
                states[callback.state_key] = own
        return states

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Give each member its own state back: `state` is a checkpoint's `state` section, with
        `callbacks` (per `state_key`) or, from a checkpoint written before, one flat dict that
        every member read its keys from."""
        keyed = state.get("callbacks")
        for callback in self.callbacks:
            if keyed is None:
                callback.load_state_dict(state)
            elif callback.state_key in keyed:
                callback.load_state_dict(keyed[callback.state_key])


class TimeBudget(Callback):
    """`train.time_budget_s`: after epoch 1, plan cosine/one-cycle over the epochs the budget
    affords at the measured speed; the stop controller asks `spent()` after every step."""

    def __init__(self, seconds: float | None, elapsed: Callable[[], float]):
        self.seconds, self.elapsed = seconds, elapsed

    def spent(self) -> bool:
        return self.seconds is not None and self.elapsed() >= self.seconds

    def on_epoch_end(self, state: TrainState, row: dict[str, float]) -> None:
        if row["epoch"] == 1 and self.seconds is not None and self.seconds < float("inf"):  # inf: no plan
            remaining = self.seconds - self.elapsed()
            epochs = state.spec.train.epochs
            state.schedule.plan(min(epochs, row["epoch"] + int(remaining / max(row["epoch_s"], 1e-9))))


class Checkpoints(Callback):
    """last.pt after every epoch (and a partial one when a signal stops an epoch part-way);
    the top-k by `checkpoint.monitor` (epochs above `checkpoint.floor` only) as best.pt,
    best-2.pt, ... (a new best is a hard link to last.pt).

    An epoch's last.pt is serialised in line (to a temporary file), then fsynced, renamed into
    place and linked into the top k on a background thread while the next epoch trains: on two
    cores any computing beside the training threads would slow them, waiting on the disk does
    not. That half is joined before anything reads or replaces the files: at the next epoch's
    end of training, on an interrupt, before the test pass and at the end of the run. The files
    go through the same states, in the same order, as before: a kill leaves last.pt at most one
    epoch behind metrics.csv.
    """

    def __init__(self, state: TrainState):
        self.directory = state.run_dir / "checkpoints"
        self.last = self.directory / "last.pt"
        self.topk = TopK(self.directory, state.spec.checkpoint.keep_best)
        self.save_last = state.spec.checkpoint.save_last
        self.payload: dict[str, Any] | None = None
        self.staged_topk: list[tuple[float, int]] = []  # the top k with the staged epoch offered
        self.saver = BackgroundSaver()

    def state_dict(self) -> dict[str, Any]:
        return {"topk": [list(e) for e in self.topk.entries]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.topk.entries = [(float(a), int(b)) for a, b in state["topk"]]

    def on_fit_start(self, state: TrainState) -> None:
        if state.is_main:
            self.directory.mkdir(parents=True, exist_ok=True)
            if state.resumed:  # a SIGKILL may have left best files ahead of last.pt
                self.topk.restore(self.topk.entries, last=self.last)

    def on_epoch_end(self, state: TrainState, row: dict[str, float]) -> None:
        if state.is_main:  # the epoch's state, before anything reports on it
            self.payload = state.checkpoint()
            score = state.score(row)
            self.staged_topk = self.topk.after_offer(score, row["epoch"]) if state.keeps(score) else self.topk.entries

    def on_epoch_decided(self, state: TrainState, row: dict[str, float]) -> None:
        if not state.is_main or self.payload is None:
            return
        payload, self.payload = self.payload, None
        score, epoch = state.score(row), row["epoch"]
        kept = state.keeps(score)  # below checkpoint.floor: never a best file
        # Every callback's state as decided for this epoch (a final stop is part of it: resuming a
        # finished run only re-tests it), and this one's top k with the epoch offered.
        payload["state"]["callbacks"] = {**state.callbacks.state_dict(),
                                         self.state_key: {"topk": [list(e) for e in self.staged_topk]}}
        payload["state"]["elapsed_s"] = state.elapsed()
        if not self.save_last:
            if kept:
                self.topk.offer(score, epoch, payload)
            return
        rename = stage_checkpoint(payload, self.last)  # serialised here: the next steps may change the tensors

        def finish() -> None:
            rename()
            # A new best is a hard link to last.pt: no second write of the same state.
            if kept:
                self.topk.offer(score, epoch, None, same_as=self.last)

        self.saver.submit(finish)  # fsync, rename and link on the saver's thread

    def on_train_epoch_end(self, state: TrainState, epoch: int) -> None:
        self.saver.wait()  # before this epoch's record and state: the previous save is on disk

    def on_interrupt(self, state: TrainState, epoch: int) -> None:
        self.saver.wait()
        # Keep the batches done: the resumed run continues with the next one.
        if state.is_main and self.save_last:
            save_checkpoint(state.checkpoint(state.partial(epoch)), self.last)

    def on_train_end(self, state: TrainState) -> None:
        self.saver.wait()  # the test pass reads best.pt

    def on_fit_end(self, state: TrainState, summary: dict[str, Any], quick: bool) -> None:
        try:
            self.saver.wait()
        except Exception as exc:
            if not quick:
                raise
            log.warning(f"warning: the last checkpoint save failed: {exc}")  # the run's own error comes first


class RunRecord(Callback):
    """The local record: config.yaml, metrics.csv and the epoch line, test_per_image.csv,
    predictions.png, curves.png, and summary.json last (its presence means the run ended)."""

    def on_fit_start(self, state: TrainState) -> None:
        if not state.is_main:
            return
        run_dir = state.run_dir
        if state.resumed:  # undo what a SIGKILL may have left ahead of last.pt
            remove_temporaries(run_dir)  # writes cut short
            (run_dir / "summary.json").unlink(missing_ok=True)  # rewritten when this session ends
            if state.history:
                write_metrics(run_dir, state.history)
            else:
                (run_dir / "metrics.csv").unlink(missing_ok=True)
        atomic_write_text(run_dir / "config.yaml", spec_to_yaml(state.spec))
        if state.summary.get("double_sigmoid"):
            log.warning(DOUBLE_SIGMOID_WARNING)

    def on_epoch_end(self, state: TrainState, row: dict[str, float]) -> None:
        if state.is_main:
            write_metrics(state.run_dir, state.history)  # before last.pt: a kill in between redoes this epoch
            log.info(epoch_line(row, state.spec.train.epochs, state.best["epoch"] == row["epoch"]))

    def on_test_end(self, state: TrainState, result: EvalResult) -> None:
        if state.is_main:
            write_per_image(state.run_dir, result.per_image)
            save_prediction_png(state.run_dir, predictions(state))

    def on_fit_end(self, state: TrainState, summary: dict[str, Any], quick: bool) -> None:
        if not state.is_main:
            return
        path = state.run_dir / "summary.json"
        try:
            if state.history and not quick:
                plot_curves(state.run_dir, state.history, f"{state.spec.name} (seed {state.spec.seed})")
            write_json(path, summary)  # last: its presence means the run ended
        except (OSError, SegsweepError) as exc:
            if not quick:
                raise
            log.warning(f"warning: could not write {path}: {exc}")


class Trackers(Callback):
    """Mirrors the record to a tracker (W&B, TensorBoard): start, each epoch's row and, every
    `train.predictions_every` epochs, a prediction grid; the summary and best.pt at the end."""

    def __init__(self, tracker: Any):
        self.tracker = tracker

    def on_fit_start(self, state: TrainState) -> None:
        if self.tracker is not None and state.is_main:
            self.tracker.start(state.spec, state.run_dir, state.meta)

    def on_epoch_end(self, state: TrainState, row: dict[str, float]) -> None:
        if self.tracker is not None and state.is_main:
            self.tracker.log_epoch(row["epoch"], row)
            if row["epoch"] % state.spec.train.predictions_every == 0:
                self.tracker.log_predictions(row["epoch"], predictions(state))

    def on_fit_end(self, state: TrainState, summary: dict[str, Any], quick: bool) -> None:
        if self.tracker is not None and state.is_main:
            best = state.run_dir / "checkpoints" / "best.pt"
            self.tracker.finish(summary, best if best.exists() else None)


class SweepHook(Callback):
    """`fit(..., on_epoch_end=hook)`: `hook(epoch, metrics)` on every rank after each epoch;
    a `StopTraining` it raises ends training with that status (pruning, a lost trial)."""

    def __init__(self, hook: EpochHook | None, stop: StopController):
        self.hook, self.stop = hook, stop

    def on_epoch_end(self, state: TrainState, row: dict[str, float]) -> None:
        try:
            if self.hook is not None:
                self.hook(row["epoch"], dict(row))
        except StopTraining as exc:
            self.stop.request(exc.status, exc.reason)


class EarlyStopping(Callback):
    """`train.early_stopping_patience`: stop after that many epochs without a better val/dice."""

    def __init__(self, patience: int | None, stop: StopController):
        self.patience, self.stop = patience, stop

    def on_epoch_end(self, state: TrainState, row: dict[str, float]) -> None:
        if self.patience and state.bad_epochs >= self.patience:
            self.stop.request("completed", f"no better val/dice for {state.bad_epochs} epochs")


def epoch_line(row: dict[str, float], epochs: int, improved: bool) -> str:
    mark = " *" if improved else ""
    return (f"epoch {row['epoch']:>3}/{epochs}  train/loss {row['train/loss']:.4f}  val/loss {row['val/loss']:.4f}  "
            f"val/dice {row['val/dice']:.4f}  val/dice_global {row['val/dice_global']:.4f}  "
            f"{row['img_per_s']:.1f} img/s  {row['epoch_s']:.1f}s{mark}")


def predictions(state: TrainState, n: int = 4) -> np.ndarray:
    """The first `n` validation images with their truth and the model's prediction (a grid)."""
    model, dataset = unwrap(state.model), state.data.datasets["val"]
    model.eval()
    picks = list(range(min(n, len(dataset))))
    images, truths, preds = [], [], []
    with torch.no_grad():
        batch = torch.stack([dataset[i][0] for i in picks]).to(state.device)
        with autocast(state.device, state.precision):
            out = model(batch)
        probs = probabilities(out.float(), state.spec.model.head)[:, 0].cpu().numpy()
    for i, prob in zip(picks, probs):
        image, mask = dataset.raw(i)
        images.append(image)
        truths.append(mask)
        preds.append(prob >= 0.5)
    return prediction_grid(images, truths, preds)
