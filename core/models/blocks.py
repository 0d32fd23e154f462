"""Building blocks shared by the networks: conv-BN-ReLU, the UNet level, the up-step, the head."""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn

Head = Literal["sigmoid", "logits"]

class ConvBNReLU(nn.Sequential):
    """Padded conv, optional BatchNorm, ReLU. The conv has a bias only without BatchNorm."""

    def __init__(self, c_in: int, c_out: int, batchnorm: bool, kernel_size: int = 3):
        super().__init__(
            nn.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2, bias=not batchnorm),
            nn.BatchNorm2d(c_out) if batchnorm else nn.Identity(),
            nn.ReLU(inplace=True),
        )


class DoubleConv(nn.Sequential):
    """(conv 3x3 - BN - ReLU) x 2: one UNet level."""

    def __init__(self, c_in: int, c_out: int, batchnorm: bool):
        super().__init__(ConvBNReLU(c_in, c_out, batchnorm), ConvBNReLU(c_out, c_out, batchnorm))


class Up(nn.Module):
    """2x2 stride-2 transposed conv (c_in -> c_up), concat the skip (if any), DoubleConv -> c_out."""

    def __init__(self, c_in: int, c_skip: int, c_out: int, batchnorm: bool, c_up: int | None = None):
        super().__init__()
        c_up = c_out if c_up is None else c_up
        self.up = nn.ConvTranspose2d(c_in, c_up, kernel_size=2, stride=2)
        self.conv = DoubleConv(c_up + c_skip, c_out, batchnorm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = self.up(x)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv(x)


def dropout_layer(p: float) -> nn.Module:
    return nn.Dropout2d(p) if p > 0 else nn.Identity()


def apply_head(logits: torch.Tensor, head: Head) -> torch.Tensor:
    # Probabilities in fp32 even under autocast: bf16 cannot tell 0.999 from 1.
    return torch.sigmoid(logits.float()) if head == "sigmoid" else logits

