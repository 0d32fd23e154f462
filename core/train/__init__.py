"""Training: `fit(spec, run_dir, tracker, on_epoch_end)` and what it returns.

`loop` (fit, train_one_epoch, evaluate), `state` (TrainState: what resume needs), `callbacks`
(record, checkpoints, trackers, early stopping, time budget, sweep hook), `stop` (signals, DDP
agreement, budget), `device` and `seeding`.
"""
from .callbacks import Callback
from .loop import (
    EvalResult, RunResult, StopTraining, evaluate, evaluate_checkpoint, fit, load_run_spec, train_one_epoch,
)
from .state import TrainState

__all__ = ["Callback", "EvalResult", "RunResult", "StopTraining", "TrainState", "evaluate", "evaluate_checkpoint",
           "fit", "load_run_spec", "train_one_epoch"]
