"""Weight initialisation schemes (`model.init`): fans of a convolution as the forward op sees
them, the standard deviation each scheme gives, and `init_weights` over a module."""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn as nn

Init = Literal["pytorch", "he_normal", "he_uniform", "xavier", "paper"]

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
    if scheme == "paper" and encoder:
        return math.sqrt(2.0 / fan_out)  # ResNet paper: He normal, fan-out
    if scheme in ("he_normal", "he_uniform", "paper"):
        return math.sqrt(2.0 / fan_in)  # He: gain sqrt(2) for ReLU, fan-in
    raise ValueError(f"no standard deviation for init {scheme!r}")


@torch.no_grad()
def init_weights(module: nn.Module, scheme: Init, encoder: bool = False) -> None:
    """Re-initialise every conv / transposed conv / BatchNorm inside `module` by `scheme`.

    - `pytorch`: nothing is touched (PyTorch's defaults: what the study actually had).
    - `he_normal`: N(0, 2/fan_in); `he_uniform`: U(-b, b), b = sqrt(6/fan_in) (same variance);
      `xavier`: U(-b, b), b = sqrt(6/(fan_in + fan_out)).
    - `paper`: the U-Net paper's Gaussian with std sqrt(2/N), N = fan-in = k*k*in_channels.
      That is exactly `he_normal`, so for the UNet (and the resnet34_unet decoder) `paper` and
      `he_normal` give identical weights: an ablation of the two contrasts nothing. With
      `encoder=True` (the ResNet encoder) `paper` follows the ResNet paper instead: He normal
      with fan-out, N(0, 2/fan_out) (also torchvision's own ResNet init).
    Conv biases become 0; BatchNorm weight 1 and bias 0. Fans follow `fans()`.
    """
    if scheme == "pytorch":
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
