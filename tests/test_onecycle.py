"""`optim.scheduler: onecycle` is torch.optim.lr_scheduler.OneCycleLR step for step (lr and
momentum, over the steps the time-budget plan fixes); `warmup_cosine` keeps the schedule that
`onecycle` named before."""
from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path

import pytest
import torch

from segsweep.optim import LrSchedule, build_optimizer, onecycle
from segsweep.spec import ExperimentSpec, override_spec


def torch_sequence(name: str, max_lr: float, total: int) -> list[tuple[float, float]]:
    """(lr, momentum) OneCycleLR gives each of `total` steps, read off the optimizer."""
    param = torch.nn.Parameter(torch.zeros(3))
    opt = (torch.optim.Adam([param], lr=max_lr) if name == "adam"
           else torch.optim.SGD([param], lr=max_lr, momentum=0.9, nesterov=True))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=total)
    seen = []
    for _ in range(total):
        group = opt.param_groups[0]
        seen.append((group["lr"], group["betas"][0] if "betas" in group else group["momentum"]))
        param.grad = torch.zeros_like(param)
        opt.step()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the last step() warns nothing useful
            if len(seen) < total:
                sched.step()
    return seen


def spec_for(name: str, lr: float, epochs: int) -> ExperimentSpec:
    return override_spec(ExperimentSpec(), {"optim.name": name, "optim.lr": lr, "optim.scheduler": "onecycle",
                                            "train.epochs": epochs})


@pytest.mark.parametrize("name", ["adam", "sgd"])
@pytest.mark.parametrize("steps_per_epoch, planned_epochs", [(1, 1), (1, 2), (3, 1), (5, 7), (13, 11)])
def test_lr_and_momentum_follow_onecycle_lr_after_the_plan(name: str, steps_per_epoch: int, planned_epochs: int) -> None:
    spec = spec_for(name, 3e-3, epochs=1000)  # the plan, not train.epochs, fixes the total
    schedule = LrSchedule(spec, steps_per_epoch)
    schedule.plan(planned_epochs)
    total = steps_per_epoch * planned_epochs
    want = torch_sequence(name, 3e-3, total)
    optimizer = build_optimizer(spec, [torch.nn.Parameter(torch.zeros(3))])
    for step, (lr, momentum) in enumerate(want):
        got_lr = schedule.apply(optimizer, step)
        group = optimizer.param_groups[0]
        got_momentum = group["betas"][0] if "betas" in group else group["momentum"]
        assert math.isclose(got_lr, lr, rel_tol=1e-12, abs_tol=0.0), (step, got_lr, lr)
        assert math.isclose(group["lr"], lr, rel_tol=1e-12, abs_tol=0.0)
        assert math.isclose(got_momentum, momentum, rel_tol=1e-12, abs_tol=0.0), (step, got_momentum, momentum)


def test_the_shape_is_onecycles_defaults() -> None:
    total = 1000
    lrs = [onecycle(1.0, k, total)[0] for k in range(total)]
    assert lrs.index(max(lrs)) == 299  # peak at 30%, not 25%
    assert lrs[0] == pytest.approx(1 / 25) and lrs[-1] == pytest.approx(1 / 25 / 1e4)
    assert onecycle(1.0, 299, total)[1] == pytest.approx(0.85) and onecycle(1.0, 0, total)[1] == pytest.approx(0.95)
    assert onecycle(1.0, total + 5, total) == onecycle(1.0, total - 1, total)  # past the plan: stays at the end


def test_other_schedules_leave_momentum_alone() -> None:
    spec = override_spec(ExperimentSpec(), {"optim.scheduler": "cosine", "optim.lr": 1e-3})
    optimizer = build_optimizer(spec, [torch.nn.Parameter(torch.zeros(3))])
    LrSchedule(spec, 4).apply(optimizer, 3)
    assert optimizer.param_groups[0]["betas"] == (0.9, 0.999)


def test_warmup_cosine_is_the_former_onecycle() -> None:
    """The schedule the committed recipe study ran as `onecycle`: cosine from lr/25 to lr over the
    first quarter of the steps, cosine down to lr/1e4 (values from the old formula)."""
    spec = override_spec(ExperimentSpec(), {"optim.scheduler": "warmup_cosine", "optim.lr": 1.0, "train.epochs": 5})
    schedule = LrSchedule(spec, 100)  # 500 steps, t = step / 500
    assert schedule.lr(0) == pytest.approx(1 / 25)
    assert schedule.lr(125) == pytest.approx(1.0)  # t = 0.25
    assert schedule.lr(500) == pytest.approx(1e-4)
    assert schedule.lr(250) == pytest.approx(1e-4 + (1 - 1e-4) * 0.75)  # t = 0.5: cos(pi / 3) = 0.5
    assert schedule.momentum(10) is None


def test_fit_with_onecycle_cycles_adams_beta1(tiny_spec, tmp_path: Path) -> None:
    from segsweep.train.loop import fit

    spec = tiny_spec(**{"optim.scheduler": "onecycle", "optim.lr": 2e-3, "train.epochs": 2})
    fit(spec, tmp_path / "run")
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    with open(tmp_path / "run" / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    total = last["schedule"]["total_steps"]
    lr, momentum = onecycle(2e-3, total - 1, total)  # the last step's values
    assert float(rows[-1]["lr"]) == pytest.approx(lr, rel=1e-6)
    assert last["optimizer"]["param_groups"][0]["betas"][0] == pytest.approx(momentum)
    assert momentum == pytest.approx(0.95) and last["optimizer"]["param_groups"][0]["betas"][1] == 0.999
