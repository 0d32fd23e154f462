"""Segmentation networks found by name (`MODELS`), `build_model(spec.model)`, and
`init_signature(spec.model)`, which tells when two specs build the same initial weights. Every
model maps (B, C, H, W) to (B, 1, H, W) at input resolution: logits, or probabilities when
`model.head == "sigmoid"`.

Adding a model is one file: a `SegmentationModel` subclass decorated `@MODELS.register("name")`
(its `size_divisor`, its own `options`, its `fixed` keys and `from_spec` on the class), imported below.
"""
from __future__ import annotations

import torch.nn as nn

from ..sections import ModelSpec
from .base import MODELS, SegmentationModel, check_input_size, model_specific_options, nearest_valid_size, predict_batch
from .blocks import ConvBNReLU, DoubleConv, Head, Up
from .decoders import DECODERS, LabDecoder, SmpDecoder, UNetDecoder
from .init import Init, fans, init_std, init_weights, meta_build, record_init_ops
from .resnet34_unet import IMAGENET_WEIGHTS, ResNet34Encoder, ResNet34UNet, load_imagenet_resnet34_state
from .study_resnet34_unet import StudyResNet34Encoder, StudyResNet34UNet, StudyResidualBlock
from .study_weights import load_study_state_dict
from .unet import UNet

__all__ = [
    "MODELS", "DECODERS", "SegmentationModel", "UNet", "ResNet34UNet", "ResNet34Encoder", "LabDecoder",
    "UNetDecoder", "SmpDecoder", "StudyResNet34UNet", "StudyResNet34Encoder", "StudyResidualBlock",
    "ConvBNReLU", "DoubleConv", "Up", "Head", "Init", "IMAGENET_WEIGHTS",
    "build_model", "init_signature", "predict_batch", "nearest_valid_size", "check_input_size",
    "model_specific_options", "fans", "init_std", "init_weights", "meta_build", "record_init_ops",
    "load_imagenet_resnet34_state", "load_study_state_dict",
]

# Spec fields that add no parameter and draw no random number when a model is built.
_NOT_IN_WEIGHTS = frozenset({"init", "head", "dropout"})


def _construct(spec: ModelSpec, in_channels: int) -> nn.Module:
    cls = MODELS.get(spec.name)
    cls.check_spec(spec)
    return cls.from_spec(spec, in_channels)


def build_model(spec: ModelSpec, in_channels: int = 3) -> nn.Module:
    """The network `spec` describes, initialised by `spec.init` (the caller seeds torch first)."""
    model = _construct(spec, in_channels)
    if spec.init != "pytorch":
        model.reset_parameters(spec.init)
    return model


def init_signature(spec: ModelSpec, in_channels: int = 3) -> tuple:
    """A value such that two specs with equal signatures build bit-identical initial weights
    (`build_model` after the same `torch.manual_seed`), at every seed. Unequal signatures promise
    nothing (the weights may still agree).

    It holds: the spec's fields except `init`, `head` and `dropout` (they add no parameter and
    draw nothing at build time), which fix how the model is constructed; the built model's
    class and structure, in order (each parameter and buffer: name, owning module's type, shape,
    dtype); and in place of `init`, the ordered in-place operations its `reset_parameters` makes
    on them, with their arguments (`record_init_ops`: op, target by name, std or bounds). The
    model is built on the meta device, so this costs milliseconds, not a real build; a spec with
    pretrained encoder weights still reads them, as `build_model` does.
    """
    construction = tuple(sorted(spec.model_dump(exclude=set(_NOT_IN_WEIGHTS)).items()))
    with meta_build():
        model = _construct(spec, in_channels)
    structure = tuple(
        (f"{prefix}.{name}" if prefix else name, type(module).__qualname__, tuple(tensor.shape), str(tensor.dtype))
        for prefix, module in model.named_modules()
        for name, tensor in (*module.named_parameters(recurse=False), *module.named_buffers(recurse=False))
        if tensor is not None
    )
    ops = record_init_ops(model, lambda: model.reset_parameters(spec.init)) if spec.init != "pytorch" else ()
    return (f"{type(model).__module__}.{type(model).__qualname__}", in_channels, construction, structure, ops)
