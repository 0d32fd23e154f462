"""Optimisers and learning-rate schedules, found by name (`optim.name`, `optim.scheduler`).

Each scheduler is a function of the spec's `optim` section and the position in training:
`lr = SCHEDULERS.get(name)(o, step=..., t=..., steps_per_epoch=..., plateau_scale=...)`, where `t`
runs from 0 to 1 over the steps after warm-up. Registering a new name here makes it a valid value
of the spec field.
"""
from __future__ import annotations

import math
from typing import Any, Iterable

import torch
from torch import nn

from .registry import Registry
from .spec import ExperimentSpec, OptimSpec

OPTIMIZERS = Registry("optimiser")
SCHEDULERS = Registry("scheduler")


@OPTIMIZERS.register("adam")
def _adam(params: list[nn.Parameter], o: OptimSpec, fused: bool | None) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay, fused=fused)


@OPTIMIZERS.register("adamw")
def _adamw(params: list[nn.Parameter], o: OptimSpec, fused: bool | None) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay, fused=fused)


@OPTIMIZERS.register("sgd")
def _sgd(params: list[nn.Parameter], o: OptimSpec, fused: bool | None) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, nesterov=True,
                           fused=fused)


def build_optimizer(spec: ExperimentSpec, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """The spec's optimiser, with PyTorch's fused kernels: one pass over every parameter per step
    instead of a chain of elementwise ops (measured +2% img/s on the 2-core CPU for Adam on
    resnet34_unet; fused kernels exist for floating-point parameters on CPU and CUDA)."""
    params = list(params)
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params) or None
    return OPTIMIZERS.get(spec.optim.name)(params, spec.optim, fused)


@SCHEDULERS.register("none")
def _constant(o: OptimSpec, **position: Any) -> float:
    return o.lr


@SCHEDULERS.register("cosine")
def _cosine(o: OptimSpec, *, t: float, **position: Any) -> float:
    return o.min_lr + (o.lr - o.min_lr) * 0.5 * (1 + math.cos(math.pi * t))


@SCHEDULERS.register("onecycle")
def _onecycle(o: OptimSpec, *, t: float, **position: Any) -> float:
    # 25% rise from base/25 to base, then cosine down to base/1e4 (torch's OneCycleLR shape).
    base, rise = o.lr, 0.25
    if t < rise:
        return base / 25 + (base - base / 25) * 0.5 * (1 - math.cos(math.pi * t / rise))
    return base / 1e4 + (base - base / 1e4) * 0.5 * (1 + math.cos(math.pi * (t - rise) / (1 - rise)))


@SCHEDULERS.register("step")
def _step(o: OptimSpec, *, step: int, steps_per_epoch: int, **position: Any) -> float:
    return o.lr * o.gamma ** (step // (o.step_size * steps_per_epoch))


@SCHEDULERS.register("plateau")
def _plateau(o: OptimSpec, *, plateau_scale: float, **position: Any) -> float:
    return o.lr * plateau_scale


class LrSchedule:
    """Per-step learning rate from the spec; its state is a few numbers, saved in checkpoints.

    `cosine` and `onecycle` need the total number of steps: from `train.epochs`, or, with a
    time budget, planned from the measured speed of the first epoch (`plan`).
    """

    def __init__(self, spec: ExperimentSpec, steps_per_epoch: int):
        self.o = spec.optim
        self.schedule = SCHEDULERS.get(self.o.scheduler)
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.total_steps = spec.train.epochs * self.steps_per_epoch
        self.plateau_scale = 1.0
        self.plateau_best = -math.inf
        self.plateau_bad = 0

    def plan(self, epochs: int) -> None:
        self.total_steps = max(1, epochs) * self.steps_per_epoch

    def lr(self, step: int) -> float:
        warm = self.o.warmup_epochs * self.steps_per_epoch
        if warm and step < warm:
            return self.o.lr * (step + 1) / warm
        t = min(1.0, (step - warm) / max(1, self.total_steps - warm))
        return self.schedule(self.o, step=step, t=t, steps_per_epoch=self.steps_per_epoch,
                             plateau_scale=self.plateau_scale)

    def end_epoch(self, val_dice: float) -> None:
        if self.o.scheduler != "plateau":
            return
        if val_dice > self.plateau_best:
            self.plateau_best, self.plateau_bad = val_dice, 0
        else:
            self.plateau_bad += 1
            if self.plateau_bad > self.o.plateau_patience:
                self.plateau_scale *= self.o.gamma
                self.plateau_bad = 0

    def state_dict(self) -> dict[str, float]:
        return {"total_steps": self.total_steps, "plateau_scale": self.plateau_scale,
                "plateau_best": self.plateau_best, "plateau_bad": self.plateau_bad}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.total_steps = int(state["total_steps"])
        self.plateau_scale = float(state["plateau_scale"])
        self.plateau_best = float(state["plateau_best"])
        self.plateau_bad = int(state["plateau_bad"])
