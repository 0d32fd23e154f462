"""Checkpoints: atomic saves, safe loads (`weights_only=True`), and a top-k keeper by val/dice.

A checkpoint is a dict of tensors and plain types only, so it loads without unpickling code:
`{"model", "optimizer", "scheduler", "scaler", "epoch", "metrics", "spec", "state"}`.
"""
from __future__ import annotations

import errno
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from core.errors import CheckpointError
from core.record import atomic_write


def save_checkpoint(payload: dict[str, Any], path: Path) -> None:
    """Write `payload` to `path` atomically; on a full disk the previous file stays intact."""

    def write(tmp: Path) -> None:
        torch.save(payload, tmp)

    try:
        atomic_write(path, write)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise CheckpointError(
                f"{path}: no space left on device while saving; the previous checkpoint is intact"
            ) from None
        raise


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint with `weights_only=True`; anything unusable is a `CheckpointError`."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, expected a checkpoint file (.pt)")
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsafe content"
        raise CheckpointError(
            f"{path}: refused: the file holds objects that are not plain tensors/values "
            f"(loaded with weights_only=True; {first[:160]})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt: {first[:160]})") from None
    if not isinstance(payload, dict) or "model" not in payload:
        raise CheckpointError(f"{path}: not a segsweep checkpoint (no 'model' state)")
    return payload


def load_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Load weights strictly, turning a shape/key mismatch into one clear line."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        if mismatched:
            k = mismatched[0]
            parts.append(f"{len(mismatched)} shape mismatches (e.g. {k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)})")
        raise CheckpointError(
            f"{source}: weights do not fit this model ({'; '.join(parts)}); "
            "was it saved for another architecture or width?"
        )
    model.load_state_dict(state)


class TopK:
    """Keeps the k best checkpoints by a score (higher is better) as `best.pt`, `best-2.pt`, ...

    `best.pt` is always the best so far. Entries are (score, epoch); ties keep the earlier epoch.
    """

    def __init__(self, directory: Path, k: int, entries: list[tuple[float, int]] | None = None):
        self.directory = directory
        self.k = k
        self.entries: list[tuple[float, int]] = list(entries or [])

    def _path(self, rank: int) -> Path:
        return self.directory / ("best.pt" if rank == 0 else f"best-{rank + 1}.pt")

    def would_keep(self, score: float) -> bool:
        return len(self.entries) < self.k or score > min(s for s, _ in self.entries)

    def offer(self, score: float, epoch: int, payload: dict[str, Any]) -> bool:
        """Save `payload` if it ranks in the top k; returns whether it became `best.pt`."""
        if not self.would_keep(score):
            return False
        ranked = sorted([*self.entries, (score, epoch)], key=lambda e: (-e[0], e[1]))[: self.k]
        rank = ranked.index((score, epoch))
        # Shift worse entries down one file, worst first, so no file is overwritten before it moved.
        for i in range(min(len(self.entries), self.k - 1) - 1, rank - 1, -1):
            src = self._path(i)
            if src.exists():
                os.replace(src, self._path(i + 1))
        save_checkpoint(payload, self._path(rank))
        self.entries = ranked
        return rank == 0
