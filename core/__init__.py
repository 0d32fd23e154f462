"""segsweep: segmentation experiments from YAML specs, sweeps over them, and reports that say
which design choices really matter.

    import segsweep
    spec = segsweep.load_spec("experiments/quickstart.yaml", ["train.epochs=2"])
    result = segsweep.fit(spec, "results/runs/mine")

The names below are the public API; everything else may change between versions. They are
imported on first use, so `import segsweep` stays light (no torch, albumentations, optuna or
wandb until a function needs them).
"""
from __future__ import annotations

import importlib
import os
from typing import Any

__version__ = "0.2.0"

# albumentations < 2.1 asks PyPI for a newer release when first imported (a blocking request on
# a machine without network). Every segsweep module is imported through this package, so this
# runs before any import of albumentations here; a value the user set is kept.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

# public name -> the module (relative to this package) that defines it
_API = {
    "SegsweepError": "errors", "SpecError": "errors", "DataError": "errors", "CheckpointError": "errors",
    "SweepError": "errors",
    "ExperimentSpec": "spec", "load_spec": "spec", "override_spec": "spec", "config_hash": "spec",
    "fit": "train", "RunResult": "train", "EvalResult": "train", "StopTraining": "train",
    "evaluate_checkpoint": "train",
    "load_sweep": "sweeps", "run_sweep": "sweeps", "SweepOutcome": "sweeps", "SWEEP_ENGINES": "sweeps",
    "write_report": "reports", "write_study_report": "reports", "ReportOptions": "reports",
    "Predictor": "inference",
    "Registry": "registry", "MODELS": "models", "DECODERS": "models", "LOSSES": "losses", "DATASETS": "data",
    "OPTIMIZERS": "optim", "SCHEDULERS": "optim",
    "build_tracker": "tracking",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'segsweep' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
