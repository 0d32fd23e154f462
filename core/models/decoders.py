"""Decoders for the ResNet34 encoder's five feature maps (`model.decoder`, found in `DECODERS`).

Each takes `(base_channels, batchnorm, dropout)`, maps the encoder features at 1/2 ... 1/32 to
full resolution, and says its `out_channels` (what the head reads). A decoder may also set
`head_kernel_size` (1 unless set) and `initialize(head)`, its own default initialisation of itself
and the head (what `model.init: pytorch` gives it).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..registry import Registry
from .blocks import ConvBNReLU, DoubleConv, Up, dropout_layer
from .init import smp_init

DECODERS = Registry("decoder")


@DECODERS.register("lab")
class LabDecoder(nn.Module):
    """The course figure (Huang et al. 2022): bottleneck 3x3 conv 512 -> 256 concatenated with
    layer4's 512 (768 channels at 1/32, then Dropout2d); five x2 up-steps each ending in
    width = base_channels / 2 channels (32 by default), the first three with skips from layer3,
    layer2, layer1, the last two without skip (they undo the stem's /4). Each up-step: 2x2 transposed conv to
    max(c_in // 2, width) channels, concat skip, DoubleConv -> width. The stem's 1/2 output is
    not used, as in the figure."""

    def __init__(self, base_channels: int, batchnorm: bool, dropout: float):
        super().__init__()
        width = max(base_channels // 2, 1)
        self.bottleneck = ConvBNReLU(512, 256, batchnorm)
        self.dropout = dropout_layer(dropout)
        blocks, c = [], 768
        for c_skip in (256, 128, 64, 0, 0):
            blocks.append(Up(c, c_skip, width, batchnorm, c_up=max(c // 2, width)))
            c = width
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = width

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        _, x1, x2, x3, x4 = feats
        x = self.dropout(torch.cat([self.bottleneck(x4), x4], dim=1))  # (B, 768, H/32, W/32)
        for block, skip in zip(self.blocks, (x3, x2, x1, None, None)):
            x = block(x, skip)
        return x  # (B, width, H, W)


@DECODERS.register("unet")
class UNetDecoder(nn.Module):
    """A plain UNet decoder on the ResNet34 features (not the study's network, which is
    `study_resnet34_unet`: its own residual blocks and a 1024-channel bottleneck): Dropout2d on
    layer4's output, then up-steps to 4w / 2w / w / w channels with skips from layer3, layer2,
    layer1 and the stem conv (1/2), and one more up-step without skip to full resolution at w/2.
    w = 64 gives 256/128/64/64/32."""

    def __init__(self, base_channels: int, batchnorm: bool, dropout: float):
        super().__init__()
        self.dropout = dropout_layer(dropout)
        w = base_channels
        self.blocks = nn.ModuleList([
            Up(512, 256, 4 * w, batchnorm),
            Up(4 * w, 128, 2 * w, batchnorm),
            Up(2 * w, 64, w, batchnorm),
            Up(w, 64, w, batchnorm),
            Up(w, 0, max(w // 2, 1), batchnorm),
        ])
        self.out_channels = max(w // 2, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x0, x1, x2, x3, x4 = feats
        x = self.dropout(x4)
        for block, skip in zip(self.blocks, (x3, x2, x1, x0, None)):
            x = block(x, skip)
        return x  # (B, w/2, H, W)


@DECODERS.register("smp")
class SmpDecoder(nn.Module):
    """The decoder of segmentation_models_pytorch's `Unet("resnet34")`: each step up-samples by
    nearest neighbour (no transposed conv), concatenates the skip (layer3, layer2, layer1, the
    stem conv, then none) and applies (conv 3x3 - BN - ReLU) x 2, to 4w / 2w / w / w/2 / w/4
    channels: 256/128/64/32/16 at w = 64, smp's default. Dropout2d on layer4's output.

    With smp's 3x3 segmentation head and smp's initialisation (`smp_init`), at w = 64 with
    BatchNorm and no dropout the whole model is `smp.Unet("resnet34", encoder_weights=None,
    classes=1)`: the same modules, the same outputs for the same weights (tests/test_smp_equality.py)."""

    head_kernel_size = 3

    def __init__(self, base_channels: int, batchnorm: bool, dropout: float):
        super().__init__()
        self.dropout = dropout_layer(dropout)
        w = base_channels
        outs = [4 * w, 2 * w, w, max(w // 2, 1), max(w // 4, 1)]
        ins = [512, *outs[:-1]]
        self.blocks = nn.ModuleList(DoubleConv(c_in + c_skip, c_out, batchnorm)
                                    for c_in, c_skip, c_out in zip(ins, (256, 128, 64, 64, 0), outs))
        self.out_channels = outs[-1]

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x0, x1, x2, x3, x4 = feats
        x = self.dropout(x4)
        for block, skip in zip(self.blocks, (x3, x2, x1, x0, None)):
            x = nn.functional.interpolate(x, scale_factor=2.0, mode="nearest")
            x = block(x if skip is None else torch.cat([x, skip], dim=1))
        return x  # (B, w/4, H, W)

    def initialize(self, head: nn.Module) -> None:
        smp_init(self, head)
