"""The names a spec can hold (models, decoders, loss terms, datasets, optimisers, schedulers, sweep
engines), as a table that needs no torch: a spec's names are checked against it, and against what
was registered at run time, before anything heavy is imported. A test holds it equal to the registries.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

from .errors import UnknownNameError
from .registry import unknown_name


@dataclass(frozen=True)
class Builtin:
    """A registry (`attr` of `module`, relative to this package) and the names it holds built in."""

    module: str
    attr: str
    names: tuple[str, ...]


# Registry.kind -> the built-in entries. A new `@X.register("name")` needs its line here too
# (tests/test_names.py fails until it has one).
BUILTIN: dict[str, Builtin] = {
    "model": Builtin(".models.base", "MODELS", ("resnet34_unet", "study_resnet34_unet", "unet")),
    "decoder": Builtin(".models.decoders", "DECODERS", ("lab", "smp", "unet")),
    "loss": Builtin(".losses", "LOSSES", ("bce", "dice", "dice_batch", "double_sigmoid_bce", "focal")),
    "dataset": Builtin(".data.datasets", "DATASETS", ("folder", "oxford_pet", "synthetic")),
    "optimiser": Builtin(".optim", "OPTIMIZERS", ("adam", "adamw", "sgd")),
    "scheduler": Builtin(".optim", "SCHEDULERS", ("cosine", "none", "onecycle", "plateau", "step", "warmup_cosine")),
    "sweep engine": Builtin(".sweeps.engines", "SWEEP_ENGINES", ("optuna", "wandb")),
    "launcher": Builtin(".sweeps.launchers", "LAUNCHERS", ("local", "slurm")),
}


def names(kind: str) -> list[str]:
    """The valid names of `kind`: the built-in ones, and those of its registry when the module that
    holds it is already imported (a name registered at run time, by a user's own file, is there:
    registering needs that module). Imports nothing."""
    entry = BUILTIN[kind]
    module = sys.modules.get(f"{__package__}{entry.module}")
    live = getattr(module, entry.attr, None) if module is not None else None
    return sorted({*entry.names, *(live.names() if live is not None else ())})


def check_name(kind: str, name: str) -> str:
    """`name`, or `UnknownNameError` listing the valid names of `kind` (and the closest one)."""
    valid = names(kind)
    if name not in valid:
        raise UnknownNameError(unknown_name(kind, name, valid))
    return name
