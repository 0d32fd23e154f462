"""Segmentation networks found by name (`MODELS`), their weight initialisation schemes, and
`build_model(spec.model)`. Every model maps (B, C, H, W) to (B, 1, H, W) at input resolution:
logits, or probabilities when `model.head == "sigmoid"`.
"""
from __future__ import annotations

import math
import socket
from typing import Literal

import torch
import torch.nn as nn

from core.errors import CheckpointError, SpecError
from core.registry import Registry
from core.spec import ModelSpec

MODELS = Registry("model")

Head = Literal["sigmoid", "logits"]
Init = Literal["pytorch", "he_normal", "he_uniform", "xavier", "paper"]


def build_model(spec: ModelSpec, in_channels: int = 3) -> nn.Module:
    """The network `spec` describes, initialised by `spec.init` (the caller seeds torch first)."""
    model = MODELS.get(spec.name).from_spec(spec, in_channels)
    if spec.init != "pytorch":
        model.reset_parameters(spec.init)
    return model


# --------------------------------------------------------------------------- input sizes


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


# --------------------------------------------------------------------------- initialisation


def fans(module: nn.Conv2d | nn.ConvTranspose2d) -> tuple[float, float]:
    """(fan_in, fan_out) of a convolution's weight, as the forward op sees it.

    Conv2d: torch's convention, fan_in = in_channels/groups * kh * kw (inputs that feed one output
    pixel), fan_out = out_channels/groups * kh * kw.

    ConvTranspose2d: torch's `_calculate_fan_in_and_fan_out` reads weight dim 1 (out_channels) as
    fan-in, which is the fan-in of the convolution the transposed op is the adjoint of, not of
    the op itself. Here fan_in is the number of inputs that feed one output pixel:
    in_channels/groups * kh * kw / (sh * sw) (exact when the kernel is a multiple of the stride,
    the mean otherwise), so the 2x2 stride-2 up-convolution has fan_in = in_channels; and
    fan_out = out_channels/groups * kh * kw (outputs one input pixel feeds).
    """
    kh, kw = module.kernel_size
    if isinstance(module, nn.ConvTranspose2d):
        sh, sw = module.stride
        fan_in = module.in_channels / module.groups * kh * kw / (sh * sw)
        fan_out = module.out_channels / module.groups * kh * kw
    else:
        fan_in = module.in_channels / module.groups * kh * kw
        fan_out = module.out_channels / module.groups * kh * kw
    return fan_in, fan_out


def init_std(scheme: Init, fan_in: float, fan_out: float, encoder: bool = False) -> float:
    """Standard deviation a scheme gives a conv weight (for the uniform ones, of the uniform)."""
    if scheme == "xavier":
        return math.sqrt(2.0 / (fan_in + fan_out))
    if scheme == "paper" and encoder:
        return math.sqrt(2.0 / fan_out)  # ResNet paper: He normal, fan-out
    if scheme in ("he_normal", "he_uniform", "paper"):
        return math.sqrt(2.0 / fan_in)  # He: gain sqrt(2) for ReLU, fan-in
    raise ValueError(f"no standard deviation for init {scheme!r}")


@torch.no_grad()
def init_weights(module: nn.Module, scheme: Init, encoder: bool = False) -> None:
    """Re-initialise every conv / transposed conv / BatchNorm inside `module` by `scheme`.

    - `pytorch`: nothing is touched (PyTorch's defaults: what the study actually had).
    - `he_normal`: N(0, 2/fan_in); `he_uniform`: U(-b, b), b = sqrt(6/fan_in) (same variance);
      `xavier`: U(-b, b), b = sqrt(6/(fan_in + fan_out)).
    - `paper`: the U-Net paper's Gaussian with std sqrt(2/N), N = fan-in = k*k*in_channels.
      That is exactly `he_normal`, so for the UNet (and the resnet34_unet decoder) `paper` and
      `he_normal` give identical weights: an ablation of the two contrasts nothing. With
      `encoder=True` (the ResNet encoder) `paper` follows the ResNet paper instead: He normal
      with fan-out, N(0, 2/fan_out) (also torchvision's own ResNet init).
    Conv biases become 0; BatchNorm weight 1 and bias 0. Fans follow `fans()`.
    """
    if scheme == "pytorch":
        return
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            fan_in, fan_out = fans(m)
            std = init_std(scheme, fan_in, fan_out, encoder)
            if scheme in ("he_uniform", "xavier"):
                bound = math.sqrt(3.0) * std
                m.weight.uniform_(-bound, bound)
            else:
                m.weight.normal_(0.0, std)
            if m.bias is not None:
                m.bias.zero_()
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            if m.weight is not None:
                m.weight.fill_(1.0)
                m.bias.zero_()


# --------------------------------------------------------------------------- building blocks


class ConvBNReLU(nn.Sequential):
    """Padded conv, optional BatchNorm, ReLU. The conv has a bias only without BatchNorm."""

    def __init__(self, c_in: int, c_out: int, batchnorm: bool, kernel_size: int = 3):
        super().__init__(
            nn.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2, bias=not batchnorm),
            nn.BatchNorm2d(c_out) if batchnorm else nn.Identity(),
            nn.ReLU(inplace=True),
        )


class DoubleConv(nn.Sequential):
    """(conv 3x3 - BN - ReLU) x 2: one UNet level."""

    def __init__(self, c_in: int, c_out: int, batchnorm: bool):
        super().__init__(ConvBNReLU(c_in, c_out, batchnorm), ConvBNReLU(c_out, c_out, batchnorm))


class Up(nn.Module):
    """2x2 stride-2 transposed conv (c_in -> c_up), concat the skip (if any), DoubleConv -> c_out."""

    def __init__(self, c_in: int, c_skip: int, c_out: int, batchnorm: bool, c_up: int | None = None):
        super().__init__()
        c_up = c_out if c_up is None else c_up
        self.up = nn.ConvTranspose2d(c_in, c_up, kernel_size=2, stride=2)
        self.conv = DoubleConv(c_up + c_skip, c_out, batchnorm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = self.up(x)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv(x)


def _dropout(p: float) -> nn.Module:
    return nn.Dropout2d(p) if p > 0 else nn.Identity()


def _apply_head(logits: torch.Tensor, head: Head) -> torch.Tensor:
    # Probabilities in fp32 even under autocast: bf16 cannot tell 0.999 from 1.
    return torch.sigmoid(logits.float()) if head == "sigmoid" else logits


def _reject(spec: ModelSpec, name: str, **allowed: object) -> None:
    """SpecError for a resnet34_unet-only option set on a model that has no use for it."""
    for key, value in allowed.items():
        if getattr(spec, key) != value:
            raise SpecError(f"model.{key}: {getattr(spec, key)!r} is not available for {name} (valid: {value!r})")


# --------------------------------------------------------------------------- UNet


@MODELS.register("unet")
class UNet(nn.Module):
    """The U-Net of Ronneberger et al. 2015 with padded convolutions (output size = input size).

    Encoder: DoubleConv at widths b, 2b, 4b, 8b with 2x2 max-pool between (4 down-samplings),
    bottleneck DoubleConv at 16b followed by Dropout2d(dropout); decoder: 2x2 transposed conv
    halving the width, concat skip, DoubleConv; 1x1 head. b = `base_channels` (64 in the paper).
    """

    size_divisor = 16

    def __init__(self, in_channels: int = 3, base_channels: int = 64, batchnorm: bool = True,
                 dropout: float = 0.0, head: Head = "logits"):
        super().__init__()
        b = base_channels
        widths = [b, 2 * b, 4 * b, 8 * b]
        self.head_kind = head
        self.downs = nn.ModuleList()
        c = in_channels
        for w in widths:
            self.downs.append(DoubleConv(c, w, batchnorm))
            c = w
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = nn.Sequential(DoubleConv(c, 16 * b, batchnorm), _dropout(dropout))
        self.ups = nn.ModuleList(Up(2 * w, w, w, batchnorm) for w in reversed(widths))
        self.head = nn.Conv2d(b, 1, kernel_size=1)

    @classmethod
    def from_spec(cls, spec: ModelSpec, in_channels: int = 3) -> "UNet":
        _reject(spec, "unet", encoder_weights="none", decoder="unet")
        return cls(in_channels, spec.base_channels, spec.batchnorm, spec.dropout, spec.head)

    def reset_parameters(self, scheme: Init) -> None:
        init_weights(self, scheme)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size("unet", self.size_divisor, x.shape[-2], x.shape[-1])
        skips = []
        for down in self.downs:
            x = down(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)  # (B, 16b, H/16, W/16)
        for up, skip in zip(self.ups, reversed(skips)):
            x = up(x, skip)
        return _apply_head(self.head(x), self.head_kind)  # (B, 1, H, W)


# --------------------------------------------------------------------------- ResNet34 + UNet


IMAGENET_WEIGHTS = "ResNet34_Weights.IMAGENET1K_V1"


def load_imagenet_resnet34_state() -> dict[str, torch.Tensor]:
    """torchvision's ImageNet ResNet34 weights from the torch hub cache, downloading if missing.

    Raises `CheckpointError` (one line, with where to put the file) when they cannot be had.
    """
    from torchvision.models import ResNet34_Weights

    weights = ResNet34_Weights.IMAGENET1K_V1
    cache = f"{torch.hub.get_dir()}/checkpoints/{weights.url.rsplit('/', 1)[-1]}"
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(30)  # a black-holed network fails in seconds, not minutes
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:  # no network, bad hash, corrupt cache: all the same to the user
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(
            f"model.encoder_weights: imagenet: cannot get torchvision's {IMAGENET_WEIGHTS} "
            f"({type(exc).__name__}: {reason}); put {weights.url} at {cache} "
            "or use model.encoder_weights=none"
        ) from None
    finally:
        socket.setdefaulttimeout(previous)


def _fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A conv with bias computing conv -> bn (eval statistics), so pretrained weights keep meaning."""
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                      conv.padding, conv.dilation, conv.groups, bias=True)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    with torch.no_grad():
        fused.weight.copy_(conv.weight * scale[:, None, None, None])
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        fused.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
    return fused


def _remove_batchnorm(resnet: nn.Module, fold: bool) -> None:
    """Replace every BatchNorm of a torchvision ResNet by Identity, folding it into the conv
    before it when `fold` (pretrained weights); the plain convs keep no bias otherwise."""
    holders = [resnet] + [block for name in ("layer1", "layer2", "layer3", "layer4")
                          for block in getattr(resnet, name)]
    for holder in holders:
        pairs = [("conv1", "bn1"), ("conv2", "bn2")]
        for conv_name, bn_name in pairs:
            if hasattr(holder, bn_name):
                if fold:
                    setattr(holder, conv_name, _fold_bn(getattr(holder, conv_name), getattr(holder, bn_name)))
                setattr(holder, bn_name, nn.Identity())
        downsample = getattr(holder, "downsample", None)
        if downsample is not None:
            conv, bn = downsample[0], downsample[1]
            holder.downsample = nn.Sequential(_fold_bn(conv, bn) if fold else conv, nn.Identity())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in resnet.modules())


class ResNet34Encoder(nn.Module):
    """torchvision's resnet34 stem and stages (no avgpool/fc). Returns the features at
    1/2 (stem conv, 64), 1/4 (layer1, 64), 1/8 (128), 1/16 (256) and 1/32 (layer4, 512)."""

    channels = (64, 64, 128, 256, 512)

    def __init__(self, in_channels: int = 3, batchnorm: bool = True, weights: str = "none"):
        super().__init__()
        from torchvision.models import resnet34

        if weights == "imagenet":
            if in_channels != 3:
                raise SpecError(f"model.encoder_weights: imagenet needs 3 input channels, got {in_channels}")
            state = load_imagenet_resnet34_state()  # before building anything: fail fast
        resnet = resnet34(weights=None)
        if weights == "imagenet":
            try:
                resnet.load_state_dict(state)
            except RuntimeError as exc:
                first = str(exc).strip().splitlines()[0]
                raise CheckpointError(f"model.encoder_weights: imagenet: cached {IMAGENET_WEIGHTS} "
                                      f"does not fit resnet34 ({first}); delete it to download again") from None
        elif in_channels != 3:
            resnet.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
            nn.init.kaiming_normal_(resnet.conv1.weight, mode="fan_out", nonlinearity="relu")
        if not batchnorm:
            _remove_batchnorm(resnet, fold=weights == "imagenet")
        self.conv1, self.bn1, self.relu, self.maxpool = resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x0 = self.relu(self.bn1(self.conv1(x)))  # (B, 64, H/2, W/2)
        x1 = self.layer1(self.maxpool(x0))  # (B, 64, H/4, W/4)
        x2 = self.layer2(x1)  # (B, 128, H/8, W/8)
        x3 = self.layer3(x2)  # (B, 256, H/16, W/16)
        x4 = self.layer4(x3)  # (B, 512, H/32, W/32)
        return [x0, x1, x2, x3, x4]


class LabDecoder(nn.Module):
    """The course figure (Huang et al. 2022): bottleneck 3x3 conv 512 -> 256 concatenated with
    layer4's 512 (768 channels at 1/32, then Dropout2d); five x2 up-steps each ending in `width`
    channels (32 by default), the first three with skips from layer3, layer2, layer1, the last two
    without skip (they undo the stem's /4). Each up-step: 2x2 transposed conv to
    max(c_in // 2, width) channels, concat skip, DoubleConv -> width. The stem's 1/2 output is
    not used, as in the figure."""

    def __init__(self, width: int, batchnorm: bool, dropout: float):
        super().__init__()
        self.bottleneck = ConvBNReLU(512, 256, batchnorm)
        self.dropout = _dropout(dropout)
        blocks, c = [], 768
        for c_skip in (256, 128, 64, 0, 0):
            blocks.append(Up(c, c_skip, width, batchnorm, c_up=max(c // 2, width)))
            c = width
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = width

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        _, x1, x2, x3, x4 = feats
        x = self.dropout(torch.cat([self.bottleneck(x4), x4], dim=1))  # (B, 768, H/32, W/32)
        for block, skip in zip(self.blocks, (x3, x2, x1, None, None)):
            x = block(x, skip)
        return x  # (B, width, H, W)


class UNetDecoder(nn.Module):
    """The plain UNet decoder on the ResNet34 features (the study's reading): Dropout2d on
    layer4's output, then up-steps to 4w / 2w / w / w channels with skips from layer3, layer2,
    layer1 and the stem conv (1/2), and one more up-step without skip to full resolution at w/2.
    w = 64 gives 256/128/64/64/32."""

    def __init__(self, width: int, batchnorm: bool, dropout: float):
        super().__init__()
        self.dropout = _dropout(dropout)
        w = width
        self.blocks = nn.ModuleList([
            Up(512, 256, 4 * w, batchnorm),
            Up(4 * w, 128, 2 * w, batchnorm),
            Up(2 * w, 64, w, batchnorm),
            Up(w, 64, w, batchnorm),
            Up(w, 0, max(w // 2, 1), batchnorm),
        ])
        self.out_channels = max(w // 2, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x0, x1, x2, x3, x4 = feats
        x = self.dropout(x4)
        for block, skip in zip(self.blocks, (x3, x2, x1, x0, None)):
            x = block(x, skip)
        return x  # (B, w/2, H, W)


class SmpDecoder(nn.Module):
    """The decoder of segmentation_models_pytorch's `Unet("resnet34")`: each step up-samples by
    nearest neighbour (no transposed conv), concatenates the skip (layer3, layer2, layer1, the
    stem conv, then none) and applies (conv 3x3 - BN - ReLU) x 2, to 4w / 2w / w / w/2 / w/4
    channels: 256/128/64/32/16 at w = 64, smp's default. Dropout2d on layer4's output."""

    def __init__(self, width: int, batchnorm: bool, dropout: float):
        super().__init__()
        self.dropout = _dropout(dropout)
        outs = [4 * width, 2 * width, width, max(width // 2, 1), max(width // 4, 1)]
        ins = [512, *outs[:-1]]
        self.blocks = nn.ModuleList(DoubleConv(c_in + c_skip, c_out, batchnorm)
                                    for c_in, c_skip, c_out in zip(ins, (256, 128, 64, 64, 0), outs))
        self.out_channels = outs[-1]

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x0, x1, x2, x3, x4 = feats
        x = self.dropout(x4)
        for block, skip in zip(self.blocks, (x3, x2, x1, x0, None)):
            x = nn.functional.interpolate(x, scale_factor=2.0, mode="nearest")
            x = block(x if skip is None else torch.cat([x, skip], dim=1))
        return x  # (B, w/4, H, W)


@MODELS.register("resnet34_unet")
class ResNet34UNet(nn.Module):
    """torchvision's ResNet34 as the encoder with a `lab`, `unet` or `smp` decoder and a 1x1 head.

    `base_channels` scales the decoder width only (the encoder is always ResNet34): the `unet`
    decoder uses 4b/2b/b/b/(b/2) channels, `smp` 4b/2b/b/(b/2)/(b/4) and the `lab` decoder b/2,
    so the default b = 64 gives exactly 256/128/64/64/32, smp's 256/128/64/32/16 and the course
    figure's 32. `batchnorm=False` replaces the encoder's
    BatchNorm by Identity (folded into the convs first when `encoder_weights="imagenet"`) and
    drops the decoder's. `dropout` acts on the bottleneck (the 1/32 features).
    """

    size_divisor = 32

    def __init__(self, in_channels: int = 3, base_channels: int = 64, batchnorm: bool = True,
                 dropout: float = 0.0, head: Head = "logits", encoder_weights: str = "none",
                 decoder: str = "unet"):
        super().__init__()
        if decoder not in ("lab", "unet", "smp"):
            raise SpecError(f"model.decoder: unknown decoder {decoder!r}; valid: lab, unet, smp")
        self.head_kind = head
        self.pretrained = encoder_weights == "imagenet"
        self.encoder = ResNet34Encoder(in_channels, batchnorm, encoder_weights)
        if decoder == "lab":
            self.decoder = LabDecoder(max(base_channels // 2, 1), batchnorm, dropout)
        elif decoder == "smp":
            self.decoder = SmpDecoder(base_channels, batchnorm, dropout)
        else:
            self.decoder = UNetDecoder(base_channels, batchnorm, dropout)
        self.head = nn.Conv2d(self.decoder.out_channels, 1, kernel_size=1)

    @classmethod
    def from_spec(cls, spec: ModelSpec, in_channels: int = 3) -> "ResNet34UNet":
        return cls(in_channels, spec.base_channels, spec.batchnorm, spec.dropout, spec.head,
                   spec.encoder_weights, spec.decoder)

    def reset_parameters(self, scheme: Init) -> None:
        """Initialise by `scheme`; a pretrained encoder is left as loaded."""
        if not self.pretrained:
            init_weights(self.encoder, scheme, encoder=True)
        init_weights(self.decoder, scheme)
        init_weights(self.head, scheme)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size("resnet34_unet", self.size_divisor, x.shape[-2], x.shape[-1])
        x = self.decoder(self.encoder(x))
        return _apply_head(self.head(x), self.head_kind)  # (B, 1, H, W)


def predict_batch(model: nn.Module, images: torch.Tensor, tta: str = "none") -> torch.Tensor:
    """The model's output for an evaluation batch; `tta="hflip"` averages it with the mirrored
    image's output mirrored back (in the head's own space: logits or probabilities)."""
    output = model(images)
    if tta == "hflip":
        output = (output + model(images.flip(-1)).flip(-1)) / 2
    return output
