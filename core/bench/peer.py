"""The peer figure: our epoch against a typical user stack's (PyTorch Lightning with
segmentation_models_pytorch), same loaders, size, batch and precision (the `bench` extra)."""
from __future__ import annotations

import contextlib
import logging
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch

from ..models import build_model
from ..spec import ExperimentSpec
from .contenders import Plan, TrainerRun, base_spec, training_flops
from .measure import figure, interleaved, median, paired_ratio, with_peak_rss

PEER_ARCHITECTURE = {"model.name": "resnet34_unet", "model.base_channels": 64, "model.decoder": "smp"}


def bench_peer(plan: Plan, cache_dir: Path) -> dict[str, Any]:
    """Our epoch (train_one_epoch + evaluate) over a typical user stack's: PyTorch Lightning with
    segmentation_models_pytorch `Unet("resnet34")`, same loaders, size, batch and precision.

    The figure trains the same network on both sides (`model.decoder: smp` is smp's decoder), so
    it compares the stacks. Our study-faithful decoder (heavier) and Lightning driving it are
    timed alongside, to separate what the architecture costs from what the loop costs."""
    try:
        import lightning as L
        import segmentation_models_pytorch as smp
    except ImportError as exc:
        return {"peer_ratio": figure(
            "peer_ratio", None, "ratio", skipped=True,
            note=f"skipped: the bench extra is not installed ({exc.name}); pip install -e '.[bench]'")}

    same = TrainerRun(base_spec(plan, cache_dir, PEER_ARCHITECTURE))
    spec = base_spec(plan, cache_dir, plan.main_model)
    study = TrainerRun(spec)
    precision = {"fp32": "32-true", "bf16": "bf16-mixed"}[same.precision]
    torch.manual_seed(0)
    peers = {"peer": _peer_module(L, smp, smp.Unet("resnet34", encoder_weights=None, in_channels=3, classes=1),
                                  spec.optim.lr),
             # The same loop around our own model: what the loop costs, apart from the architecture.
             "lightning_our_model": _peer_module(L, smp, build_model(spec.model), spec.optim.lr)}
    timer = _EpochTimer(L)

    def peer_epoch(name: str) -> float:
        trainer = L.Trainer(
            accelerator="cpu", devices=1, max_epochs=1, precision=precision, logger=False,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            num_sanity_val_steps=0, use_distributed_sampler=False, callbacks=[timer],
        )
        trainer.fit(peers[name], train_dataloaders=same.data.train, val_dataloaders=same.data.val)
        return timer.seconds

    with warnings.catch_warnings(), _quiet_lightning():
        warnings.simplefilter("ignore")
        same.epoch_seconds()
        study.epoch_seconds()
        for name in peers:
            peer_epoch(name)
        reps = interleaved({"ours": same.epoch_seconds, "ours_study_decoder": study.epoch_seconds,
                            **{n: (lambda n=n: peer_epoch(n)) for n in peers}}, max(2, plan.reps - 2))
    peer_flops = _peer_flops(smp, spec)
    same_flops, _ = training_flops(same.spec)
    study_flops, _ = training_flops(spec)
    ratio = paired_ratio(reps["ours"], reps["peer"])
    return with_peak_rss({"peer_ratio": figure(
        "peer_ratio", ratio, "ratio (our epoch s / peer epoch s)",
        ours_epoch_s=round(median(reps["ours"]), 3), peer_epoch_s=round(median(reps["peer"]), 3),
        ours_model=dict(PEER_ARCHITECTURE), ours_gflop_per_image=round(same_flops / 1e9, 3),
        peer_gflop_per_image=round(peer_flops / 1e9, 3),
        study_decoder={"model": dict(plan.main_model), "epoch_s": round(median(reps["ours_study_decoder"]), 3),
                       "gflop_per_image": round(study_flops / 1e9, 3),
                       "ratio_to_peer": round(paired_ratio(reps["ours_study_decoder"], reps["peer"]), 4),
                       "lightning_epoch_s": round(median(reps["lightning_our_model"]), 3),
                       "loop_ratio": round(paired_ratio(reps["ours_study_decoder"], reps["lightning_our_model"]), 4)},
        reps={k: [round(x, 3) for x in v] for k, v in reps.items()},
        train_images=spec.data.limit_train, val_images=len(same.data.datasets["val"]),
        peer={"lightning": L.__version__, "smp": smp.__version__, "precision": precision,
              "model": 'smp.Unet("resnet34", encoder_weights=None, classes=1)'},
        note="one epoch = training pass + validation pass on the same loaders; ours trains smp's network "
             "(model.decoder: smp); study_decoder: our default decoder (256/128/64/64/32, transposed convs), "
             "its ratio to the peer and to Lightning driving it (loop_ratio)")})


def _peer_module(L: Any, smp: Any, net: torch.nn.Module, lr: float) -> Any:
    class PeerModule(L.LightningModule):
        """What a user typically writes: a network, BCE + Dice from smp.losses, Adam."""
        def __init__(self) -> None:
            super().__init__()
            self.net = net
            self.dice = smp.losses.DiceLoss("binary", from_logits=True, ignore_index=255)
            self.bce = smp.losses.SoftBCEWithLogitsLoss(ignore_index=255)

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.net(images)

        def _loss(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            images, masks, _ = batch
            logits = self(images)  # (B, 1, H, W)
            target = masks[:, None].float()
            return self.bce(logits, target) + self.dice(logits, masks[:, None].long()), logits, masks

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            loss, _, _ = self._loss(batch)
            self.log("train/loss", loss, on_step=True, on_epoch=True)
            return loss

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            loss, logits, masks = self._loss(batch)
            stats = smp.metrics.get_stats(logits.sigmoid(), masks[:, None].long(), mode="binary", threshold=0.5)
            dice = smp.metrics.f1_score(*stats, reduction="micro-imagewise")
            self.log_dict({"val/loss": loss, "val/dice": dice}, on_epoch=True)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.parameters(), lr=lr)

    return PeerModule()


def _peer_flops(smp: Any, spec: ExperimentSpec) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    net = smp.Unet("resnet34", encoder_weights=None, in_channels=3, classes=1)
    s = spec.data.image_size
    with FlopCounterMode(display=False) as counter:
        net(torch.randn(2, 3, s, s)).sum().backward()
    return counter.get_total_flops() / 2


class _EpochTimer:
    """A Lightning callback: seconds from the start of a training epoch to the end of its
    validation (Lightning validates inside the training epoch)."""
    def __new__(cls, L: Any) -> Any:
        class EpochTimer(L.Callback):
            seconds = float("nan")

            def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
                self.started = time.perf_counter()

            def on_validation_epoch_end(self, trainer: Any, module: Any) -> None:
                self.seconds = time.perf_counter() - self.started

        return EpochTimer()


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    loggers = [logging.getLogger(n) for n in ("lightning", "lightning.pytorch", "lightning.fabric",
                                              "pytorch_lightning")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
