"""The sweep-trial figures: how much of a time-budgeted `fit()` is not training, measured by
a callback on the trainer's hooks (nothing is patched)."""
from __future__ import annotations

import contextlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ..record import new_run_dir
from ..spec import ExperimentSpec, override_spec
from ..train import Callback, TrainState, fit
from ..train.callbacks import Checkpoints
from .contenders import Plan, base_spec
from .measure import figure, median, with_peak_rss


def bench_trial(plan: Plan, cache_dir: Path) -> dict[str, Any]:
    """Sweep trials as a sweep worker runs them: in a process whose first trial has already paid
    the imports (a short warm-up trial here). Timed trials of `trial_budget_s`: the ablation
    trial (tests its best checkpoint: `trial_overhead`, the issue's figure) and a study trial
    that tunes on val only (`train.final_test: false`, as sweeps/pets_mini_recipe.yaml does).
    The ablation trial runs four times, A B B A: twice as the trainer is and twice with each
    checkpoint save joined where it starts, as a save in line with training would be
    (`in_line_saves`); the first trial of a process is slower whichever it is, so the figures
    are the means of each contender's two, and the overhead ratio pairs them by position."""
    spec = base_spec(plan, cache_dir, plan.main_model, **{
        "name": "benchmark-trial", "data.limit_train": None, "train.epochs": 1000,
        "train.time_budget_s": plan.trial_budget_s,
    })
    with tempfile.TemporaryDirectory(prefix="segsweep-bench-") as tmp, contextlib.redirect_stdout(sys.stderr):
        warm = override_spec(spec, {"data.limit_train": plan.batch_size, "train.epochs": 1,
                                    "train.time_budget_s": None, "train.final_test": False})
        fit(warm, new_run_dir(tmp, "warm-up"))
    ours: list[dict[str, Any]] = []
    in_line: list[dict[str, Any]] = []
    for contender in (ours, in_line, in_line, ours):
        contender.append(_timed_trial(spec, [SavesInLine()] if contender is in_line else []))
    study = _timed_trial(override_spec(spec, {"train.final_test": False}))
    ablation, joined = _mean_trial(ours), _mean_trial(in_line)
    ratio = median([a["overhead_s"] / max(b["overhead_s"], 1e-9) for a, b in zip(ours, in_line)])
    note = ("fit() with train.time_budget_s and no tracker, after a warm-up trial in the same process; "
            "overhead = wall - training passes, the first batch of each epoch counted at the median batch time")
    return with_peak_rss({
        "trial_overhead": figure("trial_overhead", ablation.pop("share"), "share of the trial's wall time",
                                 **ablation, in_line_saves={**joined, "overhead_ratio": round(ratio, 4)},
                                 repetitions={"ours": ours, "in_line_saves": in_line},
                                 note=note + "; means of 2 trials (A B B A with in_line_saves: each checkpoint "
                                 "save joined at once); overhead_ratio: ours / in line, paired by position"),
        "study_trial_overhead": figure("study_trial_overhead", study.pop("share"), "share of the trial's wall time",
                                       **study, note=note + "; train.final_test: false (no test pass)"),
    })


def _mean_trial(trials: list[dict[str, Any]]) -> dict[str, Any]:
    """The trials' numbers averaged (the breakdown part by part); the rest from the first."""
    def mean(key: str, part: str | None = None) -> float:
        return sum(t[key][part] if part else t[key] for t in trials) / len(trials)

    out = dict(trials[0])
    for key in ("share", "wall_s", "training_s", "overhead_s", "median_batch_s", "epochs"):
        out[key] = round(mean(key), 4 if key == "share" else 3)
    out["breakdown_s"] = {part: round(mean("breakdown_s", part), 2) for part in trials[0]["breakdown_s"]}
    out["status"] = sorted({t["status"] for t in trials})
    return out


class TrialTimer(Callback):
    """Splits one `fit()` into training passes, validation, test and the rest (start-up,
    checkpoints, records, plots) from the hooks' times; measurement only, it changes nothing."""

    def __init__(self) -> None:
        self.spans = {"train": 0.0, "val": 0.0, "test": 0.0}
        self.marks: list[list[float]] = []  # per epoch: start, each batch's arrival, end
        self.sizes: dict[str, int] = {}
        self.eval_started = 0.0

    def on_fit_start(self, state: TrainState) -> None:
        self.sizes.update({split: len(dataset) for split, dataset in state.data.datasets.items()})

    def on_train_epoch_start(self, state: TrainState, epoch: int) -> None:
        self.marks.append([time.perf_counter()])

    def on_train_batch_start(self, state: TrainState) -> None:
        self.marks[-1].append(time.perf_counter())

    def on_train_epoch_end(self, state: TrainState, epoch: int) -> None:
        self.marks[-1].append(time.perf_counter())
        self.spans["train"] += self.marks[-1][-1] - self.marks[-1][0]

    def on_eval_start(self, state: TrainState, split: str) -> None:
        self.eval_started = time.perf_counter()

    def on_eval_end(self, state: TrainState, split: str) -> None:
        self.spans[split] += time.perf_counter() - self.eval_started


class SavesInLine(Callback):
    """Joins each epoch's checkpoint save as soon as it is handed to the background thread: the
    trainer as it would be with saves in line (the contender for the background saves)."""

    def on_epoch_decided(self, state: TrainState, row: dict[str, float]) -> None:
        for callback in state.callbacks.callbacks:
            if isinstance(callback, Checkpoints):
                callback.saver.wait()


def _timed_trial(spec: ExperimentSpec, extra: list[Callback] | None = None) -> dict[str, Any]:
    """One `fit()` with a `TrialTimer`: its wall time, split into training and the rest."""
    timer = TrialTimer()
    with tempfile.TemporaryDirectory(prefix="segsweep-bench-") as tmp:
        run_dir = new_run_dir(tmp, spec.name)
        started = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):
            result = fit(spec, run_dir, callbacks=[*(extra or []), timer])
        wall = time.perf_counter() - started
    marks, spans, sizes = timer.marks, timer.spans, timer.sizes
    # A batch's time: from its arrival to the next one's (its step, then loading the next).
    steps = [b - a for m in marks for a, b in zip(m[1:-1], m[2:])][1:]  # the very first is warm-up
    typical = median(steps) if steps else 0.0
    firsts = [m[2] - m[0] for m in marks if len(m) > 2]  # epoch start to the second batch
    first_batches = sum(max(0.0, f - typical) for f in firsts)
    training = spans["train"] - first_batches
    overhead = wall - training
    return dict(
        share=overhead / wall, wall_s=round(wall, 2), time_budget_s=spec.train.time_budget_s, status=result.status,
        epochs=len(marks), training_s=round(training, 2), overhead_s=round(overhead, 2),
        median_batch_s=round(typical, 3),
        breakdown_s={"first_batches": round(first_batches, 2), "validation": round(spans["val"], 2),
                     "test": round(spans["test"], 2),
                     "startup_checkpoints_records": round(wall - spans["train"] - spans["val"] - spans["test"], 2)},
        images=sizes,
    )

