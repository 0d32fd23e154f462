"""`segsweep export`: ONNX (checked with onnxruntime on test images, dynamic batch and sizes),
safetensors with the spec and normalisation, a plain state dict, smp's format; bad input exits 2
with one line and writes nothing. Skipped without the `export` extra (smp: the `bench` extra),
except under CI=true, where they fail."""
from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from segsweep.data.sources import decode_image, read_split_file
from segsweep.export import FORMATS, ONNX_TOLERANCE, from_smp_state
from segsweep.models import build_model, predict_batch
from segsweep.metrics import probabilities
from segsweep.spec import ExperimentSpec, override_spec, spec_from_dict, spec_to_dict
from segsweep.train.loop import fit


def need(*modules: str):
    """Import `modules` (the last one returned); skip when missing, fail under CI=true."""
    import importlib

    try:
        return [importlib.import_module(m) for m in modules][-1]
    except ImportError as exc:
        if os.environ.get("CI", "").strip().lower() in ("true", "1"):
            pytest.fail(f"CI=true: export tests must run, but {exc}", pytrace=False)
        pytest.skip(f"{exc.name} is not installed (pip install -e '.[export,bench]')")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory, synthetic_root: Path) -> Path:
    from conftest import REPO, TINY
    from segsweep.spec import load_spec

    tmp = tmp_path_factory.mktemp("export_run")
    spec = load_spec(REPO / "experiments" / "quickstart.yaml",
                     {**TINY, "train.epochs": 1, "data.root": str(synthetic_root),
                      "data.cache_dir": str(synthetic_root.parent / "cache"), "train.tta": "hflip"})
    fit(spec, tmp / "run")
    return tmp / "run"


def load_test_images(run_dir: Path, n: int) -> tuple[np.ndarray, ExperimentSpec]:
    """The first `n` test images of the run's dataset, squash-resized as evaluation does, RGB in [0, 1]."""
    state = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    spec = spec_from_dict(state["spec"])
    root = Path(spec.data.root)
    size = spec.data.image_size
    names = read_split_file(root / "annotations" / "test.txt")[:n]
    images = [cv2.resize(decode_image(root / "images" / f"{name}.jpg"), (size, size), interpolation=cv2.INTER_AREA)
              for name in names]
    return np.stack(images).astype(np.float32).transpose(0, 3, 1, 2) / 255, spec


def pytorch_probabilities(run_dir: Path, images: np.ndarray) -> np.ndarray:
    """segsweep's own evaluation path on RGB in [0, 1]: normalise, model with TTA, probabilities."""
    state = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    spec = spec_from_dict(state["spec"])
    model = build_model(spec.model).eval()
    model.load_state_dict(state["model"])
    mean = torch.tensor(state["normalization"]["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(state["normalization"]["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        out = predict_batch(model, (torch.from_numpy(images) - mean) / std, spec.train.tta)
    return probabilities(out, spec.model.head).numpy()


def test_onnx_matches_pytorch_on_test_images_with_dynamic_batch_and_size(trained_run: Path, tmp_path: Path, cli) -> None:
    ort = need("onnx", "onnxscript", "onnxruntime")
    out = tmp_path / "model.onnx"
    done = cli("export", trained_run, "--format", "onnx", "--out", out)
    assert done.code == 0, done.err
    assert "onnxruntime matches PyTorch" in done.out and str(out) in done.out
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    images, spec = load_test_images(trained_run, 5)
    assert spec.train.tta == "hflip" and images.shape[-1] == spec.data.image_size
    for batch in (images[:1], images):  # batch 1 and 5
        got = session.run(["probability"], {"image": batch})[0]
        assert got.shape == (len(batch), 1, *batch.shape[-2:])
        assert float(np.abs(got - pytorch_probabilities(trained_run, batch)).max()) <= ONNX_TOLERANCE
    other = np.ascontiguousarray(np.concatenate([images[:2], images[:2]], axis=3)[..., :48])  # 32 x 48: 16 | both
    got = session.run(["probability"], {"image": other})[0]
    assert got.shape == (2, 1, 32, 48)
    assert float(np.abs(got - pytorch_probabilities(trained_run, other)).max()) <= ONNX_TOLERANCE
    meta = {p.key: p.value for p in need("onnx").load(str(out)).metadata_props}
    assert json.loads(meta["size_divisor"]) == 16 and spec_from_dict(json.loads(meta["spec"])) == spec


def test_safetensors_holds_the_weights_spec_and_normalisation(trained_run: Path, tmp_path: Path, cli) -> None:
    need("safetensors")
    from safetensors import safe_open

    out = tmp_path / "model.safetensors"
    assert cli("export", trained_run, "--format", "safetensors", "--out", out).code == 0
    best = torch.load(trained_run / "checkpoints" / "best.pt", weights_only=True)
    with safe_open(str(out), framework="pt") as fh:
        meta = fh.metadata()
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    assert tensors.keys() == best["model"].keys()
    assert all(torch.equal(tensors[k], best["model"][k]) for k in tensors)
    assert json.loads(meta["spec"]) == best["spec"] and json.loads(meta["normalization"]) == best["normalization"]
    assert meta["format"] == "segsweep"


def test_state_dict_loads_with_weights_only_into_the_model(trained_run: Path, tmp_path: Path, cli) -> None:
    out = tmp_path / "model.pt"
    assert cli("export", trained_run / "checkpoints" / "best.pt", "--format", "state_dict", "--out", out).code == 0
    state = torch.load(out, weights_only=True)
    best = torch.load(trained_run / "checkpoints" / "best.pt", weights_only=True)
    assert state.keys() == best["model"].keys() and all(torch.equal(state[k], best["model"][k]) for k in state)
    build_model(spec_from_dict(best["spec"]).model).load_state_dict(state)


def smp_checkpoint(tmp_path: Path, **model: object) -> Path:
    """A checkpoint of a freshly built resnet34_unet (as best.pt stores it)."""
    spec = override_spec(ExperimentSpec(), {"model.name": "resnet34_unet", "model.decoder": "smp",
                                            "model.base_channels": 64, "data.image_size": 64,
                                            **{f"model.{k}": v for k, v in model.items()}})
    torch.manual_seed(0)
    net = build_model(spec.model)
    path = tmp_path / "best.pt"
    torch.save({"model": net.state_dict(), "spec": spec_to_dict(spec),
                "normalization": {"mean": [0.5, 0.375, 0.25], "std": [0.125, 0.25, 0.5]}}, path)
    return path


@pytest.mark.parametrize("head", ["logits", "sigmoid"])
def test_smp_format_loads_into_smp_unet_with_the_same_outputs(tmp_path: Path, cli, head: str) -> None:
    smp = need("safetensors", "segmentation_models_pytorch")
    checkpoint = smp_checkpoint(tmp_path, head=head)
    out = tmp_path / "smp_unet"
    done = cli("export", checkpoint, "--format", "smp", "--out", out)
    assert done.code == 0, done.err
    unet = smp.from_pretrained(str(out)).eval()
    assert isinstance(unet, smp.Unet)
    state = torch.load(checkpoint, weights_only=True)
    ours = build_model(spec_from_dict(state["spec"]).model).eval()
    ours.load_state_dict(state["model"])
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert float((unet(x) - ours(x)).abs().max()) <= 1e-5
    assert from_smp_state(unet.state_dict(), ours).keys() == state["model"].keys()
    assert json.loads((out / "segsweep.json").read_text())["normalization"] == state["normalization"]


def test_help_lists_every_format(cli) -> None:
    done = cli("export", "--help")
    assert all(name in done.out for name in FORMATS.names())


def assert_refused(done, *words: str) -> None:
    assert done.code == 2, (done.out, done.err)
    lines = done.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.err
    assert all(w in lines[0] for w in words), lines[0]


def test_bad_input_exits_2_with_one_line_and_writes_nothing(trained_run: Path, tmp_path: Path, cli) -> None:
    out_dir = tmp_path / "exports"
    out_dir.mkdir()
    assert_refused(cli("export", trained_run, "--format", "tflite", "--out", out_dir / "m"),
                   "tflite", "onnx", "safetensors", "smp", "state_dict")
    no_best = tmp_path / "unfinished"
    (no_best / "checkpoints").mkdir(parents=True)
    assert_refused(cli("export", no_best, "--format", "state_dict", "--out", out_dir / "m.pt"),
                   str(no_best), "best.pt")
    assert_refused(cli("export", trained_run, "--format", "smp", "--out", out_dir / "smp"),
                   "model.name=unet", "model.decoder=smp")
    assert_refused(cli("export", trained_run, "--format", "state_dict", "--out", out_dir), "is a folder")
    existing = out_dir / "kept.pt"
    existing.write_bytes(b"precious")
    assert_refused(cli("export", trained_run, "--format", "state_dict", "--out", existing), "already exists")
    assert existing.read_bytes() == b"precious"
    assert sorted(p.name for p in out_dir.iterdir()) == ["kept.pt"]  # nothing else, no temporary file
    bad = tmp_path / "code.pt"
    torch.save({"model": {}, "spec": object()}, bad)
    assert_refused(cli("export", bad, "--format", "state_dict", "--out", out_dir / "x.pt"), str(bad), "weights-only")
    assert sorted(p.name for p in out_dir.iterdir()) == ["kept.pt"]
