"""`model.decoder: smp` is `segmentation_models_pytorch.Unet("resnet34", encoder_weights=None)`:
the same modules (a 1:1 name mapping), the same outputs for the same weights, the same
initialisation. Skipped without smp (the `bench` extra), except under CI=true, where it fails."""
from __future__ import annotations

import math
import os

import pytest
import torch

from segsweep.export import from_smp_state, smp_key, to_smp_state
from segsweep.models import build_model
from segsweep.spec import ModelSpec


def smp_module():
    try:
        import segmentation_models_pytorch as smp
    except ImportError:
        if os.environ.get("CI", "").strip().lower() in ("true", "1"):
            pytest.fail("CI=true: segmentation_models_pytorch must be installed (the bench extra)", pytrace=False)
        pytest.skip("segmentation_models_pytorch is not installed (pip install -e '.[bench]')")
    return smp


def ours(seed: int, head: str = "logits") -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(ModelSpec(name="resnet34_unet", decoder="smp", base_channels=64, head=head))


def peer(seed: int, activation: str | None = None) -> torch.nn.Module:
    smp = smp_module()
    torch.manual_seed(seed)
    return smp.Unet("resnet34", encoder_weights=None, classes=1, activation=activation)


def test_every_parameter_and_buffer_maps_one_to_one_with_the_same_shape() -> None:
    model, ref = ours(0), peer(0)
    mapped = {smp_key(k): tuple(v.shape) for k, v in model.state_dict().items()}
    assert mapped == {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert tuple(model.head.weight.shape) == (1, 16, 3, 3) and model.head.padding == (1, 1)


@pytest.mark.parametrize("head, activation", [("logits", None), ("sigmoid", "sigmoid")])
def test_smp_weights_copied_into_ours_give_the_same_outputs(head: str, activation: str | None) -> None:
    ref = peer(1, activation)
    with torch.no_grad():  # running statistics away from 0 / 1, so eval-mode BatchNorm matters
        for m in ref.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    model = ours(2, head)
    model.load_state_dict(from_smp_state(ref.state_dict(), model), strict=True)
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got, want = model.eval()(x), ref.eval()(x)
    assert got.shape == want.shape == (2, 1, 64, 96)
    assert float((got - want).abs().max()) <= 1e-5
    assert to_smp_state(model.state_dict()).keys() == ref.state_dict().keys()


def test_seeded_builds_are_bit_identical_to_smp() -> None:
    """Same draws in the same order: smp's initialize_decoder / initialize_head, torchvision's
    ResNet init for the encoder."""
    model, ref = ours(7), peer(7)
    mapped, want = to_smp_state(model.state_dict()), ref.state_dict()
    different = [k for k in want if not torch.equal(mapped[k], want[k])]
    assert not different, different[:5]


def test_fresh_decoder_and_head_follow_smps_init_rules() -> None:
    """Independent of smp: decoder convs U(-b, b) with b = sqrt(6 / fan_in) (Kaiming-uniform,
    ReLU gain), BatchNorm 1 / 0; the head Xavier-uniform, b = sqrt(6 / (fan_in + fan_out)), bias 0."""
    model = ours(11)
    for m in model.decoder.modules():
        if isinstance(m, torch.nn.Conv2d):
            fan_in = m.in_channels * 9
            bound = math.sqrt(6 / fan_in)
            w = m.weight.detach()
            assert float(w.abs().max()) <= bound and float(w.abs().max()) > 0.95 * bound
            assert abs(float(w.std()) - bound / math.sqrt(3)) < 0.05 * bound / math.sqrt(3)
            assert m.bias is None  # followed by BatchNorm
        elif isinstance(m, torch.nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    head = model.head
    bound = math.sqrt(6 / (16 * 9 + 1 * 9))
    assert float(head.weight.detach().abs().max()) <= bound and torch.all(head.bias == 0)


def test_an_init_scheme_still_overrides_smps_default() -> None:
    torch.manual_seed(0)
    model = build_model(ModelSpec(name="resnet34_unet", decoder="smp", base_channels=64, init="he_normal"))
    w = model.head.weight.detach()
    assert float(w.abs().max()) > math.sqrt(6 / (16 * 9 + 9))  # a normal's tails pass Xavier's bound
