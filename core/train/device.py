"""Where and in what precision training runs: devices, `auto` precision, autocast."""
from __future__ import annotations

import contextlib
import functools
import platform
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import SegsweepError


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise SegsweepError("train.device: 'cuda' requested but no CUDA device is available; valid here: auto, cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> str:
    """`auto`: bf16 where the hardware runs it fast (CUDA with bf16, CPUs with AVX-512/AMX bf16)."""
    if name == "fp16" and device.type != "cuda":
        raise SegsweepError("train.precision: fp16 needs CUDA (a gradient scaler on GPU); on CPU use bf16 or fp32")
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


@dataclass(frozen=True)
class CpuInfo:
    """The CPU as /proc/cpuinfo names it: model and instruction-set flags (ARM's 'Features');
    `read` is False where there is no /proc/cpuinfo (the model is then the platform's word)."""
    model: str
    flags: str
    read: bool

    @property
    def flag_set(self) -> frozenset[str]:
        return frozenset(self.flags.split())


@functools.lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    """This machine's CPU: the first processor's model name and flags, read once per process."""
    model, flags = platform.processor() or platform.machine(), ""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return CpuInfo(model, "", read=False)
    for line in text.splitlines():
        if line.startswith("model name") and model in ("", platform.machine(), platform.processor()):
            model = line.split(":", 1)[1].strip()
        elif line.startswith(("flags", "Features")) and not flags:
            flags = line.split(":", 1)[1].strip()
    return CpuInfo(model, flags, read=True)


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with native bf16 matrix instructions (AVX512-BF16 or AMX).

    Without them PyTorch emulates bf16 convolutions and they run far slower than fp32
    (measured on an AVX2-only EPYC: 0.3 vs 8 img/s for ResNet34-UNet at 128 px).
    """
    info = cpu_info()
    if not info.read:
        return "AMX" in torch.backends.cpu.get_cpu_capability().upper()
    return bool({"avx512_bf16", "amx_bf16"} & info.flag_set)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def dist_info() -> tuple[int, int]:
    """(rank, world size) of the initialised process group; (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "module", model)  # DDP
    return getattr(model, "_orig_mod", model)  # torch.compile
