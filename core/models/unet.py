"""The U-Net of Ronneberger et al. 2015 (`model.name: unet`)."""
from __future__ import annotations

import itertools
from typing import Iterator

import torch
import torch.nn as nn

from ..sections import ModelSpec
from .base import MODELS, SegmentationModel, check_input_size
from .blocks import DoubleConv, Head, Up, apply_head, dropout_layer


@MODELS.register("unet")
class UNet(SegmentationModel):
    """The U-Net of Ronneberger et al. 2015 with padded convolutions (output size = input size).

    Encoder: DoubleConv at widths b, 2b, 4b, 8b with 2x2 max-pool between (4 down-samplings),
    bottleneck DoubleConv at 16b followed by Dropout2d(dropout); decoder: 2x2 transposed conv
    halving the width, concat skip, DoubleConv; 1x1 head. b = `base_channels` (64 in the paper).
    """

    size_divisor = 16

    def __init__(self, in_channels: int = 3, base_channels: int = 64, batchnorm: bool = True,
                 dropout: float = 0.0, head: Head = "logits"):
        super().__init__()
        b = base_channels
        widths = [b, 2 * b, 4 * b, 8 * b]
        self.head_kind = head
        self.downs = nn.ModuleList()
        c = in_channels
        for w in widths:
            self.downs.append(DoubleConv(c, w, batchnorm))
            c = w
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = nn.Sequential(DoubleConv(c, 16 * b, batchnorm), dropout_layer(dropout))
        self.ups = nn.ModuleList(Up(2 * w, w, w, batchnorm) for w in reversed(widths))
        self.head = nn.Conv2d(b, 1, kernel_size=1)

    @classmethod
    def from_spec(cls, spec: ModelSpec, in_channels: int = 3) -> "UNet":
        return cls(in_channels, spec.base_channels, spec.batchnorm, spec.dropout, spec.head)

    def study_order(self) -> Iterator[nn.Module]:
        """Modules in the order the study's UNet registers them (encoder, up-steps, bottleneck,
        head), which its initialisation walks: seeded `he_fan_out` / `paper_fan_in` builds draw
        the study's weights bit for bit."""
        return itertools.chain(self.downs.modules(), self.ups.modules(), self.bottleneck.modules(),
                               self.head.modules())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size("unet", self.size_divisor, x.shape[-2], x.shape[-1])
        skips = []
        for down in self.downs:
            x = down(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)  # (B, 16b, H/16, W/16)
        for up, skip in zip(self.ups, reversed(skips)):
            x = up(x, skip)
        return apply_head(self.head(x), self.head_kind)  # (B, 1, H, W)

