"""Optimisers and learning-rate schedules, found by name (`optim.name`, `optim.scheduler`).

Each scheduler is a function of the spec's `optim` section and the position in training:
`lr = SCHEDULERS.get(name)(o, step=..., t=..., steps_per_epoch=..., plateau_scale=...,
total_steps=..., warmup_steps=...)`, where `t` runs from 0 to 1 over the steps after warm-up.
Registering a new name here makes it a valid value of the spec field.
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


# torch.optim.lr_scheduler.OneCycleLR's defaults, which `onecycle` follows.
ONECYCLE_PCT_START, ONECYCLE_DIV_FACTOR, ONECYCLE_FINAL_DIV_FACTOR = 0.3, 25.0, 1e4
ONECYCLE_BASE_MOMENTUM, ONECYCLE_MAX_MOMENTUM = 0.85, 0.95


def _cos_anneal(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)  # OneCycleLR's formula, term for term


def onecycle(max_lr: float, step: int, total_steps: int) -> tuple[float, float]:
    """(lr, momentum) at `step` (0-based) of `torch.optim.lr_scheduler.OneCycleLR(max_lr,
    total_steps)` with its defaults: cosine from max_lr/25 up to max_lr over the first 30% of the
    steps, then down to max_lr/25/1e4; momentum (Adam's beta1, SGD's momentum) the other way,
    0.95 -> 0.85 -> 0.95. Past `total_steps` (where OneCycleLR raises) it stays at the end."""
    initial = max_lr / ONECYCLE_DIV_FACTOR
    phases = [(float(ONECYCLE_PCT_START * total_steps) - 1, initial, max_lr,
               ONECYCLE_MAX_MOMENTUM, ONECYCLE_BASE_MOMENTUM),
              (total_steps - 1, max_lr, initial / ONECYCLE_FINAL_DIV_FACTOR,
               ONECYCLE_BASE_MOMENTUM, ONECYCLE_MAX_MOMENTUM)]
    step, start = min(step, total_steps - 1), 0.0
    for i, (end, lr_start, lr_end, m_start, m_end) in enumerate(phases):
        if step <= end or i == len(phases) - 1:
            pct = (step - start) / (end - start)
            return _cos_anneal(lr_start, lr_end, pct), _cos_anneal(m_start, m_end, pct)
        start = end
    raise AssertionError("unreachable: the last phase always returns")


@SCHEDULERS.register("onecycle")
def _onecycle(o: OptimSpec, *, step: int, total_steps: int, warmup_steps: int, **position: Any) -> float:
    return onecycle(o.lr, step - warmup_steps, max(1, total_steps - warmup_steps))[0]


@SCHEDULERS.register("warmup_cosine")
def _warmup_cosine(o: OptimSpec, *, t: float, **position: Any) -> float:
    # Cosine rise from lr/25 to lr over the first 25% of t, then cosine down to lr/1e4; momentum
    # untouched. What `onecycle` computed before it followed OneCycleLR: the committed
    # pets_mini_recipe study (results/reports/pets_mini_recipe) ran this under that name.
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

    `cosine`, `onecycle` and `warmup_cosine` need the total number of steps: from `train.epochs`,
    or, with a time budget, planned from the measured speed of the first epoch (`plan`; OneCycleLR
    is in effect built then, over the planned steps). `apply` sets the step's lr, and for
    `onecycle` its momentum, on every parameter group.
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
                             plateau_scale=self.plateau_scale, total_steps=self.total_steps, warmup_steps=warm)

    def momentum(self, step: int) -> float | None:
        """The cycled momentum at `step` (`onecycle`: the cycle's first value during warm-up);
        None when the schedule leaves momentum alone."""
        if self.o.scheduler != "onecycle":
            return None
        warm = self.o.warmup_epochs * self.steps_per_epoch
        return onecycle(self.o.lr, max(0, step - warm), max(1, self.total_steps - warm))[1]

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set the lr (and the cycled momentum: Adam's beta1, SGD's momentum, as OneCycleLR does)
        of every parameter group for `step`; returns the lr."""
        lr, momentum = self.lr(step), self.momentum(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
            if momentum is not None and "betas" in group:
                group["betas"] = (momentum, *group["betas"][1:])
            elif momentum is not None:
                group["momentum"] = momentum
        return lr

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
