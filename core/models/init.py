"""Weight initialisation schemes (`model.init`): fans of a convolution as the forward op sees
them, the standard deviation each scheme gives, `init_weights` over a module, and
`record_init_ops`, the ordered list of what an initialisation does to a model's tensors (on a
model built shapes-only by `meta_build`)."""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Literal

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

Init = Literal["pytorch", "he_normal", "he_uniform", "xavier", "paper", "he_fan_out", "paper_fan_in"]
STUDY_SCHEMES = ("he_fan_out", "paper_fan_in")  # the study's own rules: Conv2d only, torch's fans


def fans(module: nn.Conv2d | nn.ConvTranspose2d) -> tuple[float, float]:
    """(fan_in, fan_out) of a convolution's weight, as the forward op sees it.

    Conv2d: torch's convention, fan_in = in_channels/groups * kh * kw (inputs that feed one output
    pixel), fan_out = out_channels/groups * kh * kw.

    ConvTranspose2d: torch's `_calculate_fan_in_and_fan_out` reads weight dim 1 (out_channels) as
    fan-in, which is the fan-in of the convolution the transposed op is the adjoint of, not of
    the op itself. Here fan_in is the number of inputs that feed one output pixel:
    in_channels/groups * kh * kw / (sh * sw) (exact when the kernel is a multiple of the stride,
    the mean otherwise), so the 2x2 stride-2 up-convolution has fan_in = in_channels; and
    fan_out = out_channels/groups * kh * kw (outputs one input pixel feeds).
    """
    kh, kw = module.kernel_size
    if isinstance(module, nn.ConvTranspose2d):
        sh, sw = module.stride
        fan_in = module.in_channels / module.groups * kh * kw / (sh * sw)
        fan_out = module.out_channels / module.groups * kh * kw
    else:
        fan_in = module.in_channels / module.groups * kh * kw
        fan_out = module.out_channels / module.groups * kh * kw
    return fan_in, fan_out


def init_std(scheme: Init, fan_in: float, fan_out: float, encoder: bool = False) -> float:
    """Standard deviation a scheme gives a conv weight (for the uniform ones, of the uniform)."""
    if scheme == "xavier":
        return math.sqrt(2.0 / (fan_in + fan_out))
    if scheme == "he_fan_out" or (scheme == "paper" and encoder):
        return math.sqrt(2.0 / fan_out)  # He normal, fan-out (the ResNet paper; the study's He)
    if scheme in ("he_normal", "he_uniform", "paper", "paper_fan_in"):
        return math.sqrt(2.0 / fan_in)  # He: gain sqrt(2) for ReLU, fan-in
    raise ValueError(f"no standard deviation for init {scheme!r}")


@torch.no_grad()
def init_weights(module: nn.Module, scheme: Init, encoder: bool = False) -> None:
    """Re-initialise the convolutions (and BatchNorm) inside `module` by `scheme`, visiting
    `module.modules()` in order (so a seeded build draws in the same order as code that walks
    the same modules).

    - `pytorch`: nothing is touched: PyTorch's construction-time defaults (Kaiming-uniform with
      a = sqrt(5), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)), for convs). Not what the study ran:
      its "He initialization" is `he_fan_out`.
    - `he_normal`: N(0, 2/fan_in); `he_uniform`: U(-b, b), b = sqrt(6/fan_in) (same variance);
      `xavier`: U(-b, b), b = sqrt(6/(fan_in + fan_out)). Convs and transposed convs.
    - `paper`: segsweep's reading of the U-Net paper, std sqrt(2/N), N = fan-in = k*k*in_channels,
      on convs and transposed convs. That is exactly `he_normal`, so for the UNet (and the
      resnet34_unet decoder) `paper` and `he_normal` give identical weights: an ablation of the
      two contrasts nothing. With `encoder=True` (the ResNet encoder) `paper` follows the ResNet
      paper instead: N(0, 2/fan_out) (also torchvision's own ResNet init). Not the study's
      `paper_fan_in`, which leaves transposed convs and BatchNorm alone.
    - `he_fan_out`: the study's "He initialization" (its commit d61bb00), torch's
      `kaiming_normal_(mode="fan_out", nonlinearity="relu")`: N(0, 2/fan_out) on every `nn.Conv2d`
      (the 1x1 head included; fan_out = out_channels * kh * kw, so the head's std is sqrt(2)).
      Transposed convs keep PyTorch's default (a ConvTranspose2d is not an `nn.Conv2d`).
    - `paper_fan_in`: the study's earlier "original initialization" (its commit 824c77c):
      N(0, 2/(in_channels * kh * kw)) on every `nn.Conv2d` only; nothing else is touched.
    Conv biases become 0; BatchNorm weight 1 and bias 0 (except under `paper_fan_in`). Fans
    follow `fans()`, except for the study's two schemes, which use torch's as the study did.
    `encoder` changes `paper` only.
    """
    if scheme == "pytorch":
        return
    if scheme in STUDY_SCHEMES:
        _study_init(module, scheme)
        return
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            fan_in, fan_out = fans(m)
            std = init_std(scheme, fan_in, fan_out, encoder)
            if scheme in ("he_uniform", "xavier"):
                bound = math.sqrt(3.0) * std
                m.weight.uniform_(-bound, bound)
            else:
                m.weight.normal_(0.0, std)
            if m.bias is not None:
                m.bias.zero_()
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            if m.weight is not None:
                m.weight.fill_(1.0)
                m.bias.zero_()


def _study_init(module: nn.Module, scheme: Init) -> None:
    """The study's `_initialize_weights`, rule for rule and in its order; the std is computed as
    torch's `kaiming_normal_` and the study's `(2 / n) ** 0.5` compute it, to the last bit."""
    order = getattr(module, "study_order", None)  # the order the study's code walked its modules in
    for m in (order() if order is not None else module.modules()):
        if isinstance(m, nn.Conv2d):
            kh, kw = m.kernel_size
            if scheme == "he_fan_out":
                std = math.sqrt(2.0) / math.sqrt(m.out_channels * kh * kw)  # gain / sqrt(fan_out)
            else:
                std = (2 / (m.in_channels * kh * kw)) ** 0.5
            m.weight.normal_(0.0, std)
            if m.bias is not None:
                m.bias.zero_()
        elif scheme == "he_fan_out" and isinstance(m, nn.modules.batchnorm._BatchNorm):
            if m.weight is not None:
                m.weight.fill_(1.0)
                m.bias.zero_()


# Calls that only set values: on the meta device (no values) they are skipped, which also
# spares torch's slow reference path for random ops on meta tensors.
_VALUE_OPS = frozenset({"normal_", "uniform_", "fill_", "zero_", "copy_", "bernoulli_", "exponential_",
                        "geometric_", "log_normal_", "cauchy_", "random_"})


def _op_name(func: Callable) -> str:
    name = getattr(func, "__name__", repr(func))
    if name == "__get__":  # a property read (`weight.data`): name the property
        return f"{getattr(getattr(func, '__self__', None), '__name__', '?')}.__get__"
    return name


class _TorchCalls(TorchFunctionMode):
    """Skips value-setting calls on meta tensors; with `names` (id of a tensor -> its name),
    also records every torch call, each tensor argument named: a model tensor by its name, a
    tensor an earlier call returned as "%k" (k: that call's index), any other by shape."""

    def __init__(self, names: dict[int, str] | None = None):
        super().__init__()
        self.record = names is not None
        self.names = dict(names or {})
        self.ops: list[tuple] = []
        self._keep: list[torch.Tensor] = []  # produced tensors stay alive: their ids are not reused

    def _describe(self, value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return self.names.get(id(value), ("tensor", tuple(value.shape), str(value.dtype)))
        if isinstance(value, (list, tuple)):
            return tuple(self._describe(v) for v in value)
        if isinstance(value, slice):
            return ("slice", value.start, value.stop, value.step)
        if isinstance(value, torch.Generator):
            return ("generator", id(value))
        try:
            hash(value)
            return value
        except TypeError:
            return repr(value)

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        op = _op_name(func)
        target = kwargs.get("tensor", args[0] if args else None)  # torch.nn.init passes `tensor=`
        skip = (isinstance(target, torch.Tensor) and target.is_meta
                and (op in _VALUE_OPS or getattr(func, "__module__", "") == "torch.nn.init"))
        result = target if skip else func(*args, **kwargs)
        if self.record:
            self.ops.append((op, self._describe((*args, *sorted(kwargs.items())))))
            outputs = result if isinstance(result, (list, tuple)) else (result,)
            for k, out in enumerate(outputs):
                if isinstance(out, torch.Tensor) and id(out) not in self.names:
                    self.names[id(out)] = f"%{len(self.ops) - 1}" + (f".{k}" if out is not result else "")
                    self._keep.append(out)
        return result


@contextmanager
def meta_build() -> Iterator[None]:
    """Build modules on the meta device: shapes, no values; initialisation calls are skipped."""
    with torch.device("meta"), _TorchCalls():
        yield


def record_init_ops(model: nn.Module, initialise: Callable[[], None]) -> tuple[tuple, ...]:
    """Run `initialise()` (e.g. `lambda: model.reset_parameters("he_normal")`) and return every
    torch call it made, in order: (op, its arguments), each parameter or buffer of `model` by
    name, e.g. ("normal_", ("head.weight", 0.0, 1.4142135623730951)). So two initialisations with
    equal records compute the same values from the same starting weights and RNG state, provided
    they read no tensor from outside the model. On a model built by `meta_build` nothing is drawn
    and it takes milliseconds."""
    names = {id(t): n for n, t in (*model.named_parameters(), *model.named_buffers())}
    with _TorchCalls(names) as recorder:
        initialise()
    return tuple(recorder.ops)


@torch.no_grad()
def smp_init(decoder: nn.Module, head: nn.Module) -> None:
    """segmentation_models_pytorch's own initialisation, its `initialize_decoder` and
    `initialize_head` rule for rule: decoder convs Kaiming-uniform (fan-in, ReLU gain), BatchNorm
    weight 1 and bias 0; head convs Xavier-uniform; conv biases 0. The same torch.nn.init calls in
    the same module order, so a build seeded like smp's draws smp's values."""
    for m in decoder.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_uniform_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
    for m in head.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
