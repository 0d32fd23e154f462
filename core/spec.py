"""Experiment specs: typed, frozen, strictly validated YAML with `extends:` and dotted overrides.

`load_spec(path, overrides)` is the one way a spec is read: by `segsweep run`, the sweep
drivers (Optuna and W&B) and the tests. Every problem raises `SpecError` naming the file, the
dotted key, what was expected and what would be valid.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, ClassVar, Literal, Mapping, Sequence, Union

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from .errors import SpecError, validation_problem
from .names import names
from .trees import (  # noqa: F401  (re-exported: spec files and dotted trees)
    apply_overrides, deep_merge, flatten, parse_override, read_yaml, set_dotted, short_hash, typed_overrides,
)


from .sections import (  # noqa: F401  (re-exported: the data and model sections)
    registry, registered, DatasetName, ModelName, DecoderName, OptimizerName, SchedulerName, _LOSS_TERMS, SEED_MAX,
    _Section, AugmentSpec, SyntheticSpec, FolderSpec, DataSpec, ModelSpec, LossSpec, STUDY_MEAN, STUDY_STD, RGB,
    Subfolder,
)


class OptimSpec(_Section):
    name: OptimizerName = "adam"
    lr: float = Field(1e-4, gt=0, le=10)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)  # sgd only
    scheduler: SchedulerName = "none"
    step_size: int = Field(5, ge=1)  # epochs, for `step`
    gamma: float = Field(0.1, gt=0, le=1)  # decay factor for `step` and `plateau`
    plateau_patience: int = Field(2, ge=0)
    min_lr: float = Field(0.0, ge=0)  # floor of `cosine`
    warmup_epochs: int = Field(0, ge=0)


class TrainSpec(_Section):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(8, ge=1)
    eval_batch_size: int | None = Field(None, ge=1)  # None: 2 x batch_size
    grad_clip: float | None = Field(None, gt=0)  # max gradient norm
    early_stopping_patience: int | None = Field(None, ge=1)  # epochs without a better val/dice
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # auto: channels_last or NCHW by a short measured probe of this model, size, batch and threads on
    # this machine (cached; a sweep decides once for all its trials); true / false: as set
    channels_last: bool | Literal["auto"] = "auto"
    compile: bool = False
    deterministic: bool = False
    time_budget_s: float | None = Field(None, gt=0, allow_inf_nan=True)  # inf: no budget, like None
    threads: int | None = Field(None, ge=1)  # torch intra-op threads; None: torch's default
    predictions_every: int = Field(1, ge=1)  # epochs between prediction grids for trackers
    sync_batchnorm: bool = False  # under torchrun: BatchNorm statistics over every rank's batch (GPU only)
    final_test: bool = True  # test the best checkpoint when training ends (false: studies that tune on val only)
    tta: Literal["none", "hflip"] = "none"  # evaluation (val, test, evaluate.py, predict.py) averages image + mirror


class CheckpointSpec(_Section):
    added_later: ClassVar[Mapping[str, Any]] = {"monitor": "val/dice", "floor": None}

    keep_best: int = Field(1, ge=1)  # keep the top-k checkpoints by the monitored metric
    save_last: bool = True
    # The validation metric that picks the best epoch: val/dice (per-image, thresholded) or
    # val/dice_soft_batch8 (the study's soft Dice over batches of 8)
    monitor: Literal["val/dice", "val/dice_soft_batch8"] = "val/dice"
    # Keep an epoch only when its monitored metric is above this (the study: 0.7); when no epoch
    # passes, the run completes, tests its last epoch's weights and says so in summary.json
    floor: float | None = Field(None, ge=0, lt=1)


class WandbSpec(_Section):
    mode: Literal["auto", "online", "offline", "disabled"] = "auto"
    project: str = "segsweep"
    entity: str | None = None
    group: str | None = None
    job_type: str | None = None
    tags: tuple[str, ...] = ()
    name: str | None = None
    notes: str | None = None
    log_checkpoints: Literal["none", "best"] = "none"
    images_every: int = Field(1, ge=1)


class TrackingSpec(_Section):
    wandb: WandbSpec = WandbSpec()
    tensorboard: bool = False


class ExperimentSpec(_Section):
    name: str = Field("experiment", min_length=1, pattern=r"^[A-Za-z0-9_.+-]+$")
    seed: int = Field(0, ge=0, le=SEED_MAX)
    data: DataSpec = DataSpec()
    model: ModelSpec = ModelSpec()
    loss: LossSpec = LossSpec()
    optim: OptimSpec = OptimSpec()
    train: TrainSpec = TrainSpec()
    checkpoint: CheckpointSpec = CheckpointSpec()
    tracking: TrackingSpec = TrackingSpec()

    @model_validator(mode="after")
    def _model_accepts_spec(self) -> "ExperimentSpec":
        # The model owns its rules: its own options and its input-size divisor.
        registry(".models.MODELS").get(self.model.name).check_spec(self.model, self.data.image_size)
        for name, weight in (self.loss.model_extra or {}).items():  # so does a loss term used
            if weight > 0:
                registry(".losses.LOSSES").get(name).check_spec(self)
        return self


# --------------------------------------------------------------------------- loading


def _read_parent(path: Path, child: Path | None, ref: str) -> dict[str, Any]:
    """`read_yaml(path)`; for a parent named by `extends:`, a problem names the child's line."""
    if child is None:
        return read_yaml(path)
    if path.is_dir():
        raise SpecError(f"{child}: extends: {ref!r} is a directory ({path}); expected a YAML spec file")
    if path.suffix.lower() not in (".yaml", ".yml"):
        raise SpecError(f"{child}: extends: {ref!r} is not a YAML spec (expected a .yaml or .yml file)")
    try:
        return read_yaml(path)
    except SpecError as exc:
        raise SpecError(f"{child}: extends: {ref!r}: {str(exc).removeprefix(f'{path}: ')}") from None


def _resolve_extends(path: Path, chain: tuple[Path, ...] = (), ref: str = "") -> tuple[dict[str, Any], dict[str, Path]]:
    """Merge a spec with its `extends:` ancestors; also return which file set each dotted key."""
    path = path.resolve() if path.exists() else path
    if path in chain:
        cycle = " -> ".join(str(p) for p in (*chain, path))
        raise SpecError(f"{chain[-1]}: extends: cycle {cycle}")
    tree = _read_parent(path, chain[-1] if chain else None, ref)
    parent_ref = tree.pop("extends", None)
    if parent_ref is None:
        return tree, {key: path for key in flatten(tree)}
    if not isinstance(parent_ref, str):
        raise SpecError(f"{path}: extends: expected a path to another spec, got {parent_ref!r}")
    parent = (path.parent / parent_ref)
    if not parent.exists():
        raise SpecError(f"{path}: extends: parent spec {parent_ref!r} not found (looked at {parent})")
    base, origins = _resolve_extends(parent, (*chain, path), parent_ref)
    origins.update({key: path for key in flatten(tree)})
    return deep_merge(base, tree), origins


def _fields_at(model: type[BaseModel], loc: Sequence[str | int]) -> list[str]:
    """Field names of the section at `loc` (for 'valid keys' and 'did you mean')."""
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None:
            return []
        annotation = field.annotation
        candidates = getattr(annotation, "__args__", (annotation,))
        sections = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not sections:
            return []
        model = sections[0]
    return list(model.model_fields)


def _origin(key: str, origins: Mapping[str, Path], overrides: Mapping[str, Any], default: Path | None) -> str | None:
    """Where a dotted key was set: the override, the file of the extends chain, or the spec's
    source (None when there is none to name, e.g. a spec built in memory)."""
    for okey, value in overrides.items():
        if key == okey or key.startswith(okey + ".") or okey.startswith(key + "."):
            return f"override {okey}={value!r}"
    for candidate in (key, *(key.rsplit(".", n)[0] for n in range(1, key.count(".") + 1))):
        if candidate in origins:
            return str(origins[candidate])
    return None if default is None else str(default)


def validate_tree(
    tree: Mapping[str, Any],
    source: str | Path | None = None,
    origins: Mapping[str, Path] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> ExperimentSpec:
    """Validate a merged tree into an `ExperimentSpec`, or raise `SpecError` with one line."""
    try:
        return ExperimentSpec.model_validate(dict(tree))
    except ValidationError as exc:
        key, message = validation_problem(exc.errors()[0], valid_keys=lambda loc: _fields_at(ExperimentSpec, loc))
        where = _origin(key, origins or {}, overrides or {}, None if source is None else Path(str(source)))
        more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise SpecError(f"{f'{where}: ' if where else ''}{key}: {message}{more}") from None


def load_spec(path: str | Path, overrides: Sequence[str] | Mapping[str, Any] = ()) -> ExperimentSpec:
    """Read `path` (following `extends:`), apply dotted overrides, validate the whole tree."""
    path = Path(path)
    tree, origins = _resolve_extends(path)
    typed = typed_overrides(overrides)
    tree = apply_overrides(tree, typed)
    return validate_tree(tree, path, origins, typed)


def override_spec(spec: ExperimentSpec, overrides: Sequence[str] | Mapping[str, Any]) -> ExperimentSpec:
    """A new spec with overrides applied and the whole tree re-validated."""
    typed = typed_overrides(overrides)
    return validate_tree(apply_overrides(spec_to_dict(spec), typed), None, None, typed)


# --------------------------------------------------------------------------- identity


def spec_to_dict(spec: ExperimentSpec) -> dict[str, Any]:
    """Plain JSON/YAML-able tree of the resolved spec (tuples become lists)."""
    return spec.model_dump(mode="json")


def spec_to_yaml(spec: ExperimentSpec) -> str:
    return yaml.safe_dump(spec_to_dict(spec), sort_keys=False)


_MISSING = object()


# Settings that change how fast a run goes, not what it computes (beyond float round-off), so
# never its identity: the memory format is chosen by measurement (`auto`) or by hand, and a run,
# sweep cell or sweep keeps its hash whichever it got. Each with the one value hashes saw before
# it became a speed choice (a config.yaml from then says `channels_last: true`).
SPEED_ONLY = {"train.channels_last": True}


def identity_tree(spec: ExperimentSpec) -> dict[str, Any]:
    """`spec_to_dict(spec)` with the speed-only settings at the values hashes always saw."""
    tree = spec_to_dict(spec)
    for key, value in SPEED_ONLY.items():
        section, name = key.split(".")
        tree[section][name] = value
    return tree


def _identity(spec: ExperimentSpec, drop: tuple[str, ...]) -> str:
    """Hash of the values that differ from the defaults, less the `drop` sections.

    Only non-default values count, so adding a field (with a default that keeps old behaviour)
    leaves every existing run's and sweep cell's hash as it was.
    """
    defaults = flatten(spec_to_dict(ExperimentSpec()))
    values = {key: value for key, value in flatten(spec_to_dict(spec)).items()
              if key.split(".")[0] not in drop and key not in SPEED_ONLY and value != defaults.get(key, _MISSING)}
    return short_hash(values)


def config_hash(spec: ExperimentSpec) -> str:
    """Identity of what is trained: the resolved spec without `name` and `tracking`."""
    return _identity(spec, ("tracking", "name"))


@functools.lru_cache(maxsize=1)
def _defaults() -> dict[str, Any]:
    return flatten(spec_to_dict(ExperimentSpec()))


def seed_free_values(spec: ExperimentSpec) -> dict[str, Any]:
    """The values `config_hash` hashes, less the seed: compute once, then `config_hash_at(values, seed)`."""
    defaults = _defaults()
    return {key: value for key, value in flatten(spec_to_dict(spec)).items()
            if key.split(".")[0] not in ("tracking", "name", "seed") and key not in SPEED_ONLY
            and value != defaults.get(key, _MISSING)}


def config_hash_at(values: Mapping[str, Any], seed: int) -> str:
    """`config_hash` of the spec whose `seed_free_values` are `values`, at `seed` (no validation:
    a valid spec with another valid seed is valid)."""
    if not 0 <= seed <= SEED_MAX:
        raise SpecError(f"seed: expected an integer in 0..{SEED_MAX}, got {seed}")
    if seed != ExperimentSpec.model_fields["seed"].default:
        return short_hash({**values, "seed": seed})
    return short_hash(dict(values))


def arm_hash(spec: ExperimentSpec) -> str:
    """Identity of an ablation arm: `config_hash` without the seed."""
    return _identity(spec, ("tracking", "name", "seed"))


def _field_defaults(section: BaseModel, prefix: str = "") -> dict[str, Any]:
    """Every dotted key below `section` with its value, including keys a section writes only
    when set (`added_later`)."""
    out: dict[str, Any] = {}
    for name in type(section).model_fields:
        value = getattr(section, name)
        if isinstance(value, BaseModel):
            out.update(_field_defaults(value, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = list(value) if isinstance(value, tuple) else value
    return out


def spec_keys() -> dict[str, Any]:
    """Every valid dotted key with its default: what sweep parameters may name (with the weight
    `loss.<name>` of every registered loss term)."""
    keys = _field_defaults(ExperimentSpec())
    for name in names("loss"):
        keys.setdefault(f"loss.{name}", 0.0)
    return keys


def spec_from_dict(tree: Union[Mapping[str, Any], None], source: str = "<checkpoint>") -> ExperimentSpec:
    """Validate a stored spec (from a checkpoint or config.yaml)."""
    if not isinstance(tree, Mapping):
        raise SpecError(f"{source}: no experiment spec stored")
    return validate_tree(tree, source)
