"""The fast path (channels_last memory format, bf16 autocast) predicts what fp32 NCHW predicts.

Each tiny model is first trained briefly to segment bright discs, so its logits carry a real
signal (an untrained net's are nearly constant, and any tolerance on them says nothing).
Tolerances, on held-out images, stated once:
- channels_last, fp32: the same math in another memory layout; oneDNN may pick other kernels
  and sum in another order: logits within 1e-4 of their spread (std), masks (logit > 0) equal
  on all but 0.1% of pixels; gradients of one step within 1e-4 of their norm.
- bf16 autocast: 8-bit mantissas: logits within 0.1 of their spread, masks equal on 98% of
  pixels. Checked on every CPU: slow without bf16 units, but correct, and the sizes are tiny.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from segsweep.data import build_data
from segsweep.losses import build_loss
from segsweep.models import MODELS, build_model
from segsweep.spec import ExperimentSpec, LossSpec, override_spec
from segsweep.train.device import autocast, resolve_precision
from segsweep.train.loop import evaluate

CPU = torch.device("cpu")
TOLERANCE = {  # (precision, channels_last) -> (max logit error / logit std, share of mask pixels that may differ)
    ("fp32", True): (1e-4, 0.001),
    ("bf16", False): (0.1, 0.02),
    ("bf16", True): (0.1, 0.02),
}
SIZES = {"unet": 32, "resnet34_unet": 32, "study_resnet34_unet": 64}


def discs(n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bright discs on noise: images (n, 3, S, S) float32, masks (n, S, S) uint8 {0, 1}."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images = rng.normal(0, 0.5, (n, 3, size, size)).astype(np.float32)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        cy, cx = rng.uniform(size * 0.3, size * 0.7, 2)
        r = rng.uniform(size * 0.15, size * 0.3)
        masks[i] = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
        images[i] += 1.5 * masks[i]
    return torch.from_numpy(images), torch.from_numpy(masks)


_TRAINED: dict[str, torch.nn.Module] = {}


def trained_model(name: str) -> torch.nn.Module:
    """A width-8 model after 25 Adam steps on discs (cached per test session), in eval mode."""
    if name not in _TRAINED:
        size = SIZES[name]
        width = MODELS.get(name).fixed.get("base_channels", 8)  # a model with fixed widths takes only its own
        spec = override_spec(ExperimentSpec(), {"model.name": name, "model.base_channels": width,
                                                "data.image_size": size})
        torch.manual_seed(0)
        model = build_model(spec.model).train()
        # a full-width network (fixed widths: 48M parameters) learns the discs at 1e-3, not 3e-3
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3 if MODELS.get(name).fixed else 3e-3)
        loss_fn = build_loss(LossSpec(), spec.model.head)
        images, masks = discs(32, size, seed=0)
        for step in range(25):
            batch = slice(step % 4 * 8, step % 4 * 8 + 8)
            loss = loss_fn(model(images[batch]).float(), masks[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        _TRAINED[name] = model.eval()
    return _TRAINED[name]


def logits(model: torch.nn.Module, images: torch.Tensor, precision: str, channels_last: bool) -> torch.Tensor:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = copy.deepcopy(model).to(memory_format=fmt).eval()
    with torch.no_grad(), autocast(CPU, precision):
        return model(images.contiguous(memory_format=fmt)).float()  # (B, 1, H, W)


def test_every_model_is_covered() -> None:
    assert set(SIZES) == set(MODELS.names()), "a new model needs a size in SIZES"


@pytest.mark.parametrize("name", sorted(SIZES))
@pytest.mark.parametrize("precision,channels_last", sorted(TOLERANCE))
def test_fast_path_predicts_what_fp32_nchw_predicts(name: str, precision: str, channels_last: bool) -> None:
    model = trained_model(name)
    images, truth = discs(6, SIZES[name], seed=1)
    reference = logits(model, images, "fp32", False)
    fast = logits(model, images, precision, channels_last)
    logit_tol, mask_tol = TOLERANCE[(precision, channels_last)]
    # The trained model has learnt something: its masks overlap the discs far above chance.
    predicted = reference[:, 0] > 0
    dice = 2 * (predicted & (truth == 1)).sum() / (predicted.sum() + (truth == 1).sum())
    assert dice > 0.5
    assert (fast - reference).abs().max().item() <= logit_tol * reference.std().item()
    assert ((fast > 0) != (reference > 0)).float().mean().item() <= mask_tol


@pytest.mark.parametrize("name", sorted(SIZES))
def test_channels_last_gradients_match_nchw(name: str) -> None:
    """One forward + backward in train mode from the same weights: the same loss and gradients."""
    images, masks = discs(4, SIZES[name], seed=2)
    loss_fn = build_loss(LossSpec(), "logits")
    grads = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        model = copy.deepcopy(trained_model(name)).to(memory_format=fmt).train()
        loss = loss_fn(model(images.contiguous(memory_format=fmt)).float(), masks)
        loss.backward()
        grads.append((loss.item(), {k: p.grad.detach().clone() for k, p in model.named_parameters()}))
    (loss_a, grad_a), (loss_b, grad_b) = grads
    assert loss_b == pytest.approx(loss_a, rel=1e-5)
    # fp32 sums in another order (layout, thread count) differ by ~1e-5 relative, more on small
    # BatchNorm-weight gradients; a layout bug would differ by O(1).
    for key, g in grad_a.items():
        assert (grad_b[key] - g).norm().item() <= 2e-3 * g.norm().item() + 1e-7, key


def test_evaluate_gives_the_same_metrics_on_the_fast_path(tiny_spec) -> None:
    """Through the trainer's `evaluate` on real loaders: per-image Dice equal on both layouts."""
    spec = tiny_spec()
    data = build_data(spec)
    torch.manual_seed(0)
    model = build_model(spec.model)
    loss_fn = build_loss(spec.loss, spec.model.head)
    out = {}
    for channels_last in (False, True):
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        out[channels_last] = evaluate(copy.deepcopy(model).to(memory_format=fmt), data.val, loss_fn,
                                      head=spec.model.head, device=CPU, precision="fp32",
                                      channels_last=channels_last, ids=data.datasets["val"].ids)
    nchw, fast = out[False], out[True]
    assert fast.loss == pytest.approx(nchw.loss, rel=1e-5)
    assert [i for i, _, _ in fast.per_image] == [i for i, _, _ in nchw.per_image]
    for (_, d_fast, _), (_, d_ref, _) in zip(fast.per_image, nchw.per_image):
        assert d_fast == pytest.approx(d_ref, abs=1e-3)


def test_auto_precision_is_fp32_on_cpus_without_bf16_units(monkeypatch) -> None:
    import segsweep.train.device as trainer

    monkeypatch.setattr(trainer, "cpu_has_fast_bf16", lambda: False)
    assert resolve_precision("auto", CPU) == "fp32"
    monkeypatch.setattr(trainer, "cpu_has_fast_bf16", lambda: True)
    assert resolve_precision("auto", CPU) == "bf16"
    assert resolve_precision("fp32", CPU) == "fp32"
