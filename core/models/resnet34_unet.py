"""torchvision's ResNet34 as a UNet encoder with a decoder from `DECODERS`
(`model.name: resnet34_unet`), and the ImageNet weights it can start from."""
from __future__ import annotations

import socket

import torch
import torch.nn as nn

from ..errors import CheckpointError, SpecError
from ..sections import ModelSpec
from .base import MODELS, SegmentationModel, check_input_size
from .blocks import Head, apply_head
from .decoders import DECODERS
from .init import Init, init_weights

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




@MODELS.register("resnet34_unet")
class ResNet34UNet(SegmentationModel):
    """torchvision's ResNet34 as the encoder with a `lab`, `unet` or `smp` decoder and a conv head
    (1x1; 3x3 for `smp`, as smp's segmentation head).

    `base_channels` scales the decoder width only (the encoder is always ResNet34): the `unet`
    decoder uses 4b/2b/b/b/(b/2) channels, `smp` 4b/2b/b/(b/2)/(b/4) and the `lab` decoder b/2,
    so the default b = 64 gives exactly 256/128/64/64/32, smp's 256/128/64/32/16 and the course
    figure's 32. `batchnorm=False` replaces the encoder's
    BatchNorm by Identity (folded into the convs first when `encoder_weights="imagenet"`) and
    drops the decoder's. `dropout` acts on the bottleneck (the 1/32 features).
    """

    size_divisor = 32
    options = ("decoder", "encoder_weights")

    def __init__(self, in_channels: int = 3, base_channels: int = 64, batchnorm: bool = True,
                 dropout: float = 0.0, head: Head = "logits", encoder_weights: str = "none",
                 decoder: str = "unet"):
        super().__init__()
        make_decoder = DECODERS.get(decoder)  # before building anything: fail fast
        self.head_kind = head
        self.pretrained = encoder_weights == "imagenet"
        self.encoder = ResNet34Encoder(in_channels, batchnorm, encoder_weights)
        self.decoder = make_decoder(base_channels, batchnorm, dropout)
        k = getattr(self.decoder, "head_kernel_size", 1)
        self.head = nn.Conv2d(self.decoder.out_channels, 1, kernel_size=k, padding=k // 2)
        initialize = getattr(self.decoder, "initialize", None)
        if initialize is not None:  # the decoder's own default (smp's init), overridden by a model.init scheme
            initialize(self.head)

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
        return apply_head(self.head(x), self.head_kind)  # (B, 1, H, W)

