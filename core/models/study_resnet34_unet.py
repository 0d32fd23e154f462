"""The study's own ResNet34+UNet (`model.name: study_resnet34_unet`), module for module: its
residual block, its bottleneck at 1/64 and its decoder (neither torchvision's ResNet34 nor the
course figure; those are `resnet34_unet`)."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..sections import ModelSpec
from .base import MODELS, SegmentationModel, check_input_size
from .blocks import ConvBNReLU, Head, Up, apply_head, dropout_layer

STAGES = ((64, 3), (128, 4), (256, 6), (512, 3))  # (width, blocks) of ResNet34's four stages
BOTTLENECK = 1024


def _strided_conv_bn_relu(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    """3x3 conv (no bias) with `stride`, BatchNorm, ReLU: `ConvBNReLU`'s layout with a stride."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class StudyResidualBlock(nn.Module):
    """The study's residual block: (conv 3x3 - BN - ReLU) x 2, THEN the shortcut is added, with no
    ReLU after the sum (torchvision's BasicBlock adds before its last ReLU). A block that changes
    the width halves the resolution: its first conv has stride 2 and its shortcut is a 1x1
    stride-2 conv + BN; otherwise the shortcut is the identity. The shortcut is registered
    first, as the study's block registers it."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        stride = 1 if c_in == c_out else 2
        self.shortcut = nn.Identity() if stride == 1 else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride=2, bias=False), nn.BatchNorm2d(c_out))
        self.body = nn.Sequential(_strided_conv_bn_relu(c_in, c_out, stride), ConvBNReLU(c_out, c_out, True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


class StudyResNet34Encoder(nn.Module):
    """7x7 stride-2 conv (no bias) - BN - ReLU, 3x3 stride-2 max-pool, then stages of 3/4/6/3
    `StudyResidualBlock`s at 64/128/256/512 (the first block of stages 2-4 down-samples).
    Returns the four stage outputs, at 1/4, 1/8, 1/16 and 1/32."""

    def __init__(self, in_channels: int = 3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False),
                                  nn.BatchNorm2d(64), nn.ReLU(inplace=True))
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        stages, c = [], 64
        for width, blocks in STAGES:
            stages.append(nn.Sequential(*(StudyResidualBlock(c if i == 0 else width, width) for i in range(blocks))))
            c = width
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.pool(self.stem(x))  # (B, 64, H/4, W/4)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats  # widths 64, 128, 256, 512 at 1/4 ... 1/32


@MODELS.register("study_resnet34_unet")
class StudyResNet34UNet(SegmentationModel):
    """The study's ResNet34+UNet (48,194,369 parameters). `StudyResNet34Encoder`; bottleneck: one
    more stride-2 residual block 512 -> 1024 (at 1/64) then Dropout2d(`dropout`); up-steps (2x2
    stride-2 transposed conv with bias halving the width, concat skip, (conv - BN - ReLU) x 2)
    to 512/256/128/64 with skips from stages 4, 3, 2, 1; then two (2x2 stride-2 transposed conv
    64 -> 64 without bias - BN - ReLU) back to full size; 1x1 conv head.

    Its widths and BatchNorm are the study's (`fixed`). Modules are registered in the order the
    study's constructors register theirs, so parameters come in its state-dict order and a
    seeded build with `model.init: he_fan_out` draws the study's initial weights.
    `load_study_state_dict` loads the study's checkpoints.
    """

    size_divisor = 64
    fixed = {"base_channels": 64, "batchnorm": True}

    def __init__(self, in_channels: int = 3, dropout: float = 0.0, head: Head = "logits"):
        super().__init__()
        self.head_kind = head
        self.encoder = StudyResNet34Encoder(in_channels)
        self.bottleneck = nn.Sequential(StudyResidualBlock(512, BOTTLENECK), dropout_layer(dropout))
        self.ups = nn.ModuleList(Up(2 * w, w, w, batchnorm=True) for w, _ in reversed(STAGES))
        self.final = nn.Sequential(*(layer for _ in range(2) for layer in (
            nn.ConvTranspose2d(64, 64, 2, stride=2, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True))))
        self.head = nn.Conv2d(64, 1, kernel_size=1)

    @classmethod
    def from_spec(cls, spec: ModelSpec, in_channels: int = 3) -> "StudyResNet34UNet":
        return cls(in_channels, spec.dropout, spec.head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size("study_resnet34_unet", self.size_divisor, x.shape[-2], x.shape[-1])
        skips = self.encoder(x)
        x = self.bottleneck(skips[-1])  # (B, 1024, H/64, W/64)
        for up, skip in zip(self.ups, reversed(skips)):
            x = up(x, skip)  # ... (B, 64, H/4, W/4)
        x = self.final(x)  # (B, 64, H, W)
        return apply_head(self.head(x), self.head_kind)  # (B, 1, H, W)
