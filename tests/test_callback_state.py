"""Callback state in a checkpoint is keyed per callback (`state["callbacks"][state_key]`), each
callback gets only its own back, and a checkpoint in the layout before (every callback's keys
flat in `state`) still resumes to the same end as an uninterrupted run."""
from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import torch

from segsweep.train.callbacks import Callback
from test_faults import metric_table

DETERMINISTIC = {"train.epochs": 3, "train.deterministic": True, "train.channels_last": True,
                 "train.precision": "fp32", "checkpoint.keep_best": 2}


class EpochCounter(Callback):
    """A caller's callback with state: how many epochs it saw (and what it was given back)."""

    def __init__(self) -> None:
        self.epochs, self.loaded = 0, None

    @property
    def state_key(self) -> str:
        return "my_counter"

    def on_epoch_end(self, state: Any, row: dict) -> None:
        self.epochs += 1

    def state_dict(self) -> dict[str, Any]:
        return {"epochs": self.epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loaded, self.epochs = dict(state), int(state["epochs"])


def interrupted_after_epoch_one(spec: Any, run_dir: Path, callbacks: tuple = ()) -> None:
    from segsweep.train import fit

    signalled: list[int] = []

    def hook(epoch: int, metrics: dict) -> None:
        if not signalled:
            signalled.append(epoch)
            os.kill(os.getpid(), signal.SIGINT)

    result = fit(spec, run_dir, on_epoch_end=hook, callbacks=callbacks)
    assert result.status == "interrupted"


def test_each_callback_keeps_and_gets_back_its_own_state(tiny_spec, tmp_path: Path) -> None:
    from segsweep.train import fit

    spec = tiny_spec(**DETERMINISTIC)
    first = EpochCounter()
    interrupted_after_epoch_one(spec, tmp_path / "run", (first,))
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["state"]
    assert set(saved["callbacks"]) == {"Checkpoints", "StopController", "my_counter"}
    assert saved["callbacks"]["my_counter"] == {"epochs": 1}
    assert not {"topk", "stop", "epochs"} & set(saved)  # nothing of theirs flat in the run's own state
    again = EpochCounter()
    fit(spec, tmp_path / "run", resume=True, callbacks=(again,))
    assert again.loaded == {"epochs": 1} and again.epochs == 3


def test_a_checkpoint_in_the_flat_layout_resumes_as_if_never_stopped(tiny_spec, tmp_path: Path) -> None:
    from segsweep.train import fit

    spec = tiny_spec(**DETERMINISTIC)
    fit(spec, tmp_path / "reference")
    run = tmp_path / "run"
    interrupted_after_epoch_one(spec, run)
    last = run / "checkpoints" / "last.pt"
    payload = torch.load(last, weights_only=True)
    state = payload["state"]
    keyed = state.pop("callbacks")
    state.pop("speed")  # not recorded before `auto`
    for own in keyed.values():
        state.update(own)  # the layout before: topk and stop beside the run's own keys
    assert {"topk", "stop"} <= set(state)
    torch.save(payload, last)

    result = fit(spec, run, resume=True)
    assert result.status == "completed"
    assert metric_table(run) == metric_table(tmp_path / "reference")
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    reference = torch.load(tmp_path / "reference" / "checkpoints" / "best.pt", weights_only=True)
    assert best["epoch"] == reference["epoch"]
    assert all(torch.equal(best["model"][k], reference["model"][k]) for k in reference["model"])
