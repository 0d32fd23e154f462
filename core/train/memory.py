"""Will a run fit in memory? A lower bound on its training activations, checked before the data
are built, and an out-of-memory error turned into one line with the size, batch and a hint.

The estimate is 90% of what autograd saves for the backward pass of one training step, measured
on a tiny forward of the same model (batch 2, a small valid size) and scaled by pixels and batch
(a convolutional network's feature maps are proportional to both). Weights, gradients, optimiser
state, the data cache and the allocator's slack all come on top, so a run refused by it cannot
fit; one that passes may still run out, which `out_of_memory` then reports.
"""
from __future__ import annotations

import functools
import logging
import math
from pathlib import Path

import torch

from ..errors import ResourceError
from ..spec import ExperimentSpec, ModelSpec

log = logging.getLogger(__name__)

GIB = 2**30
_PROBE_BATCH = 2  # BatchNorm needs two values per channel at a 1x1 bottleneck
_OOM_MARKERS = ("out of memory", "not enough memory", "defaultcpuallocator", "can't allocate memory")


def activation_bytes(spec: ExperimentSpec, batch: int | None = None) -> int:
    """A lower bound on the bytes autograd keeps for one training step at the spec's size, with
    `batch` images (default: train.batch_size)."""
    per_pixel = _saved_bytes_per_pixel(spec.model)
    low_precision = 2 if spec.train.precision in ("bf16", "fp16", "auto") else 1  # autocast at most halves them
    # 0.9: a few saved tensors (padding, odd-sized maps) do not scale exactly with the pixels.
    return int(0.9 * per_pixel * spec.data.image_size**2 * (batch or spec.train.batch_size) / low_precision)


def training_images(spec: ExperimentSpec) -> int | None:
    """The number of training images, where it is known without writing anything (the synthetic
    set from its settings, Oxford and folder data from their listing; data.limit_train caps it),
    else None (data still to download, a dataset registered at run time)."""
    from ..data.datasets import build_sources
    from ..data.sources import has_oxford_layout

    data, count = spec.data, None
    if data.name == "synthetic":  # trainval line i is validation when i % val_every == 0
        count = data.synthetic.num_trainval - math.ceil(data.synthetic.num_trainval / data.val_every)
    elif data.name == "folder" or (data.name == "oxford_pet" and has_oxford_layout(Path(data.root).expanduser())):
        count = len(build_sources(data)["train"].samples)  # reads the split files or folders only
    if data.limit_train is not None:
        count = data.limit_train if count is None else min(count, data.limit_train)
    return count


def images_per_step(spec: ExperimentSpec) -> int:
    """At most how many images one rank's training step holds: train.batch_size, or fewer when
    the training split (its share on each rank) is smaller."""
    from .device import dist_info

    count = training_images(spec)
    return spec.train.batch_size if count is None else min(spec.train.batch_size, math.ceil(count / dist_info()[1]))


@functools.lru_cache(maxsize=8)
def _saved_bytes_per_pixel(model_spec: ModelSpec) -> float:
    """Bytes autograd saves per input pixel of one sample, in fp32 (a tiny forward of the model)."""
    from ..models import MODELS, build_model

    divisor = MODELS.get(model_spec.name).size_divisor
    size = divisor * max(2, math.ceil(32 / divisor))  # bottleneck >= 1 px, some pixels above
    probe_spec = model_spec.model_copy(update={"encoder_weights": "none", "init": "pytorch"})
    with torch.random.fork_rng(devices=[]):  # the probe's initialisation must not move the run's RNG
        model = build_model(probe_spec).train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        # Feature maps (B, C, H, W) only: per-channel statistics do not grow with the image.
        storage = tensor.untyped_storage()
        if tensor.dim() >= 3 and storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(torch.zeros(_PROBE_BATCH, 3, size, size))
    return sum(saved.values()) / (_PROBE_BATCH * size * size)


def available_bytes(device: torch.device) -> tuple[int, str] | None:
    """(bytes this process could still use, where that figure comes from), or None if unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return free + cached, f"free on {torch.cuda.get_device_name(device)}"
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        kib = int(fields["MemAvailable"].split()[0]) + int(fields.get("SwapFree", "0 kB").split()[0])
    except (OSError, KeyError, ValueError):
        return None  # not Linux: no estimate to compare against
    return kib * 1024, "MemAvailable + SwapFree"


def _where(spec: ExperimentSpec, step: int | None = None) -> str:
    batch = spec.train.batch_size
    capped = f" (at most {step} training images per step)" if step is not None and step < batch else ""
    return (f"data.image_size {spec.data.image_size}, train.batch_size {batch}{capped}, "
            f"model {spec.model.name} width {spec.model.base_channels}")


HINT = "use a smaller data.image_size or train.batch_size"


def check_memory(spec: ExperimentSpec, device: torch.device) -> None:
    """Refuse, before anything is built, a run whose activations alone exceed the free memory."""
    available = available_bytes(device)
    if available is None:
        return
    need, step = activation_bytes(spec), None
    if need > available[0]:  # a batch larger than the training split trains on the split: count it
        step = images_per_step(spec)
        need = activation_bytes(spec, step)
    if need > available[0]:
        raise ResourceError(
            f"{_where(spec, step)}: training needs at least {need / GIB:.1f} GiB for activations alone, but only "
            f"{available[0] / GIB:.1f} GiB is available on {device.type} ({available[1]}); {HINT}")
    log.debug("memory: at least %.2f GiB of activations, %.1f GiB available", need / GIB, available[0] / GIB)


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's CUDA/CPU out-of-memory errors (a `RuntimeError` from the CPU allocator)."""
    oom = getattr(torch, "OutOfMemoryError", ())
    return (bool(oom) and isinstance(exc, oom)) or (
        isinstance(exc, (RuntimeError, MemoryError)) and any(m in str(exc).lower() for m in _OOM_MARKERS))


def out_of_memory(spec: ExperimentSpec, exc: BaseException) -> ResourceError:
    """The one line for an out-of-memory error during training."""
    reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
    return ResourceError(f"{_where(spec)}: ran out of memory during training ({reason}); {HINT}")
