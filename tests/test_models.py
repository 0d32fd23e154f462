"""Models: shapes and gradients for every registered model and toggle, init statistics and
signatures, the ResNet34 encoder against torchvision, ImageNet weights without network, invalid
input sizes."""
from __future__ import annotations

import math
import typing
import urllib.error

import pytest
import torch
import torch.nn as nn

from segsweep.errors import CheckpointError, SpecError, SpecFieldError
from segsweep.models import (
    DECODERS, MODELS, ResNet34UNet, UNet, build_model, fans, init_signature, nearest_valid_size,
)
from segsweep.spec import ModelSpec

# A strength-2 covering array over (batchnorm, dropout, head, decoder): every value of every
# toggle, and every pair of values of two toggles, appears in at least one case.
COVERING = [(0, 0, 0, 0), (0, 1, 1, 1), (1, 0, 1, 1), (1, 1, 0, 1), (1, 1, 1, 0), (0, 0, 0, 2), (1, 1, 1, 2)]
INITS = typing.get_args(ModelSpec.model_fields["init"].annotation)


def allowed(name: str, key: str, value):
    """`value` for `model.<key>`, or the one value the model fixes for it (its `fixed`)."""
    return MODELS.get(name).fixed.get(key, value)


def toggle_cases() -> list[tuple[str, bool, float, str, str]]:
    """The covering array for every model, each toggle projected onto what the model allows."""
    cases = []
    for name in MODELS.names():
        decoders = DECODERS.names() if "decoder" in MODELS.get(name).options else ["unet"]
        for bn, drop, head, dec in COVERING:
            cases.append((name, allowed(name, "batchnorm", bool(bn)), (0.0, 0.3)[drop], ("logits", "sigmoid")[head],
                          decoders[dec % len(decoders)]))
    return sorted(set(cases))


def tiny(name: str, **kw) -> ModelSpec:
    """The smallest spec of `name`: width 8, unless the model fixes its widths."""
    return ModelSpec(name=name, base_channels=allowed(name, "base_channels", 8), **kw)


def test_every_registered_model_declares_its_rules():
    """Facts about a model live on its class: a positive size divisor, its own options and the
    keys it fixes, which it refuses to vary with one line naming the key."""
    for name in MODELS.names():
        cls = MODELS.get(name)
        assert isinstance(cls.size_divisor, int) and cls.size_divisor >= 1, name
        assert set(cls.options) <= set(ModelSpec.model_fields), name
        assert set(cls.fixed) <= set(ModelSpec.model_fields) - set(cls.options) - {"name"}, name
        cls.check_spec(tiny(name), cls.size_divisor)  # the defaults are valid for every model
        for key, only in cls.fixed.items():
            other = (not only) if isinstance(only, bool) else only // 2
            with pytest.raises(SpecFieldError) as info:
                cls.check_spec(tiny(name).model_copy(update={key: other}))
            assert info.value.key == f"model.{key}" and "\n" not in str(info.value), name


def test_unknown_model_name_lists_valid_names():
    with pytest.raises(SpecError, match="unknown model 'unte'.*did you mean 'unet'.*resnet34_unet"):
        MODELS.get("unte")


@pytest.mark.parametrize("name,batchnorm,dropout,head,decoder", toggle_cases())
def test_forward_shape_range_and_finite_grads(name, batchnorm, dropout, head, decoder):
    torch.manual_seed(0)
    model = build_model(tiny(name, batchnorm=batchnorm, dropout=dropout, head=head, decoder=decoder))
    size = MODELS.get(name).size_divisor
    x = torch.randn(2, 3, 2 * size, size)  # non-square: height and width are not mixed up
    out = model(x)
    assert out.shape == (2, 1, 2 * size, size)
    assert out.dtype == torch.float32
    if head == "sigmoid":
        assert out.min() >= 0 and out.max() <= 1
    (out.float() ** 2).mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())
    has_bn = any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert has_bn == batchnorm
    has_dropout = any(isinstance(m, nn.Dropout2d) for m in model.modules())
    assert has_dropout == (dropout > 0)


@pytest.mark.parametrize("name", MODELS.names())
def test_dropout_is_active_in_train_mode_only(name):
    torch.manual_seed(0)
    model = build_model(tiny(name, dropout=0.5))
    size = max(32, MODELS.get(name).size_divisor)
    x = torch.randn(2, 3, size, size)
    model.train()
    assert not torch.allclose(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


def test_decoder_convs_have_bias_only_without_batchnorm():
    for batchnorm in (True, False):
        model = build_model(tiny("unet", batchnorm=batchnorm))
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
        assert convs and all((m.bias is None) == batchnorm for m in convs)


def test_unet_options_for_resnet_only_are_rejected():
    with pytest.raises(SpecError, match="model.decoder: decoder='lab' applies to resnet34_unet only"):
        build_model(tiny("unet", decoder="lab"))
    with pytest.raises(SpecError, match="model.encoder_weights: encoder_weights='imagenet' applies to resnet34_unet"):
        build_model(tiny("unet", encoder_weights="imagenet"))


def test_unet_channel_layout_follows_base_channels():
    model = UNet(base_channels=8)
    assert [d[1][0].out_channels for d in model.downs] == [8, 16, 32, 64]
    assert model.bottleneck[0][1][0].out_channels == 128  # 16 * base at the bottleneck
    assert [u.up.out_channels for u in model.ups] == [64, 32, 16, 8]


def test_lab_decoder_matches_the_course_figure():
    model = ResNet34UNet(decoder="lab")  # base 64 -> 32-channel decoder blocks
    feats = {}
    model.decoder.bottleneck.register_forward_hook(lambda m, i, o: feats.setdefault("bottleneck", o))
    for k, block in enumerate(model.decoder.blocks):
        block.register_forward_hook(lambda m, i, o, k=k: feats.setdefault(k, o))
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert feats["bottleneck"].shape == (1, 256, 2, 2)  # 512 -> 256 at 1/32
    assert model.decoder.blocks[0].up.in_channels == 768  # concatenated with layer4's 512
    assert [feats[k].shape[1:] for k in range(5)] == [(32, 4, 4), (32, 8, 8), (32, 16, 16), (32, 32, 32), (32, 64, 64)]
    assert out.shape == (1, 1, 64, 64)


def test_unet_decoder_channels_and_stem_skip():
    model = ResNet34UNet(decoder="unet")
    ups = [b.up.out_channels for b in model.decoder.blocks]
    assert ups == [256, 128, 64, 64, 32]
    skips = [b.conv[0][0].in_channels - b.up.out_channels for b in model.decoder.blocks]
    assert skips == [256, 128, 64, 64, 0]  # layer3, layer2, layer1, stem (1/2), none


def test_smp_decoder_is_segmentation_models_pytorch_unet_decoder():
    """decoder=smp at width 64 has exactly the parameters of smp's `Unet("resnet34").decoder`
    (3,151,552, counted from smp 0.6.0; compared live when smp is installed)."""
    model = build_model(ModelSpec(name="resnet34_unet", decoder="smp", base_channels=64))
    count = sum(p.numel() for p in model.decoder.parameters())
    assert count == 3_151_552
    shapes = [tuple(m.weight.shape) for m in model.decoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert shapes[0] == (256, 512 + 256, 3, 3) and shapes[-1] == (16, 16, 3, 3)
    try:
        import segmentation_models_pytorch as smp
    except ImportError:
        return
    peer = smp.Unet("resnet34", encoder_weights=None, classes=1)
    assert count == sum(p.numel() for p in peer.decoder.parameters())


def test_resnet34_encoder_parameter_count_equals_torchvision():
    from torchvision.models import resnet34

    reference = resnet34(weights=None)
    expected = sum(p.numel() for n, p in reference.named_parameters() if not n.startswith("fc."))
    model = ResNet34UNet(base_channels=8)
    assert sum(p.numel() for p in model.encoder.parameters()) == expected == 21_284_672
    names = {n for n, _ in reference.named_parameters() if not n.startswith("fc.")}
    assert {n for n, _ in model.encoder.named_parameters()} == names  # state dicts line up


# --------------------------------------------------------------------------- initialisation


def _std_ok(weight: torch.Tensor, expected: float, tol: float = 0.10) -> bool:
    return abs(weight.std().item() / expected - 1) < tol


@pytest.mark.parametrize("scheme", ["he_normal", "he_uniform", "xavier", "paper"])
def test_unet_init_statistics(scheme):
    torch.manual_seed(0)
    model = build_model(tiny("unet", init=scheme))
    conv = model.bottleneck[0][0][0]  # 64 -> 128, 3x3: 73,728 weights
    tconv = model.ups[0].up  # transposed 128 -> 64, 2x2 stride 2
    fan_in, fan_out = 64 * 9, 128 * 9
    t_fan_in, t_fan_out = 128, 64 * 4  # one output pixel sees one input pixel of 128 channels
    assert fans(conv) == (fan_in, fan_out) and fans(tconv) == (t_fan_in, t_fan_out)
    if scheme == "xavier":
        assert _std_ok(conv.weight, math.sqrt(2 / (fan_in + fan_out)))
        assert _std_ok(tconv.weight, math.sqrt(2 / (t_fan_in + t_fan_out)))
    else:
        assert _std_ok(conv.weight, math.sqrt(2 / fan_in))
        assert _std_ok(tconv.weight, math.sqrt(2 / t_fan_in))
    if scheme in ("he_uniform", "xavier"):  # uniform: |w| bounded by sqrt(3) std
        assert conv.weight.abs().max() <= math.sqrt(3) * conv.weight.std() * 1.05
    else:
        assert conv.weight.abs().max() > 2.5 * conv.weight.std()  # Gaussian tails
    biases = [m.bias for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and m.bias is not None]
    assert biases and all(torch.count_nonzero(b) == 0 for b in biases)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in bns)


def test_pytorch_init_leaves_torch_defaults():
    torch.manual_seed(0)
    model = build_model(tiny("unet", init="pytorch"))
    conv = model.bottleneck[0][0][0]
    # torch default: kaiming_uniform(a=sqrt(5)) -> U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert _std_ok(conv.weight, 1 / math.sqrt(3 * 64 * 9))


def test_paper_init_equals_he_normal_for_the_unet():
    weights = {}
    for scheme in ("paper", "he_normal"):
        torch.manual_seed(3)
        weights[scheme] = build_model(tiny("unet", init=scheme)).state_dict()
    assert all(torch.equal(weights["paper"][k], weights["he_normal"][k]) for k in weights["paper"])


def test_equal_init_signatures_build_equal_weights():
    """`init_signature`: he_normal and paper give the UNet one signature and, at every seed
    tried, the same weights; head and dropout draw nothing and do not count."""
    specs = [tiny("unet", init="he_normal"), tiny("unet", init="paper"),
             tiny("unet", init="paper", head="sigmoid", dropout=0.3)]
    assert len({init_signature(spec) for spec in specs}) == 1
    for seed in (0, 1, 7):
        states = []
        for spec in specs:
            torch.manual_seed(seed)
            states.append(build_model(spec).state_dict())
        assert all(torch.equal(states[0][k], other[k]) for other in states[1:] for k in states[0])


@pytest.mark.parametrize("a,b", [
    ({"init": "he_fan_out"}, {"init": "paper_fan_in"}),
    ({"init": "pytorch"}, {"init": "he_normal"}),
    ({"init": "he_normal"}, {"init": "he_fan_out"}),
    ({"init": "he_normal"}, {"init": "he_normal", "base_channels": 16}),
    ({"init": "he_normal"}, {"init": "he_normal", "batchnorm": False}),
])
def test_init_signatures_that_differ(a, b):
    assert init_signature(ModelSpec(**{"base_channels": 8, **a})) != init_signature(ModelSpec(**{"base_channels": 8, **b}))


@pytest.mark.parametrize("name", MODELS.names())
def test_init_signature_of_every_model_and_scheme(name):
    """Every model has a signature for every scheme, from a meta build (no weights drawn); only
    `pytorch` re-initialises nothing, and no two schemes agree but `paper` and `he_normal` (on
    the UNet, where the paper's fan-in rule is He's)."""
    signatures = {scheme: init_signature(tiny(name, init=scheme)) for scheme in INITS}
    assert signatures["pytorch"][-1] == ()
    assert all(signatures[scheme][-1] for scheme in INITS if scheme != "pytorch")
    others = {scheme: sig for scheme, sig in signatures.items() if scheme != "paper"}
    assert len(set(others.values())) == len(others)
    if name == "unet":
        assert signatures["paper"] == signatures["he_normal"]


@pytest.mark.parametrize("scheme,fan", [("he_fan_out", "fan_out"), ("paper_fan_in", "fan_in")])
def test_study_schemes_on_the_unet(scheme, fan):
    """The study's two schemes: N(0, 2/fan) on every Conv2d only (torch's fans); transposed convs
    keep PyTorch's default (U(-1/sqrt(fan), ...) with torch's fan-in = out_channels * 4)."""
    torch.manual_seed(0)
    model = build_model(tiny("unet", init=scheme))
    conv, tconv = model.bottleneck[0][0][0], model.ups[0].up  # 64 -> 128 3x3; 128 -> 64 2x2
    assert _std_ok(conv.weight, math.sqrt(2 / ({"fan_in": 64, "fan_out": 128}[fan] * 9)))
    assert _std_ok(tconv.weight, 1 / math.sqrt(3 * 64 * 4))
    assert torch.count_nonzero(tconv.bias) > 0


@pytest.mark.parametrize("scheme,mode", [("paper", "fan_out"), ("he_normal", "fan_in"), ("xavier", "both")])
def test_resnet_encoder_init_statistics(scheme, mode):
    torch.manual_seed(0)
    model = build_model(tiny("resnet34_unet", init=scheme))
    conv = model.encoder.layer4[0].conv1  # 256 -> 512, 3x3: fan-in and fan-out differ by 2x
    fan_in, fan_out = 256 * 9, 512 * 9
    expected = {"fan_out": math.sqrt(2 / fan_out), "fan_in": math.sqrt(2 / fan_in),
                "both": math.sqrt(2 / (fan_in + fan_out))}[mode]
    assert _std_ok(conv.weight, expected, tol=0.05)
    # the decoder follows the U-Net paper's fan-in rule under `paper`
    dconv = model.decoder.blocks[0].conv[0][0]  # (384 + 256) -> 4 channels, 3x3
    d_fan_in, d_fan_out = dconv.in_channels * 9, dconv.out_channels * 9
    expected = math.sqrt(2 / (d_fan_in + d_fan_out)) if scheme == "xavier" else math.sqrt(2 / d_fan_in)
    assert _std_ok(dconv.weight, expected)


# --------------------------------------------------------------------------- ImageNet weights


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    """An empty torch hub cache, and a network that is never touched."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path


def test_imagenet_weights_unavailable_fail_fast_with_one_line(hub_dir):
    with pytest.raises(CheckpointError) as info:
        build_model(tiny("resnet34_unet", encoder_weights="imagenet"))
    message = str(info.value)
    assert "\n" not in message
    assert "model.encoder_weights: imagenet" in message and "ResNet34_Weights.IMAGENET1K_V1" in message
    assert str(hub_dir / "checkpoints" / "resnet34-b627a593.pth") in message
    assert "model.encoder_weights=none" in message


def _cache_fake_imagenet(hub_dir) -> dict[str, torch.Tensor]:
    from torchvision.models import resnet34

    torch.manual_seed(123)
    reference = resnet34(weights=None)
    for m in reference.modules():  # non-trivial BN statistics, so folding is really tested
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    state = reference.state_dict()
    (hub_dir / "checkpoints").mkdir()
    torch.save(state, hub_dir / "checkpoints" / "resnet34-b627a593.pth")
    return state


def test_imagenet_weights_load_from_cache_and_init_touches_only_the_decoder(hub_dir):
    state = _cache_fake_imagenet(hub_dir)
    torch.manual_seed(0)
    model = build_model(tiny("resnet34_unet", encoder_weights="imagenet", init="xavier"))
    encoder = model.encoder.state_dict()
    assert all(torch.equal(encoder[k], state[k]) for k in encoder)
    dconv = model.decoder.blocks[0].conv[0][0]
    fan_in, fan_out = dconv.in_channels * 9, dconv.out_channels * 9
    assert _std_ok(dconv.weight, math.sqrt(2 / (fan_in + fan_out)))


def test_imagenet_weights_without_batchnorm_fold_the_statistics(hub_dir):
    _cache_fake_imagenet(hub_dir)
    with_bn = build_model(tiny("resnet34_unet", encoder_weights="imagenet")).eval()
    folded = build_model(tiny("resnet34_unet", encoder_weights="imagenet", batchnorm=False)).eval()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(with_bn.encoder(x), folded.encoder(x)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- input sizes


@pytest.mark.parametrize("size,divisor,nearest", [(50, 16, 48), (57, 16, 64), (56, 16, 48), (8, 16, 16),
                                                  (40, 32, 32), (50, 32, 64), (130, 32, 128)])
def test_nearest_valid_size(size, divisor, nearest):
    assert nearest_valid_size(size, divisor) == nearest


@pytest.mark.parametrize("name", MODELS.names())
def test_invalid_input_size_names_the_nearest_valid_size(name):
    model = build_model(tiny(name))
    divisor = MODELS.get(name).size_divisor
    height = 2 * divisor + 3
    with pytest.raises(SpecError) as info:
        model(torch.randn(1, 3, height, divisor))
    message = str(info.value)
    assert f"divisible by {divisor}" in message
    assert f"got {height}x{divisor}, nearest valid size is {2 * divisor}x{divisor}" in message
