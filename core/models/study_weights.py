"""`load_study_state_dict`: weights saved by the study's code (`torch.save(model.state_dict())` of
its `UNet` or `ResNet34UNet`) into our `unet` or `study_resnet34_unet`, by renaming its keys."""
from __future__ import annotations

import re
from typing import Callable, Mapping

import torch
import torch.nn as nn

from ..errors import CheckpointError
from .base import fit_problems
from .study_resnet34_unet import StudyResNet34UNet
from .unet import UNet

Rule = tuple[str, Callable[[re.Match], str]]


def _conv_block(j: str) -> str:
    # The study's ConvBlock is one Sequential (conv, BN, ReLU, conv, BN, ReLU) at 0..5; our
    # DoubleConv holds two ConvBNReLU (conv, BN, ReLU): its index j is our j // 3 . j % 3.
    return f"{int(j) // 3}.{int(j) % 3}"


_UNET: list[Rule] = [  # the study's UNet (`models/unet.py`, any feature_sizes) -> our unet
    (r"downs\.(\d+)\.conv\.(\d+)\.(\w+)", lambda m: f"downs.{m[1]}.{_conv_block(m[2])}.{m[3]}"),
    (r"bottleneck\.0\.conv\.(\d+)\.(\w+)", lambda m: f"bottleneck.0.{_conv_block(m[1])}.{m[2]}"),
    # its `ups` alternates transposed conv (even index) and ConvBlock (odd); ours pairs them in `Up`
    (r"ups\.(\d*[02468])\.(\w+)", lambda m: f"ups.{int(m[1]) // 2}.up.{m[2]}"),
    (r"ups\.(\d*[13579])\.conv\.(\d+)\.(\w+)", lambda m: f"ups.{int(m[1]) // 2}.conv.{_conv_block(m[2])}.{m[3]}"),
    (r"final_conv\.0\.(\w+)", lambda m: f"head.{m[1]}"),
]

_RESIDUAL = r"(shortcut\.\d+|block\.(\d+)\.(conv|bn))\.(\w+)"  # inside the study's ResidualBlock


def _residual(m: re.Match, first: int) -> str:
    """A key inside the study's ResidualBlock (groups from `first` on) in our StudyResidualBlock."""
    if m[first + 1] is None:
        return f"{m[first]}.{m[first + 3]}"  # shortcut.0 / shortcut.1: the same names
    return f"body.{m[first + 1]}.{0 if m[first + 2] == 'conv' else 1}.{m[first + 3]}"


_RESNET: list[Rule] = [  # the study's ResNet34UNet (`models/resnet34_unet.py`) -> study_resnet34_unet
    (r"encoder\.conv1\.(\d+)\.(\w+)", lambda m: f"encoder.stem.{m[1]}.{m[2]}"),
    (rf"encoder\.layers\.(\d+)\.(\d+)\.{_RESIDUAL}", lambda m: f"encoder.stages.{m[1]}.{m[2]}.{_residual(m, 3)}"),
    (rf"decoder\.bottleneck\.0\.{_RESIDUAL}", lambda m: f"bottleneck.0.{_residual(m, 1)}"),
    (r"decoder\.ups\.(\d*[02468])\.(\w+)", lambda m: f"ups.{int(m[1]) // 2}.up.{m[2]}"),
    (r"decoder\.ups\.(\d*[13579])\.conv\.(\d+)\.(\w+)",
     lambda m: f"ups.{int(m[1]) // 2}.conv.{_conv_block(m[2])}.{m[3]}"),
    (r"decoder\.final_conv\.([0-5])\.(\w+)", lambda m: f"final.{m[1]}.{m[2]}"),
    (r"decoder\.final_conv\.6\.(\w+)", lambda m: f"head.{m[1]}"),
]

_LAYOUTS: dict[type, tuple[str, str, list[Rule]]] = {  # our class -> (our name, the study's class, rules)
    UNet: ("unet", "UNet", _UNET),
    StudyResNet34UNet: ("study_resnet34_unet", "ResNet34UNet", _RESNET),
}


def study_key(key: str, rules: list[Rule]) -> str | None:
    """Our name for the study's state-dict key `key`, or None when no rule knows it."""
    for pattern, rename in rules:
        match = re.fullmatch(pattern, key)
        if match:
            return rename(match)
    return None


def _unet_hint(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> str:
    first = state_dict.get("downs.0.conv.0.weight")
    if first is None or not isinstance(model, UNet):
        return ""
    b, ours = first.shape[0], model.downs[0][0][0].out_channels
    hints = [f"its feature_sizes start at {b}: build with model.base_channels={b}"] if b != ours else []
    if not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        hints.append("it has BatchNorm: build with model.batchnorm=true")
    return f" ({'; '.join(hints)})" if hints else ""


def load_study_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Load a state dict saved by the study's code into `model`: its `UNet` (any `feature_sizes`
    of the form b, 2b, 4b, 8b; head `final_conv.0`) into our `unet` at base_channels b with
    BatchNorm, its `ResNet34UNet` into our `study_resnet34_unet`. Keys are renamed (the study's
    UNet registers `ups` before `bottleneck`; ours the other way, so the order differs too).

    Raises `CheckpointError` (one line) for another model, a key without a counterpart on either
    side, or a shape that differs.
    """
    layout = _LAYOUTS.get(type(model))
    if layout is None:
        valid = ", ".join(f"its {study} into {ours}" for ours, study, _ in _LAYOUTS.values())
        raise CheckpointError(f"the study's weights load {valid}; got a {type(model).__name__}")
    name, study, rules = layout
    ours = model.state_dict()
    renamed: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state_dict.items():
        target = study_key(key, rules)
        if target is None or target not in ours:
            unknown.append(key)
        else:
            renamed[target] = value
    problems = [f"{len(unknown)} key(s) {name} has no counterpart for (first: {unknown[0]!r})"] if unknown else []
    problems += fit_problems(ours, renamed, {
        "missing": f"{{n}} parameter(s) of {name} missing (first: {{k!r}})",
        "mismatched": f"{{n}} shape(s) differ (first: {{k}} is {{theirs}} here, {{ours}} in {name})"})
    if problems:
        raise CheckpointError(f"not a state dict of the study's {study} that fits this {name}: "
                              f"{'; '.join(problems)}{_unet_hint(model, state_dict)}")
    model.load_state_dict(renamed)
