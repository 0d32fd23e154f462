"""The study's networks and initialisations, against values taken from the study's own code
(syzygy608/TAICA_DL_Labs, Lab2/src at 6811739, run outside this repository):

- parameter counts of its `UNet(3, 1)` and `ResNet34UNet()`;
- its state-dict layouts (sha256 of the "key shape" lines), so that the layouts written out below
  are the study's and `load_study_state_dict` is tested with its real key names;
- the outputs of its models, in eval mode on a fixed input, with every tensor filled by `fill`;
- its initial weights at `torch.manual_seed(0)` (it calls `kaiming_normal_(mode="fan_out")` on
  every Conv2d at construction: our `he_fan_out`).

The values were printed by a script that imports the study's `models.unet.UNet` and
`models.resnet34_unet.ResNet34UNet`, fills them with `fill` below and runs them (see the
report of issue "The study, exactly"); nothing of that code is in this repository.
"""
from __future__ import annotations

import hashlib
import math

import pytest
import torch
import torch.nn as nn

from segsweep.errors import CheckpointError, SpecError, SpecFieldError
from segsweep.models import (
    StudyResidualBlock, build_model, load_study_state_dict, meta_build, record_init_ops,
)
from segsweep.spec import ExperimentSpec, ModelSpec, override_spec

STUDY = "study_resnet34_unet"

# --------------------------------------------------------------------------- the study's layouts


def _bn(prefix: str, c: int) -> list[tuple[str, tuple]]:
    return [(f"{prefix}.{leaf}", () if leaf == "num_batches_tracked" else (c,))
            for leaf in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]


def _conv_block(prefix: str, c_in: int, c_out: int) -> list[tuple[str, tuple]]:
    """The study's ConvBlock: Sequential(conv, BN, ReLU, conv, BN, ReLU) named `conv`."""
    return [(f"{prefix}.conv.0.weight", (c_out, c_in, 3, 3)), *_bn(f"{prefix}.conv.1", c_out),
            (f"{prefix}.conv.3.weight", (c_out, c_out, 3, 3)), *_bn(f"{prefix}.conv.4", c_out)]


def _up(prefix: str, i: int, w: int) -> list[tuple[str, tuple]]:
    """Entries 2i (transposed conv 2w -> w) and 2i + 1 (ConvBlock 2w -> w) of its `ups` list."""
    return [(f"{prefix}.{2 * i}.weight", (2 * w, w, 2, 2)), (f"{prefix}.{2 * i}.bias", (w,)),
            *_conv_block(f"{prefix}.{2 * i + 1}", 2 * w, w)]


def study_unet_layout(f: list[int]) -> list[tuple[str, tuple]]:
    """(key, shape) of the study's `UNet(3, 1, feature_sizes=f)` state dict, in its order."""
    keys, c = [], 3
    for i, w in enumerate(f):
        keys += _conv_block(f"downs.{i}", c, w)
        c = w
    for i, w in enumerate(reversed(f)):  # `ups` is registered before `bottleneck`
        keys += _up("ups", i, w)
    keys += _conv_block("bottleneck.0", f[-1], 2 * f[-1])
    return keys + [("final_conv.0.weight", (1, f[0], 1, 1)), ("final_conv.0.bias", (1,))]


def _residual(prefix: str, c_in: int, c_out: int) -> list[tuple[str, tuple]]:
    keys = []
    if c_in != c_out:
        keys += [(f"{prefix}.shortcut.0.weight", (c_out, c_in, 1, 1)), *_bn(f"{prefix}.shortcut.1", c_out)]
    return keys + [(f"{prefix}.block.0.conv.weight", (c_out, c_in, 3, 3)), *_bn(f"{prefix}.block.0.bn", c_out),
                   (f"{prefix}.block.1.conv.weight", (c_out, c_out, 3, 3)), *_bn(f"{prefix}.block.1.bn", c_out)]


def study_resnet_layout() -> list[tuple[str, tuple]]:
    """(key, shape) of the study's `ResNet34UNet()` state dict, in its order."""
    keys, c = [("encoder.conv1.0.weight", (64, 3, 7, 7)), *_bn("encoder.conv1.1", 64)], 64
    for s, (w, n) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3))):
        for b in range(n):
            keys += _residual(f"encoder.layers.{s}.{b}", c if b == 0 else w, w)
        c = w
    keys += _residual("decoder.bottleneck.0", 512, 1024)
    for i, w in enumerate((512, 256, 128, 64)):
        keys += _up("decoder.ups", i, w)
    for j in (0, 3):
        keys += [(f"decoder.final_conv.{j}.weight", (64, 64, 2, 2)), *_bn(f"decoder.final_conv.{j + 1}", 64)]
    return keys + [("decoder.final_conv.6.weight", (1, 64, 1, 1)), ("decoder.final_conv.6.bias", (1,))]


def layout_sha256(layout: list[tuple[str, tuple]]) -> str:
    return hashlib.sha256("\n".join(f"{k} {shape}" for k, shape in layout).encode()).hexdigest()


def fill(layout: list[tuple[str, tuple]], seed: int = 1234, gain: float = 1.0) -> dict[str, torch.Tensor]:
    """Deterministic weights in state-dict order (the reference script used this very function)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in layout:
        leaf = key.rsplit(".", 1)[1]
        if leaf == "num_batches_tracked":
            out[key] = torch.tensor(0)
        elif leaf == "running_var":
            out[key] = 0.5 + torch.rand(shape, generator=g)
        elif len(shape) == 1:  # BatchNorm weight / bias, running mean, conv bias
            out[key] = (1.0 if leaf == "weight" else 0.0) + 0.1 * torch.randn(shape, generator=g)
        else:  # conv / transposed conv weights: variance gain / (product of the other dimensions)
            out[key] = torch.randn(shape, generator=g) * math.sqrt(gain / math.prod(shape[1:]))
    return out


def fixed_input(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(7))


def empty_model(spec: ModelSpec) -> nn.Module:
    """The model of `spec` with uninitialised storage (no draws): for loading weights into."""
    with meta_build():
        model = build_model(spec)
    return model.to_empty(device="cpu")


def test_the_layouts_written_here_are_the_studys():
    """sha256 of the study's own state dicts, key by key with shapes (118 and 304 entries)."""
    unet, resnet = study_unet_layout([8, 16, 32, 64]), study_resnet_layout()
    assert (len(unet), len(resnet)) == (118, 304)
    assert layout_sha256(unet) == "60a09b93681c4b4890919397b6def4f351d3f40ea6149ccc1584b726d7866748"
    assert layout_sha256(resnet) == "01d622a8ab9a0202dba6114fa9b781e9493e7eeffc3bd866ddc6c293e0d9acff"


# --------------------------------------------------------------------------- sizes and refusals


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts_equal_the_studys():
    with meta_build():
        unet = build_model(ModelSpec(name="unet", base_channels=64))
        ours = build_model(ModelSpec(name=STUDY))
    assert _count(unet) == 31_037_633  # the study's UNet(3, 1)
    assert _count(ours) == 48_194_369  # the study's ResNet34UNet()
    # the study's encoder / decoder.bottleneck / decoder.ups
    assert (_count(ours.encoder), _count(ours.bottleneck), _count(ours.ups)) == (21_284_672, 14_686_208, 12_190_400)


def test_parameters_come_in_the_studys_order():
    with meta_build():
        ours = build_model(ModelSpec(name=STUDY))
    shapes = [tuple(v.shape) for v in ours.state_dict().values()]
    assert shapes == [shape for _, shape in study_resnet_layout()]


def test_input_not_a_multiple_of_64_is_refused_with_the_nearest_size():
    model = empty_model(ModelSpec(name=STUDY))
    with pytest.raises(SpecError) as info:
        model(torch.zeros(1, 3, 100, 64))
    assert str(info.value) == ("study_resnet34_unet needs input height and width divisible by 64; "
                               "got 100x64, nearest valid size is 128x64")
    with pytest.raises(SpecError, match=r"data.image_size: study_resnet34_unet needs an input size divisible "
                                             r"by 64; got 96, nearest valid size is 64"):
        override_spec(ExperimentSpec(), {"model.name": STUDY, "data.image_size": 96})


@pytest.mark.parametrize("key,value,message", [
    ("base_channels", 32, "model.base_channels: study_resnet34_unet takes only base_channels=64"),
    ("batchnorm", False, "model.batchnorm: study_resnet34_unet takes only batchnorm=True"),
])
def test_fixed_widths_and_batchnorm_are_refused_naming_the_key(key, value, message):
    with pytest.raises(SpecFieldError) as info:
        build_model(ModelSpec(name=STUDY, **{key: value}))
    assert info.value.key == f"model.{key}" and str(info.value).startswith(message)
    assert "\n" not in str(info.value)
    with pytest.raises(SpecError, match=message):
        override_spec(ExperimentSpec(), {"model.name": STUDY, f"model.{key}": value, "data.image_size": 64})


def test_the_residual_block_adds_the_shortcut_after_the_last_relu():
    block = StudyResidualBlock(64, 128).eval()  # a stage's first block: stride 2, 1x1 conv shortcut
    nn.init.zeros_(block.body[1][1].weight)
    nn.init.constant_(block.body[1][1].bias, -1.0)  # the body's last ReLU then outputs 0
    x = torch.randn(1, 64, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(block(x), block.shortcut(x))  # negative values survive: no ReLU after the sum
    assert (block.shortcut(x) < 0).any()


# --------------------------------------------------------------------------- outputs of the study's code


@pytest.mark.parametrize("case", ["unet", "resnet"])
def test_loaded_study_weights_give_the_studys_outputs(case):
    """The study's model filled by `fill`, in eval mode on `fixed_input`: its sigmoid output's sum
    and four values (at [0, 0, 0, 0], [0, 0, 5, 17], [1, 0, 20, 9] and the last pixel)."""
    if case == "unet":
        spec, layout, shape = ModelSpec(name="unet", base_channels=8), study_unet_layout([8, 16, 32, 64]), (2, 3, 32, 32)
        total, values = 796.8674595, [0.448918134, 0.376941979, 0.319374442, 0.403157324]
    else:
        spec, layout, shape = ModelSpec(name=STUDY), study_resnet_layout(), (2, 3, 64, 64)
        total, values = 4029.8734, [0.517575383, 0.525361717, 0.532862544, 0.4634161]
    model = empty_model(spec.model_copy(update={"head": "sigmoid"}))
    load_study_state_dict(model, fill(layout))
    with torch.no_grad():
        out = model.eval()(fixed_input(shape))
    assert out.shape == (shape[0], 1, *shape[2:])
    h, w = shape[2:]
    got = [out[0, 0, 0, 0], out[0, 0, 5, 17], out[1, 0, 20, 9], out[1, 0, h - 1, w - 1]]
    torch.testing.assert_close(torch.stack(got), torch.tensor(values), rtol=1e-5, atol=1e-6)
    assert out.double().sum().item() == pytest.approx(total, rel=1e-6)


def test_loading_refuses_what_does_not_fit_with_one_line():
    state = fill(study_unet_layout([8, 16, 32, 64]))
    cases = [
        (empty_model(ModelSpec(name="unet", base_channels=16)), state,
         r"shape\(s\) differ.*its feature_sizes start at 8: build with model.base_channels=8"),
        (empty_model(ModelSpec(name="unet", base_channels=8, batchnorm=False)), state,
         r"key\(s\) unet has no counterpart for.*it has BatchNorm: build with model.batchnorm=true"),
        (empty_model(ModelSpec(name=STUDY)), state,
         r"study's ResNet34UNet that fits this study_resnet34_unet: 118 key\(s\).*'downs.0.conv.0.weight'"),
        (nn.Conv2d(3, 1, 1), state,
         r"the study's weights load its UNet into unet, its ResNet34UNet into study_resnet34_unet; got a Conv2d"),
    ]
    for model, sd, message in cases:
        with pytest.raises(CheckpointError, match=message) as info:
            load_study_state_dict(model, sd)
        assert "\n" not in str(info.value)
    partial = dict(state)
    del partial["final_conv.0.bias"]
    with pytest.raises(CheckpointError, match=r"1 parameter\(s\) of unet missing \(first: 'head.bias'\)"):
        load_study_state_dict(empty_model(ModelSpec(name="unet", base_channels=8)), partial)


# --------------------------------------------------------------------------- the study's initialisations


@pytest.fixture(scope="module")
def resnet_at_seed_0() -> tuple[dict[str, torch.Tensor], nn.Module]:
    """study_resnet34_unet at torch.manual_seed(0): PyTorch's defaults (a few tensors, copied),
    then re-initialised by he_fan_out (what build_model does for `model.init: he_fan_out`)."""
    torch.manual_seed(0)
    model = build_model(ModelSpec(name=STUDY))
    defaults = {name: t.detach().clone() for name, t in model.state_dict().items()
                if name in ("head.weight", "ups.0.up.weight", "final.0.weight", "encoder.stages.3.0.body.0.0.weight")}
    model.reset_parameters("he_fan_out")
    return defaults, model


def test_he_fan_out_at_seed_0_draws_the_studys_initial_weights(resnet_at_seed_0):
    """The study's ResNet34UNet() after torch.manual_seed(0), bit for bit up to float32 printing."""
    _, model = resnet_at_seed_0
    head, up, conv = model.head.weight, model.ups[0].up.weight, model.encoder.stages[3][0].body[0][0].weight
    assert head.std().item() == pytest.approx(1.65930951, rel=1e-7)
    torch.testing.assert_close(head.flatten()[:4], torch.tensor([2.23409963, 4.38784409, -0.686702549, -0.533589184]))
    assert up.std().item() == pytest.approx(0.0127510568, rel=1e-7)  # transposed conv: PyTorch's default
    torch.testing.assert_close(up.flatten()[:3], torch.tensor([-0.0219805725, -0.00558276614, -0.000448816514]))
    torch.testing.assert_close(model.final[0].weight.flatten()[:3], torch.tensor([0.019927524, 0.0465248823, 0.038981013]))
    assert conv.std().item() == pytest.approx(0.020832615, rel=1e-7)
    torch.testing.assert_close(conv.flatten()[:3], torch.tensor([0.0299625918, 0.0026771694, -0.00176686409]))
    assert sum(p.double().sum().item() for p in model.parameters()) == pytest.approx(13608.37747, rel=1e-9)


def test_he_fan_out_gives_the_analytic_std_and_leaves_transposed_convs(resnet_at_seed_0):
    defaults, model = resnet_at_seed_0
    conv = model.encoder.stages[3][0].body[0][0]  # 256 -> 512, 3x3: fan-out 512 * 9, twice its fan-in
    assert abs(conv.weight.std().item() / math.sqrt(2 / (512 * 9)) - 1) < 0.01
    assert not torch.equal(conv.weight, defaults["encoder.stages.3.0.body.0.0.weight"])
    # the 1x1 head: fan_out = 1, so std sqrt(2) (its 64 weights at seed 0 give 1.66); PyTorch's
    # default is U(-1/8, 1/8), std 1/(8 sqrt 3) = 0.072
    assert abs(defaults["head.weight"].std().item() / (1 / (8 * math.sqrt(3))) - 1) < 0.2
    assert defaults["head.weight"].abs().max() <= 1 / 8
    for name in ("ups.0.up.weight", "final.0.weight"):  # ConvTranspose2d is not an nn.Conv2d
        assert torch.equal(model.state_dict()[name], defaults[name]), name
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in bns)


def test_init_ops_state_the_studys_stds():
    """What he_fan_out and paper_fan_in do, op by op: N(0, std) with torch's fans on every Conv2d
    (1x1 head included, std sqrt(2 / fan_out) = sqrt(2)), nothing on transposed convs; paper_fan_in
    touches no BatchNorm."""
    with meta_build():
        model = build_model(ModelSpec(name=STUDY))
    ops = {scheme: record_init_ops(model, lambda s=scheme: model.reset_parameters(s))
           for scheme in ("he_fan_out", "paper_fan_in")}
    normal = {s: {args[0]: args[2] for op, args in ops[s] if op == "normal_"} for s in ops}
    conv = "encoder.stages.3.0.body.0.0.weight"  # 256 -> 512, 3x3
    assert normal["he_fan_out"][conv] == math.sqrt(2) / math.sqrt(512 * 9)
    assert normal["paper_fan_in"][conv] == (2 / (256 * 9)) ** 0.5
    assert normal["he_fan_out"]["head.weight"] == math.sqrt(2.0)
    assert normal["paper_fan_in"]["head.weight"] == (2 / 64) ** 0.5
    convs = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert set(normal["he_fan_out"]) == set(normal["paper_fan_in"]) == convs
    tensors = dict(model.state_dict(keep_vars=True))
    touched = {args[0] for _, args in ops["paper_fan_in"] if args and args[0] in tensors}
    assert touched == convs | {f"{n}.bias" for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.bias is not None}


def test_study_schemes_leave_transposed_convs_as_built():
    """At one seed, `pytorch`, `he_fan_out` and `paper_fan_in` build the same transposed convs
    (drawn at construction, never re-drawn) and different convs."""
    built = {}
    for scheme in ("pytorch", "he_fan_out", "paper_fan_in"):
        torch.manual_seed(5)
        built[scheme] = build_model(ModelSpec(name="unet", base_channels=8, init=scheme))
    for name, module in built["pytorch"].named_modules():
        others = [dict(built[s].named_modules())[name] for s in ("he_fan_out", "paper_fan_in")]
        if isinstance(module, nn.ConvTranspose2d):
            assert all(torch.equal(module.weight, o.weight) and torch.equal(module.bias, o.bias) for o in others)
        elif isinstance(module, nn.Conv2d):
            assert not any(torch.equal(module.weight, o.weight) for o in others)


def test_unet_head_at_seed_0_is_the_studys():
    """The width-64 UNet with he_fan_out at torch.manual_seed(0): its head weights are those of
    the study's UNet(3, 1) at seed 0 (std 1.40 where PyTorch's default gives 0.072). Not every
    conv: the study's UNet registers `ups` before `bottleneck`, so those convs are drawn in the
    other order (same distribution, other values); the head is drawn last in both."""
    torch.manual_seed(0)
    model = build_model(ModelSpec(name="unet", base_channels=64, init="he_fan_out"))
    assert model.head.weight.std().item() == pytest.approx(1.40248585, rel=1e-7)
    torch.testing.assert_close(model.head.weight.flatten()[:3], torch.tensor([0.968738794, -0.250399888, -0.967980325]))
