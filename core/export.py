"""Trained models out of segsweep (`segsweep export`): ONNX, safetensors, a plain state dict, or
segmentation_models_pytorch's own format. Every check runs before anything is written, and the
output appears whole (written beside it, then renamed) or not at all.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from . import __version__
from .errors import ExportError
from .inference import Predictor
from .metrics import probabilities
from .models import predict_batch
from .record import _UMASK, atomic_write
from .registry import Registry
from .spec import ExperimentSpec, spec_to_dict

log = logging.getLogger(__name__)

FORMATS = Registry("export format")
ONNX_TOLERANCE = 1e-4  # max abs difference on probabilities between onnxruntime and PyTorch
SMP_ARCHITECTURE = {"model.name": "resnet34_unet", "model.decoder": "smp", "model.base_channels": 64,
                    "model.batchnorm": True}


class ExportFormat:
    """One way out: `check(trained)` refuses a model the format cannot hold (before anything is
    written), `write(trained, tmp)` writes the file (or, when `folder`, the folder) at `tmp`."""

    folder = False
    needs: tuple[str, ...] = ()  # importable modules the format needs (from the `export` extra)

    def check(self, trained: Predictor) -> None:
        """Nothing to refuse: every model fits the format."""

    def write(self, trained: Predictor, tmp: Path) -> None:
        raise NotImplementedError


def metadata(trained: Predictor) -> dict[str, Any]:
    """What a user of the weights needs besides them: the resolved spec, the normalisation
    (per-channel mean / std of RGB in [0, 1], in float32 as inference uses them) and the valid
    input sizes."""
    return {"format": "segsweep", "segsweep_version": __version__, "spec": spec_to_dict(trained.spec),
            "normalization": {"mean": trained.mean.tolist(), "std": trained.std.tolist()},
            "size_divisor": size_divisor(trained)}


def size_divisor(trained: Predictor) -> int:
    return int(getattr(trained.model, "size_divisor", 1))


@FORMATS.register("state_dict")
class StateDictFormat(ExportFormat):
    """`torch.save(model.state_dict())`: tensors only, loads with `torch.load(weights_only=True)`
    into `segsweep.models.build_model(spec.model)`."""

    def write(self, trained: Predictor, tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            torch.save(dict(trained.model.state_dict()), fh)


@FORMATS.register("safetensors")
class SafetensorsFormat(ExportFormat):
    """The weights as safetensors; the header's metadata holds `format`, `segsweep_version`, and
    `spec`, `normalization`, `size_divisor` as JSON strings."""

    needs = ("safetensors",)

    def write(self, trained: Predictor, tmp: Path) -> None:
        from safetensors.torch import save

        state = {k: v.detach().contiguous() for k, v in trained.model.state_dict().items()}
        tmp.write_bytes(save(state, metadata={k: v if isinstance(v, str) else json.dumps(v)
                                              for k, v in metadata(trained).items()}))  # keeps tmp's mode


class Probabilities(nn.Module):
    """What the ONNX graph computes: RGB in [0, 1] (B, 3, H, W) -> normalise with the run's
    statistics -> the model (with the run's test-time augmentation) -> foreground probabilities
    (B, 1, H, W), as `segsweep predict` does before resizing."""

    def __init__(self, trained: Predictor):
        super().__init__()
        self.model, self.head, self.tta = trained.model, trained.spec.model.head, trained.spec.train.tta
        self.register_buffer("mean", torch.as_tensor(trained.mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.as_tensor(trained.std).view(1, -1, 1, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        output = predict_batch(self.model, (image - self.mean) / self.std, self.tta)
        return probabilities(output, self.head)  # (B, 1, H, W)


@FORMATS.register("onnx")
class OnnxFormat(ExportFormat):
    """ONNX (torch.export-based exporter) of `Probabilities`: input `image`, RGB in [0, 1],
    float32 (B, 3, H, W), output `probability` (B, 1, H, W). Batch, height and width are dynamic;
    H and W must be multiples of the model's `size_divisor` (in the graph's metadata with the spec
    and the normalisation). Checked with onnxruntime against PyTorch before it is kept."""

    needs = ("onnx", "onnxscript", "onnxruntime")

    def write(self, trained: Predictor, tmp: Path) -> None:
        import onnx

        wrapper = Probabilities(trained).eval()
        size, divisor = trained.spec.data.image_size, size_divisor(trained)
        example = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
        dim = torch.export.Dim
        batch, height, width = dim("batch", min=1), dim("height_blocks", min=1), dim("width_blocks", min=1)
        shapes = ({0: batch, 2: divisor * height, 3: divisor * width},)
        with torch.no_grad():
            program = torch.onnx.export(wrapper, (example,), None, dynamo=True, input_names=["image"],
                                        output_names=["probability"], dynamic_shapes=shapes, verbose=False)
        program.save(str(tmp), external_data=False)
        graph = onnx.load(str(tmp))
        for key, value in metadata(trained).items():
            graph.metadata_props.add(key=key, value=value if isinstance(value, str) else json.dumps(value))
        onnx.save(graph, str(tmp))
        check_onnx(tmp, wrapper, divisor, size)


def check_onnx(path: Path, reference: nn.Module, divisor: int, size: int) -> float:
    """Max abs difference on probabilities between onnxruntime and `reference` on random images
    at the training size and at a second valid size with another batch; `ExportError` above
    `ONNX_TOLERANCE`."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(1)
    worst = 0.0
    for shape in ((2, 3, size, size), (1, 3, size + divisor, max(divisor, size - divisor))):
        image = torch.rand(*shape, generator=generator)
        with torch.no_grad():
            want = reference(image).numpy()
        got = session.run(None, {"image": image.numpy()})[0]
        worst = max(worst, float(abs(got - want).max()))
    if worst > ONNX_TOLERANCE:
        raise ExportError(f"onnx: onnxruntime differs from PyTorch by {worst:.2e} on probabilities "
                          f"(tolerance {ONNX_TOLERANCE:g}); nothing written")
    log.info("onnx: onnxruntime matches PyTorch (max abs difference %.1e on probabilities)", worst)
    return worst


def smp_key(key: str) -> str:
    """Our `resnet34_unet` (decoder smp) parameter name -> smp.Unet's: the encoder's are the same,
    `decoder.blocks.I.J.K` is `decoder.blocks.I.conv{J+1}.K`, `head.*` is `segmentation_head.0.*`."""
    parts = key.split(".")
    if parts[0] == "decoder" and parts[1] == "blocks":
        return ".".join(["decoder", "blocks", parts[2], f"conv{int(parts[3]) + 1}", *parts[4:]])
    if parts[0] == "head":
        return ".".join(["segmentation_head", "0", *parts[1:]])
    return key


def to_smp_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {smp_key(k): v for k, v in state.items()}


def from_smp_state(state: dict[str, torch.Tensor], ours: nn.Module) -> dict[str, torch.Tensor]:
    """smp.Unet's state dict renamed to ours (`ours` gives the names)."""
    return {k: state[smp_key(k)] for k in ours.state_dict()}


@FORMATS.register("smp")
class SmpFormat(ExportFormat):
    """A folder `smp.from_pretrained(PATH)` loads as `smp.Unet("resnet34", classes=1)` (smp's
    `save_pretrained`: config.json + model.safetensors), plus `segsweep.json` with the spec and
    the normalisation. Holds `decoder: smp` runs at smp's width (base_channels 64) with BatchNorm."""

    folder = True
    needs = ("segmentation_models_pytorch",)

    def check(self, trained: Predictor) -> None:
        tree = {"model.name": trained.spec.model.name, "model.decoder": trained.spec.model.decoder,
                "model.base_channels": trained.spec.model.base_channels,
                "model.batchnorm": trained.spec.model.batchnorm}
        wrong = [f"{k}={tree[k]}" for k, v in SMP_ARCHITECTURE.items() if tree[k] != v]
        if wrong and tree["model.name"] != SMP_ARCHITECTURE["model.name"]:
            wrong = wrong[:1]  # another model altogether: its decoder and width say nothing
        if wrong:
            want = ", ".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in SMP_ARCHITECTURE.items())
            raise ExportError(f"format smp holds smp.Unet('resnet34') only ({want}); this run has {', '.join(wrong)}; "
                              "use --format safetensors or state_dict")

    def write(self, trained: Predictor, tmp: Path) -> None:
        import segmentation_models_pytorch as smp

        activation = "sigmoid" if trained.spec.model.head == "sigmoid" else None
        unet = smp.Unet("resnet34", encoder_weights=None, in_channels=3, classes=1, activation=activation)
        unet.load_state_dict(to_smp_state(trained.model.state_dict()), strict=True)
        unet.save_pretrained(str(tmp))
        (tmp / "segsweep.json").write_text(json.dumps(metadata(trained), indent=2) + "\n", encoding="utf-8")


def load_trained(source: str | Path) -> Predictor:
    """The model of a run folder (its checkpoints/best.pt) or of a checkpoint file, on the CPU in
    eval mode, with its spec and normalisation (loaded with `torch.load(weights_only=True)`)."""
    path = Path(source)
    if path.is_dir() and not (path / "checkpoints" / "best.pt").is_file():
        raise ExportError(f"{path}: no checkpoints/best.pt; expected a run folder with a best checkpoint "
                          "(one completed epoch) or a .pt checkpoint file")
    return Predictor(path, device="cpu")


def _check_out(out: Path, folder: bool) -> None:
    if out.is_dir():
        raise ExportError(f"--out {out}: is a folder; give a new path "
                          f"({'the folder smp format creates' if folder else 'a file name'}), nothing written")
    if out.exists() or out.is_symlink():
        raise ExportError(f"--out {out}: already exists; give a new path (export never overwrites)")


def _check_needs(name: str, fmt: ExportFormat) -> None:
    import importlib.util

    missing = [m for m in fmt.needs if importlib.util.find_spec(m) is None]
    if missing:
        extra = "bench" if name == "smp" else "export"
        raise ExportError(f"format {name} needs {', '.join(missing)}: pip install 'segsweep[{extra}]'")


def export_model(source: str | Path, fmt_name: str, out: str | Path) -> Path:
    """Write the trained model at `source` (run folder or checkpoint) to `out` in format
    `fmt_name` (a name in `FORMATS`). Raises `ExportError` / `UnknownNameError` / `CheckpointError` (one line) before
    writing anything when the format, the source or `out` will not do."""
    fmt: ExportFormat = FORMATS.get(fmt_name)()
    out = Path(out)
    _check_out(out, fmt.folder)
    _check_needs(fmt_name, fmt)
    trained = load_trained(source)
    fmt.check(trained)
    if fmt.folder:
        _write_folder(out, lambda tmp: fmt.write(trained, tmp))
    else:
        atomic_write(out, lambda tmp: fmt.write(trained, tmp), ExportError)
    log.info("exported %s (%s) to %s", source, fmt_name, out)
    return out


def _write_folder(out: Path, write: Callable[[Path], None]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        write(tmp)
        for path in [tmp, *tmp.rglob("*")]:  # mkdtemp and some writers make 0700 / 0600: records are shared
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~_UMASK)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def exported_spec(meta: dict[str, str]) -> ExperimentSpec:
    """The spec stored in an export's metadata (safetensors header, ONNX metadata_props)."""
    from .spec import spec_from_dict

    return spec_from_dict(json.loads(meta["spec"]), "<export metadata>")
