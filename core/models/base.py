"""The model registry (`MODELS`) and the contract every registered model follows
(`SegmentationModel`): its input-size divisor and its own spec options live on the class."""
from __future__ import annotations

from typing import Any, ClassVar, Mapping

import torch
import torch.nn as nn

from ..errors import SpecError, SpecFieldError
from ..registry import Registry
from ..sections import ModelSpec
from .init import Init, init_weights

MODELS = Registry("model")


def nearest_valid_size(size: int, divisor: int) -> int:
    """The multiple of `divisor` closest to `size` (ties go down, never below `divisor`)."""
    lower = max(divisor, size // divisor * divisor)
    return lower if size - lower <= lower + divisor - size else lower + divisor


def check_input_size(name: str, divisor: int, height: int, width: int) -> None:
    """Raise `SpecError` naming the nearest valid size when H or W is not a multiple of `divisor`."""
    if height % divisor or width % divisor:
        nearest = f"{nearest_valid_size(height, divisor)}x{nearest_valid_size(width, divisor)}"
        raise SpecError(
            f"{name} needs input height and width divisible by {divisor}; "
            f"got {height}x{width}, nearest valid size is {nearest}"
        )


def model_specific_options() -> list[str]:
    """The `model.*` keys some registered model declares as its own (`options`)."""
    keys: list[str] = []
    for name in MODELS.names():
        keys += [key for key in getattr(MODELS.get(name), "options", ()) if key not in keys]
    return keys


class SegmentationModel(nn.Module):
    """A network registered in `MODELS`: maps (B, C, H, W) to (B, 1, H, W) at input resolution,
    logits or probabilities as `model.head` says.

    A subclass sets `size_divisor` (H and W must be multiples of it), lists in `options` the
    model-specific `model.*` keys it takes (every other model rejects a non-default value of
    them), in `fixed` the `model.*` keys it does not let vary, with the one value it takes (a
    reproduction with fixed widths: `{"base_channels": 64}`), and implements `from_spec`.
    `build_model` calls `check_spec`, then `from_spec`, then `reset_parameters(model.init)` unless
    the init is `pytorch`.
    """

    size_divisor: int = 1
    options: tuple[str, ...] = ()
    fixed: ClassVar[Mapping[str, Any]] = {}

    @classmethod
    def from_spec(cls, spec: ModelSpec, in_channels: int = 3) -> "SegmentationModel":
        raise NotImplementedError

    @classmethod
    def check_spec(cls, spec: ModelSpec, image_size: int | None = None) -> None:
        """Raise `SpecFieldError` (with the dotted key) for options this model cannot take, for a
        `fixed` key set otherwise, and for an `image_size` that is not a multiple of `size_divisor`."""
        for key, only in cls.fixed.items():
            if getattr(spec, key) != only:
                raise SpecFieldError(f"model.{key}", f"{spec.name} takes only {key}={only!r} (fixed by the "
                                     f"network it reproduces); got {getattr(spec, key)!r}")
        for key in model_specific_options():
            value, default = getattr(spec, key), type(spec).model_fields[key].default
            if key not in cls.options and value != default:
                owners = " and ".join(n for n in MODELS.names() if key in getattr(MODELS.get(n), "options", ()))
                raise SpecFieldError(f"model.{key}", f"{key}={value!r} applies to {owners} only; "
                                     f"{spec.name} takes {key}={default!r}")
        divisor = cls.size_divisor
        if image_size is not None and image_size % divisor:
            raise SpecFieldError(
                "data.image_size",
                f"{spec.name} needs an input size divisible by {divisor}; "
                f"got {image_size}, nearest valid size is {nearest_valid_size(image_size, divisor)}",
            )

    def reset_parameters(self, scheme: Init) -> None:
        init_weights(self, scheme)


def predict_batch(model: nn.Module, images: torch.Tensor, tta: str = "none") -> torch.Tensor:
    """The model's output for an evaluation batch; `tta="hflip"` averages it with the mirrored
    image's output mirrored back (in the head's own space: logits or probabilities)."""
    output = model(images)
    if tta == "hflip":
        output = (output + model(images.flip(-1)).flip(-1)) / 2
    return output


def fit_problems(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor],
                 words: Mapping[str, str] | None = None) -> list[str]:
    """What keeps `state` from loading into a model whose state dict is `own`: its keys the model
    lacks, the model's keys it lacks, and the shapes that differ, each counted with its first
    example. `words` rewords the three ("unexpected", "missing", "mismatched") for the caller."""
    said = {"unexpected": "{n} unexpected keys (e.g. {k})", "missing": "{n} missing keys (e.g. {k})",
            "mismatched": "{n} shape mismatches (e.g. {k}: {theirs} vs {ours})", **(words or {})}
    found = {"missing": [k for k in own if k not in state], "unexpected": [k for k in state if k not in own],
             "mismatched": [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]}
    parts = []
    for kind in ("missing", "unexpected", "mismatched"):
        if found[kind]:
            k = found[kind][0]
            shapes = {"theirs": tuple(state[k].shape), "ours": tuple(own[k].shape)} if kind == "mismatched" else {}
            parts.append(said[kind].format(n=len(found[kind]), k=k, **shapes))
    return parts
