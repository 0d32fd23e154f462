"""Experiment specs: loading, extends, overrides, identity, and every committed spec validates."""
from __future__ import annotations

from pathlib import Path

import pytest

from segsweep.errors import SpecError
from segsweep.spec import (
    ExperimentSpec, arm_hash, config_hash, load_spec, override_spec, parse_override,
    spec_keys, spec_to_dict,
)

REPO = Path(__file__).resolve().parents[1]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("spec_path", sorted((REPO / "experiments").glob("*.yaml")), ids=lambda p: p.name)
def test_every_committed_experiment_loads(spec_path: Path) -> None:
    spec = load_spec(spec_path)
    assert spec.name == spec_path.stem


def test_extends_deep_merges_and_child_wins(tmp_path: Path) -> None:
    write(tmp_path / "parent.yaml", "name: p\nmodel: {base_channels: 32, dropout: 0.2}\noptim: {lr: 0.01}\n")
    write(tmp_path / "child.yaml", "extends: parent.yaml\nname: c\nmodel: {dropout: 0.0}\n")
    spec = load_spec(tmp_path / "child.yaml")
    assert (spec.name, spec.model.base_channels, spec.model.dropout, spec.optim.lr) == ("c", 32, 0.0, 0.01)


def test_overrides_are_yaml_scalars_and_revalidated() -> None:
    spec = load_spec(REPO / "experiments" / "unet_he_init.yaml",
                     ["model.init=paper", "optim.lr=1e-3", "train.epochs=2", "model.batchnorm=false"])
    assert spec.model.init == "paper" and spec.optim.lr == pytest.approx(1e-3)
    assert spec.train.epochs == 2 and spec.model.batchnorm is False
    with pytest.raises(SpecError, match="override train.epochs=0"):
        override_spec(spec, {"train.epochs": 0})


@pytest.mark.parametrize("text, expected", [
    ("optim.lr=1e-3", ("optim.lr", 1e-3)),
    ("optim.lr=0.5", ("optim.lr", 0.5)),
    ("train.epochs=3", ("train.epochs", 3)),
    ("model.batchnorm=off", ("model.batchnorm", False)),
    ("model.head=logits", ("model.head", "logits")),
    ("train.grad_clip=null", ("train.grad_clip", None)),
])
def test_parse_override(text: str, expected: tuple) -> None:
    key, value = parse_override(text)
    assert (key, value) == expected and type(value) is type(expected[1])


def test_config_hash_ignores_name_and_tracking_but_not_choices() -> None:
    a = ExperimentSpec()
    assert config_hash(a) == config_hash(override_spec(a, {"name": "other", "tracking.tensorboard": True}))
    assert config_hash(a) != config_hash(override_spec(a, {"model.init": "paper"}))
    assert config_hash(a) != config_hash(override_spec(a, {"seed": 1}))
    assert arm_hash(a) == arm_hash(override_spec(a, {"seed": 1}))


def test_config_hash_is_stable_when_the_schema_grows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only non-default values are hashed: a new field left at its default changes no hash, so a
    sweep started before the field existed still finds its finished cells."""
    import segsweep.spec as spec_module

    # Setting a value equal to its default is the same run as leaving it out.
    assert config_hash(override_spec(ExperimentSpec(), {"optim.lr": 1e-4})) == config_hash(ExperimentSpec())
    a = override_spec(ExperimentSpec(), {"model.init": "paper", "optim.lr": 1e-3})
    before = config_hash(a), arm_hash(a)
    real = spec_module.spec_to_dict
    monkeypatch.setattr(spec_module, "spec_to_dict",
                        lambda s: {**real(s), "train": {**real(s)["train"], "new_field": 7}})
    assert (config_hash(a), arm_hash(a)) == before


def test_spec_keys_cover_every_leaf() -> None:
    keys = spec_keys()
    assert {"optim.lr", "model.init", "data.augment.affine_p", "tracking.wandb.mode"} <= set(keys)
    assert keys["optim.lr"] == spec_to_dict(ExperimentSpec())["optim"]["lr"]


def test_spec_names_are_the_registries_names() -> None:
    """Every name field accepts exactly what its registry holds; an unknown one lists them."""
    from segsweep.data import DATASETS
    from segsweep.models import DECODERS, MODELS
    from segsweep.optim import OPTIMIZERS, SCHEDULERS

    fields = {"data.name": DATASETS, "model.name": MODELS, "model.decoder": DECODERS,
              "optim.name": OPTIMIZERS, "optim.scheduler": SCHEDULERS}
    for key, registry in fields.items():
        for name in registry.names():
            base = {"model.name": "resnet34_unet", "data.image_size": 64} if key == "model.decoder" else {}
            spec = override_spec(ExperimentSpec(), {**base, key: name})
            assert spec_to_dict(spec)[key.split(".")[0]][key.split(".")[1]] == name
        with pytest.raises(SpecError) as info:
            override_spec(ExperimentSpec(), {key: registry.names()[0] + "x"})
        message = str(info.value)
        assert f"{key}: unknown {registry.kind}" in message and f"did you mean {registry.names()[0]!r}" in message
        assert all(repr(name) in message for name in registry.names()) and "\n" not in message


def test_model_options_are_checked_by_the_model() -> None:
    with pytest.raises(SpecError, match=r"model.decoder: decoder='lab' applies to resnet34_unet only; "
                                        r"unet takes decoder='unet'"):
        override_spec(ExperimentSpec(), {"model.decoder": "lab"})
    with pytest.raises(SpecError, match=r"model.encoder_weights: encoder_weights='imagenet' applies to"):
        override_spec(ExperimentSpec(), {"model.encoder_weights": "imagenet"})


def test_unknown_loss_key_lists_the_terms() -> None:
    with pytest.raises(SpecError, match=r"loss.dise: unknown key; did you mean 'dice'\? "
                                        r"valid keys: bce, dice, focal, focal_gamma, dice_batch, double_sigmoid_bce$"):
        override_spec(ExperimentSpec(), {"loss.dise": 1.0})


def test_size_error_names_nearest_valid_size() -> None:
    with pytest.raises(SpecError, match=r"data.image_size: .*divisible by 32; got 100, nearest valid size is 96"):
        override_spec(ExperimentSpec(), {"model.name": "resnet34_unet", "data.image_size": 100})
