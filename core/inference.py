"""Inference from a checkpoint on arbitrary images: probability maps at the images' own size."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from .checkpoint import load_checkpoint, load_model_state
from .data.sources import decode_image, resize_image
from .errors import CheckpointError
from .metrics import probabilities
from .models import build_model, predict_batch
from .spec import ExperimentSpec, spec_from_dict


class Predictor:
    """Loads a checkpoint once; `predict(image)` gives foreground probabilities (H, W) in [0, 1].

    Pre-processing repeats training's evaluation path, test-time augmentation included:
    squash-resize to `data.image_size` (area when shrinking), normalise with the statistics
    stored in the checkpoint. The probability map is resized back (bilinear) to the input's size.
    """

    def __init__(self, checkpoint: str | Path, device: str = "cpu"):
        path = Path(checkpoint)
        if path.is_dir():
            path = path / "checkpoints" / "best.pt"
        state = load_checkpoint(path)
        self.spec: ExperimentSpec = spec_from_dict(state.get("spec"), str(path))
        norm = state.get("normalization")
        if not norm:
            raise CheckpointError(f"{path}: no normalisation statistics stored; re-save it with this version")
        self.mean = np.asarray(norm["mean"], np.float32)
        self.std = np.asarray(norm["std"], np.float32)
        self.device = torch.device(device)
        self.model = build_model(self.spec.model).to(self.device).eval()
        load_model_state(self.model, state["model"], path)

    @torch.no_grad()
    def predict(self, image: np.ndarray) -> np.ndarray:
        """uint8 RGB (H, W, 3) -> float32 probabilities (H, W)."""
        h, w = image.shape[:2]
        resized = resize_image(image, self.spec.data.image_size, self.spec.data.image_interpolation)
        pixels = (resized.astype(np.float32) / 255 - self.mean) / self.std
        batch = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))[None].to(self.device)
        output = predict_batch(self.model, batch, self.spec.train.tta)
        prob = probabilities(output.float(), self.spec.model.head)[0, 0].cpu().numpy()
        return cv2.resize(prob, (w, h), interpolation=cv2.INTER_LINEAR)

    def predict_file(self, path: str | Path) -> tuple[np.ndarray, np.ndarray]:
        """(the decoded RGB image, its probability map)."""
        image = decode_image(Path(path))
        return image, self.predict(image)


def overlay(image: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int] = (230, 40, 40)) -> np.ndarray:
    """The image with the predicted foreground tinted and its outline drawn, uint8 RGB."""
    out = image.astype(np.float32)
    out[mask] = 0.5 * out[mask] + 0.5 * np.asarray(colour, np.float32)
    out = out.astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, colour, max(1, min(image.shape[:2]) // 200))
    return out
