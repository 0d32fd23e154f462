"""Segmentation losses: BCE, soft Dice and focal terms (`LOSSES`), and `build_loss(spec.loss, head)`
for their weighted sum. Each term takes the model's output as logits or as probabilities
(`head`), skips ignored pixels (mask == 255) and computes in fp32.

Adding a term is one file: a `LossTerm` subclass decorated `@LOSSES.register("name")`; its weight
is then the spec key `loss.name` (0 by default), and its `check_spec` its rules on the whole spec.

No head and loss ever apply a sigmoid twice, except on purpose: `loss.double_sigmoid_bce` is the
study's BCE term (`BCEWithLogitsLoss` on a sigmoid head's output), for reproducing what it ran.
The study's whole loss is that term plus its batch-pooled Dice term: `loss.bce: 0`,
`loss.double_sigmoid_bce: 1`, `loss.dice: 0`, `loss.dice_batch: 1` (experiments/study.yaml).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import SpecFieldError
from .registry import Registry
from .sections import LossSpec

if TYPE_CHECKING:  # annotations only: spec.py checks a spec's loss terms through LOSSES
    from .spec import ExperimentSpec

LOSSES = Registry("loss")

Head = Literal["sigmoid", "logits"]
IGNORE = 255  # mask value excluded from every loss term and metric
EPS = 1e-6  # probabilities of a sigmoid head are clamped to [EPS, 1 - EPS] before the logs
SMOOTH = 1.0  # soft Dice: (2 * inter + SMOOTH) / (pred + true + SMOOTH), per image
STUDY_EPS = 1e-8  # the study's Dice: 2 * inter / (pred + true + STUDY_EPS), pooled over the batch
DOUBLE_SIGMOID_WARNING = ("warning: loss.double_sigmoid_bce: BCE-with-logits is applied to the sigmoid head's "
                          "output (a second sigmoid, as the study trained); its BCE term is not the usual BCE")


@dataclass(frozen=True)
class Prepared:
    """What every term needs, computed once per batch. All (B, H, W) float32."""

    prob: torch.Tensor  # p = P(foreground)
    log_p: torch.Tensor  # log p
    log_1mp: torch.Tensor  # log (1 - p)
    target: torch.Tensor  # 1 where mask == 1, else 0
    valid: torch.Tensor  # 1 where mask != 255, else 0


def prepare(output: torch.Tensor, mask: torch.Tensor, head: Head, eps: float = EPS) -> Prepared:
    """output (B, 1, H, W) logits or probabilities, mask (B, H, W) uint8 {0, 1, 255}.

    Logits: p = sigmoid(x), log p = logsigmoid(x), log(1-p) = logsigmoid(-x) (stable, no clamp).
    Probabilities (sigmoid head): used as they are (no second sigmoid); for the logs they are
    clamped to [eps, 1 - eps] with a straight-through gradient, so a saturated output gives a
    finite loss and still passes the gradient on (like torch's BCE, unlike a plain clamp).
    """
    out = output.float().squeeze(1)  # (B, H, W)
    valid = (mask != IGNORE).float()
    target = (mask == 1).float()
    if head == "logits":
        return Prepared(torch.sigmoid(out), F.logsigmoid(out), F.logsigmoid(-out), target, valid)
    if head != "sigmoid":
        raise ValueError(f"unknown head {head!r}; valid: sigmoid, logits")
    clamped = out + (out.clamp(eps, 1.0 - eps) - out).detach()
    return Prepared(out, torch.log(clamped), torch.log1p(-clamped), target, valid)


def _mean_valid(per_pixel: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over the valid pixels of the batch (0 when there are none)."""
    return (per_pixel * valid).sum() / valid.sum().clamp_min(1.0)


def _bce_map(p: Prepared) -> torch.Tensor:
    return -(p.target * p.log_p + (1.0 - p.target) * p.log_1mp)  # (B, H, W)


class LossTerm(nn.Module):
    """A loss term: `forward(output, mask)` on its own, `from_prepared` inside a weighted sum.

    `from_spec(spec.loss, head)` builds it; a term with options of its own reads them there.
    """

    def __init__(self, head: Head):
        super().__init__()
        self.head = head

    @classmethod
    def from_spec(cls, spec: LossSpec, head: Head) -> "LossTerm":
        return cls(head)

    @classmethod
    def check_spec(cls, spec: ExperimentSpec) -> None:
        """Raise `SpecFieldError` if the spec cannot use this term (when its weight is > 0)."""

    def from_prepared(self, p: Prepared, output: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, output: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        with torch.autocast(output.device.type, enabled=False):
            return self.from_prepared(prepare(output, mask, self.head), output)


@LOSSES.register("bce")
class BCE(LossTerm):
    """Binary cross-entropy averaged over the valid pixels of the batch.

    Logits: `binary_cross_entropy_with_logits`; probabilities: -(t log p + (1-t) log(1-p))
    with p clamped (written out, since `F.binary_cross_entropy` refuses CUDA autocast).
    """

    def from_prepared(self, p: Prepared, output: torch.Tensor) -> torch.Tensor:
        if self.head == "logits":
            logits = output.float().squeeze(1)
            per_pixel = F.binary_cross_entropy_with_logits(logits, p.target, reduction="none")
        else:
            per_pixel = _bce_map(p)
        return _mean_valid(per_pixel, p.valid)


@LOSSES.register("double_sigmoid_bce")
class DoubleSigmoidBCE(LossTerm):
    """The study's BCE, reproduced on purpose: `BCEWithLogitsLoss()(output, target)` where `output`
    is the sigmoid head's output, so the BCE sees sigmoid(sigmoid(z)). Averaged over valid pixels.

    Spec rule (`check_spec`): only with `model.head: sigmoid` (on logits it would be `loss.bce`).
    It adds to the other terms like any term; the study's whole loss is this term plus its
    batch-pooled Dice, `loss.dice_batch: 1` (with `loss.bce: 0`, `loss.dice: 0`). A run using it
    says so in a warning at start, in summary.json (`double_sigmoid: true`) and in every report
    that includes it.
    """

    @classmethod
    def check_spec(cls, spec: ExperimentSpec) -> None:
        if spec.model.head != "sigmoid":
            raise SpecFieldError("loss.double_sigmoid_bce", f"applies BCE-with-logits to a sigmoid head's output and "
                                 f"needs model.head: sigmoid (got {spec.model.head}); for logits use loss.bce")

    def from_prepared(self, p: Prepared, output: torch.Tensor) -> torch.Tensor:
        if self.head != "sigmoid":
            raise ValueError("double_sigmoid_bce needs a sigmoid head")
        outputs = output.float().squeeze(1)  # (B, H, W) probabilities, treated as logits
        per_pixel = F.binary_cross_entropy_with_logits(outputs, p.target, reduction="none")
        return _mean_valid(per_pixel, p.valid)


@LOSSES.register("dice")
class SoftDice(LossTerm):
    """1 - soft Dice, computed per image and averaged over the batch.

    Dice_i = (2 sum(p t) + s) / (sum(p) + sum(t) + s) over image i's valid pixels, s = `smooth`
    (1 by default): an image with no foreground predicted where there is none scores 1 (as the
    metric's both-empty convention), and the gradient stays finite on empty images.
    """

    def __init__(self, head: Head, smooth: float = SMOOTH):
        super().__init__(head)
        self.smooth = smooth

    def from_prepared(self, p: Prepared, output: torch.Tensor) -> torch.Tensor:
        prob = p.prob * p.valid
        target = p.target * p.valid
        inter = (prob * target).sum(dim=(1, 2))  # (B,)
        denom = prob.sum(dim=(1, 2)) + target.sum(dim=(1, 2))
        dice = (2.0 * inter + self.smooth) / (denom + self.smooth)
        return 1.0 - dice.mean()


@LOSSES.register("dice_batch")
class BatchDice(LossTerm):
    """1 - one soft Dice pooled over the whole batch, the study's `dice_loss`:
    1 - 2 sum(p t) / (sum(p) + sum(t) + eps), the sums running over every valid pixel of every
    image of the batch together, eps = 1e-8 (`STUDY_EPS`).

    Unlike `dice` (one Dice per image with smoothing 1, then the mean), an image's weight grows
    with its pixel counts, and an empty mask adds only its false positives to the denominator.
    """

    def from_prepared(self, p: Prepared, output: torch.Tensor) -> torch.Tensor:
        prob = p.prob * p.valid
        inter = (prob * p.target).sum()
        return 1.0 - 2.0 * inter / (prob.sum() + (p.target * p.valid).sum() + STUDY_EPS)


@LOSSES.register("focal")
class Focal(LossTerm):
    """Focal loss (Lin et al. 2017) without class weighting: (1 - p_t)^gamma * BCE, averaged over
    valid pixels; equals torchvision's `sigmoid_focal_loss(alpha=-1)` for logits."""

    def __init__(self, head: Head, gamma: float = 2.0):
        super().__init__(head)
        self.gamma = gamma

    @classmethod
    def from_spec(cls, spec: LossSpec, head: Head) -> "Focal":
        return cls(head, gamma=spec.focal_gamma)

    def from_prepared(self, p: Prepared, output: torch.Tensor) -> torch.Tensor:
        bce = _bce_map(p)
        p_t = torch.exp(-bce)  # probability given to the true class
        return _mean_valid((1.0 - p_t).pow(self.gamma) * bce, p.valid)


class SegmentationLoss(nn.Module):
    """sum_k weight_k * term_k(output, mask); terms with weight 0 are not computed."""

    def __init__(self, terms: dict[str, LossTerm], weights: dict[str, float], head: Head):
        super().__init__()
        self.terms = nn.ModuleDict(terms)
        self.weights = dict(weights)
        self.head = head

    def components(self, output: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each term's unweighted value (for logging)."""
        with torch.autocast(output.device.type, enabled=False):
            p = prepare(output, mask, self.head)
            return {name: term.from_prepared(p, output) for name, term in self.terms.items()}

    def forward(self, output: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        parts = self.components(output, mask)
        return sum(self.weights[name] * value for name, value in parts.items())


def term_weights(spec: LossSpec) -> dict[str, float]:
    """Each registered term's weight `loss.<name>` (0 when the spec leaves it out), in name order."""
    return {name: float(getattr(spec, name, 0.0)) for name in LOSSES.names()}


def build_loss(spec: LossSpec, head: Head) -> SegmentationLoss:
    """`bce * BCE + dice * SoftDice + focal * Focal` (+ any registered term with a positive weight)
    for a model whose output is `head`."""
    weights = {name: weight for name, weight in term_weights(spec).items() if weight > 0}
    terms = {name: LOSSES.get(name).from_spec(spec, head) for name in weights}
    return SegmentationLoss(terms, weights, head)


def uses_double_sigmoid(spec: ExperimentSpec) -> bool:
    """Whether the spec trains with `loss.double_sigmoid_bce` (the study's BCE on sigmoid outputs)."""
    return float(getattr(spec.loss, "double_sigmoid_bce", 0.0)) > 0
