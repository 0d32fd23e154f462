"""Segmentation networks found by name (`MODELS`), and `build_model(spec.model)`. Every model
maps (B, C, H, W) to (B, 1, H, W) at input resolution: logits, or probabilities when
`model.head == "sigmoid"`.

Adding a model is one file: a `SegmentationModel` subclass decorated `@MODELS.register("name")`
(its `size_divisor`, its own `options` and `from_spec` on the class), imported below.
"""
from __future__ import annotations

import torch.nn as nn

from ..spec import ModelSpec
from .base import MODELS, SegmentationModel, check_input_size, model_specific_options, nearest_valid_size, predict_batch
from .blocks import ConvBNReLU, DoubleConv, Head, Up
from .decoders import DECODERS, LabDecoder, SmpDecoder, UNetDecoder
from .init import Init, fans, init_std, init_weights
from .resnet34_unet import IMAGENET_WEIGHTS, ResNet34Encoder, ResNet34UNet, load_imagenet_resnet34_state
from .unet import UNet

__all__ = [
    "MODELS", "DECODERS", "SegmentationModel", "UNet", "ResNet34UNet", "ResNet34Encoder", "LabDecoder",
    "UNetDecoder", "SmpDecoder", "ConvBNReLU", "DoubleConv", "Up", "Head", "Init", "IMAGENET_WEIGHTS",
    "build_model", "predict_batch", "nearest_valid_size", "check_input_size", "model_specific_options",
    "fans", "init_std", "init_weights", "load_imagenet_resnet34_state",
]


def build_model(spec: ModelSpec, in_channels: int = 3) -> nn.Module:
    """The network `spec` describes, initialised by `spec.init` (the caller seeds torch first)."""
    cls = MODELS.get(spec.name)
    cls.check_spec(spec)
    model = cls.from_spec(spec, in_channels)
    if spec.init != "pytorch":
        model.reset_parameters(spec.init)
    return model
