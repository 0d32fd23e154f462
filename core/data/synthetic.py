"""A procedural stand-in for Oxford-IIIT Pet, written in the official layout on first use.

Each image holds one textured, blobby "pet" (body, head, ears, sometimes a tail) of one of six
breeds on a cluttered background: fractal/tiled/wood-grain floors, geometric distractors (some
wearing pet textures or pet colours), drop shadows, occluders, lighting, noise and JPEG
artefacts. Image i depends only on (seed, i), so the data are the same on every machine.
"""
from __future__ import annotations

import colorsys
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..errors import DataError
from ..spec import SyntheticSpec

GENERATOR_VERSION = 1

# (name, species 1 = cat / 2 = dog, breed id within species, texture, light HSV, dark HSV).
# Cats are capitalised and dogs lower-case, as in the official file names.
BREEDS: tuple[tuple[str, int, int, str, tuple[float, float, float], tuple[float, float, float]], ...] = (
    ("Tabby", 1, 1, "stripes", (0.07, 0.60, 0.85), (0.06, 0.65, 0.35)),
    ("Leopard", 1, 2, "spots", (0.11, 0.55, 0.85), (0.08, 0.50, 0.15)),
    ("Silver", 1, 3, "fur", (0.60, 0.04, 0.95), (0.62, 0.10, 0.22)),
    ("brindle_terrier", 2, 1, "brindle", (0.08, 0.50, 0.55), (0.05, 0.40, 0.15)),
    ("golden_retriever", 2, 2, "smooth", (0.11, 0.65, 0.90), (0.09, 0.70, 0.60)),
    ("patched_hound", 2, 3, "patches", (0.10, 0.05, 0.92), (0.07, 0.70, 0.40)),
)


def synthetic_params(spec: SyntheticSpec) -> dict[str, Any]:
    """What `<root>/synthetic.json` records; a root is reused only when these match."""
    return {"generator": "segsweep.synthetic", "version": GENERATOR_VERSION, **spec.model_dump()}


def ensure_synthetic(root: Path, spec: SyntheticSpec) -> Path:
    """Generate the dataset at `root` unless an identical one is there; return `root`.

    Written into a temporary folder beside `root` and renamed into place, so a reader never sees
    a half-written dataset; when several processes race, the first rename wins and the others
    use its result.
    """
    wanted = synthetic_params(spec)
    if _check_existing(root, wanted):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        write_synthetic(tmp, spec)
        try:
            if root.is_dir() and not any(root.iterdir()):
                root.rmdir()
            os.rename(tmp, root)
        except OSError:
            if not _check_existing(root, wanted):  # lost the race to something else
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _check_existing(root: Path, wanted: dict[str, Any]) -> bool:
    """True when `root` already holds this dataset; False when it is absent or empty."""
    if not root.exists() or (root.is_dir() and not any(root.iterdir())):
        return False
    meta = root / "synthetic.json"
    if not meta.is_file():
        raise DataError(
            f"{root}: exists but was not written by the synthetic generator (no synthetic.json); "
            "pick another data.root for data.name=synthetic"
        )
    try:
        found = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        found = None
    if found != wanted:
        if isinstance(found, dict):
            diff = ", ".join(f"{k}={found.get(k)!r} (wanted {v!r})" for k, v in wanted.items() if found.get(k) != v)
        else:
            diff = "unreadable synthetic.json"
        raise DataError(
            f"{root}: holds a synthetic dataset generated with other parameters ({diff}); "
            "pick another data.root (or delete that folder) to generate this one"
        )
    return True


def write_synthetic(folder: Path, spec: SyntheticSpec) -> None:
    """Write images/, annotations/trimaps/, annotations/{trainval,test}.txt and synthetic.json."""
    (folder / "images").mkdir(parents=True)
    (folder / "annotations" / "trimaps").mkdir(parents=True)
    total = spec.num_trainval + spec.num_test
    # Image i is breed i % 6, numbered per breed from 1 like the official files.
    names = [(f"{BREEDS[i % len(BREEDS)][0]}_{i // len(BREEDS) + 1}", i % len(BREEDS)) for i in range(total)]
    order = np.random.default_rng([spec.seed, 2**31]).permutation(total)
    trainval_ids = set(order[: spec.num_trainval].tolist())
    lines: dict[str, list[tuple[int, int, str]]] = {"trainval": [], "test": []}
    for i, (name, breed) in enumerate(names):
        rng = np.random.default_rng([spec.seed, i])
        image, fg = render_sample(rng, breed, spec.size)
        quality = int(rng.integers(75, 96))
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        ok_image, jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
        ok_mask, png = cv2.imencode(".png", trimap_from_mask(fg))
        assert ok_image and ok_mask
        jpeg.tofile(folder / "images" / f"{name}.jpg")
        png.tofile(folder / "annotations" / "trimaps" / f"{name}.png")
        _, species, breed_id = BREEDS[breed][:3]
        split = "trainval" if i in trainval_ids else "test"
        lines[split].append((breed, i // len(BREEDS), f"{name} {breed + 1} {species} {breed_id}"))
    for split, rows in lines.items():
        text = "".join(line + "\n" for _, _, line in sorted(rows))
        (folder / "annotations" / f"{split}.txt").write_text(text, encoding="utf-8")
    (folder / "synthetic.json").write_text(json.dumps(synthetic_params(spec), indent=2) + "\n", encoding="utf-8")


def trimap_from_mask(fg: np.ndarray) -> np.ndarray:
    """Official trimap values: 1 = pet, 2 = background, 3 = a boundary band ~3 px wide straddling
    the outline (1 px outside, 2 px inside at 96 px; wider for larger images)."""
    grow = max(1, fg.shape[0] // 96)
    mask = fg.astype(np.uint8)
    outer = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1,) * 2))
    inner = cv2.erode(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 3,) * 2))
    trimap = np.full(fg.shape, 2, np.uint8)
    trimap[outer > 0] = 3
    trimap[inner > 0] = 1
    return trimap


# --------------------------------------------------------------------------- rendering


def render_sample(rng: np.random.Generator, breed: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One image: (uint8 (size, size, 3) RGB, bool (size, size) pet mask)."""
    grid = _Grid(size)
    canvas = _background(rng, grid)  # (S, S, 3) float32 in [0, 255]
    for _ in range(int(rng.integers(2, 7))):
        canvas = _composite(canvas, *_distractor(rng, grid))

    alpha = _pet_shape(rng, grid, breed)  # (S, S) soft coverage in [0, 1]
    shadow_shift = rng.normal(0, 0.04 * size, 2)
    shadow = cv2.GaussianBlur(_shift(alpha, shadow_shift), (0, 0), 0.03 * size + 0.5)
    canvas *= (1 - rng.uniform(0.2, 0.5) * shadow)[..., None]
    coat = _breed_texture(rng, grid, breed)
    light = rng.normal(0, 1, 2)
    light /= np.linalg.norm(light) + 1e-6
    cy, cx = np.argwhere(alpha > 0.5).mean(axis=0) if (alpha > 0.5).any() else (size / 2, size / 2)
    shade = 0.9 + 0.35 * ((grid.x - cx) * light[0] + (grid.y - cy) * light[1]) / size
    coat *= np.clip(shade, 0.55, 1.2)[..., None]
    canvas = _composite(canvas, coat, alpha)
    fg = alpha > 0.5

    if rng.random() < 0.15:  # something in front of the pet
        colour, cover = _distractor(rng, grid, kinds=("bar", "rect"))
        canvas = _composite(canvas, colour, cover)
        fg &= cover <= 0.5

    # Camera: lighting gradient, colour cast, sensor noise, sometimes defocus.
    gain = 1 + rng.uniform(-0.2, 0.2) * (grid.x * rng.normal() + grid.y * rng.normal()) / size
    canvas = canvas * gain[..., None] * rng.uniform(0.88, 1.12, 3) + rng.uniform(-15, 15)
    canvas += rng.normal(0, rng.uniform(2, 6), canvas.shape).astype(np.float32)
    if rng.random() < 0.3:
        canvas = cv2.GaussianBlur(canvas, (0, 0), rng.uniform(0.4, 0.9))
    return np.clip(canvas, 0, 255).astype(np.uint8), fg


class _Grid:
    """Pixel coordinates of an (S, S) image, float32."""

    def __init__(self, size: int):
        self.size = size
        self.y, self.x = np.mgrid[0:size, 0:size].astype(np.float32)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0), 1), min(max(v, 0), 1)), np.float32) * 255


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return _hsv(rng.random(), rng.uniform(0.05, 0.7), rng.uniform(0.2, 0.95))


def _lerp(t: np.ndarray, c0: np.ndarray, c1: np.ndarray) -> np.ndarray:
    return c0 + t[..., None] * (c1 - c0)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Noise with about `cells` blobs per side, scaled to [0, 1]."""
    coarse = rng.random((cells + 3, cells + 3)).astype(np.float32)
    up = cv2.resize(coarse, (size + 3 * size // cells,) * 2, interpolation=cv2.INTER_CUBIC)
    off = (up.shape[0] - size) // 2
    field = up[off:off + size, off:off + size]
    return (field - field.min()) / (np.ptp(field) + 1e-6)


def _fractal(rng: np.random.Generator, size: int, octaves: int = 4, base: int = 2) -> np.ndarray:
    field = sum(_smooth_noise(rng, size, base * 2**k) / 2**k for k in range(octaves))
    return (field - field.min()) / (np.ptp(field) + 1e-6)


def _stripes(rng: np.random.Generator, g: _Grid, period: float, wobble: float, sharp: float) -> np.ndarray:
    angle = rng.uniform(0, np.pi)
    u = g.x * np.cos(angle) + g.y * np.sin(angle)
    v = -g.x * np.sin(angle) + g.y * np.cos(angle)
    u = u + wobble * np.sin(2 * np.pi * v / rng.uniform(0.3, 0.8) / g.size + rng.uniform(0, 2 * np.pi))
    t = 0.5 + 0.5 * np.sin(2 * np.pi * u / period + rng.uniform(0, 2 * np.pi))
    return np.clip((t - 0.5) * sharp + 0.5, 0, 1)


def _spots(rng: np.random.Generator, g: _Grid, cells: int, coverage: float) -> np.ndarray:
    field = _smooth_noise(rng, g.size, cells)
    spots = (field > np.quantile(field, 1 - coverage)).astype(np.float32)
    return cv2.GaussianBlur(spots, (0, 0), 0.6)


def _fur(rng: np.random.Generator, g: _Grid) -> np.ndarray:
    noise = rng.standard_normal((g.size, g.size)).astype(np.float32)
    sx, sy = rng.uniform(0.8, 3.0, 2)
    fur = cv2.GaussianBlur(noise, (0, 0), sigmaX=sx, sigmaY=sy)
    return np.clip(0.5 + fur / (2 * fur.std() + 1e-6), 0, 1)


def _breed_texture(rng: np.random.Generator, g: _Grid, breed: int) -> np.ndarray:
    """(S, S, 3) coat colours for `breed`, jittered per image."""
    _, _, _, kind, light, dark = BREEDS[breed]
    dh, ds, dv = rng.uniform(-0.03, 0.03), rng.uniform(0.8, 1.2), rng.uniform(0.8, 1.15)
    c0 = _hsv(light[0] + dh, light[1] * ds, light[2] * dv)
    c1 = _hsv(dark[0] + dh, dark[1] * ds, dark[2] * dv)
    scale = g.size / 96
    if kind == "stripes":
        t = _stripes(rng, g, rng.uniform(5, 9) * scale, rng.uniform(1, 4) * scale, 3.0)
    elif kind == "brindle":
        t = _stripes(rng, g, rng.uniform(4, 7) * scale, rng.uniform(3, 7) * scale, 2.5) * 0.75 + 0.25 * _fur(rng, g)
    elif kind == "spots":
        t = _spots(rng, g, int(rng.integers(12, 18)), rng.uniform(0.2, 0.35))
    elif kind == "patches":
        t = _spots(rng, g, int(rng.integers(3, 5)), rng.uniform(0.3, 0.5))
    elif kind == "fur":
        t = _fur(rng, g)
    else:  # smooth
        t = 0.7 * _fractal(rng, g.size, 3) + 0.3 * _fur(rng, g)
    return _lerp(t, c0, c1)


def _background(rng: np.random.Generator, g: _Grid) -> np.ndarray:
    kind = rng.choice(["fractal", "tiles", "wood", "gradient"])
    c0, c1 = _random_colour(rng), _random_colour(rng)
    if kind == "fractal":
        t = _fractal(rng, g.size)
    elif kind == "tiles":
        p = rng.uniform(8, 24) * g.size / 96
        t = (((g.x // p) + (g.y // p)) % 2) * 0.6 + 0.4 * _fractal(rng, g.size, 3, 4)
    elif kind == "wood":
        t = _stripes(rng, g, rng.uniform(6, 16) * g.size / 96, rng.uniform(2, 8), 1.0) * 0.6 + 0.4 * _fur(rng, g)
    else:
        d = rng.normal(0, 1, 2)
        t = (g.x * d[0] + g.y * d[1]) / g.size
        t = (t - t.min()) / (np.ptp(t) + 1e-6) * 0.8 + 0.2 * _fractal(rng, g.size, 3, 4)
    return _lerp(t.astype(np.float32), c0, c1)


def _distractor(rng: np.random.Generator, g: _Grid,
                kinds: tuple[str, ...] = ("rect", "poly", "ellipse", "bar")) -> tuple[np.ndarray, np.ndarray]:
    """A hard-edged geometric shape: ((S, S, 3) colours, (S, S) coverage)."""
    s = g.size
    cover = np.zeros((s, s), np.uint8)
    centre = rng.uniform(0, s, 2)
    extent = rng.uniform(0.06, 0.3) * s
    kind = rng.choice(list(kinds))
    if kind == "rect":
        box = cv2.boxPoints(((*centre,), (extent, extent * rng.uniform(0.3, 1)), rng.uniform(0, 180)))
        cv2.fillPoly(cover, [np.round(box * 16).astype(np.int32)], 255, cv2.LINE_AA, shift=4)
    elif kind == "poly":
        k = int(rng.integers(3, 7))
        angles = np.sort(rng.uniform(0, 2 * np.pi, k))
        radii = extent * rng.uniform(0.5, 1, k)
        pts = centre + np.stack([np.cos(angles) * radii, np.sin(angles) * radii], 1)
        cv2.fillPoly(cover, [np.round(pts * 16).astype(np.int32)], 255, cv2.LINE_AA, shift=4)
    elif kind == "ellipse":
        axes = (int(extent / 2) + 1, int(extent / 2 * rng.uniform(0.3, 1)) + 1)
        cv2.ellipse(cover, (int(centre[0]), int(centre[1])), axes, rng.uniform(0, 180), 0, 360, 255, -1, cv2.LINE_AA)
    else:
        end = centre + rng.normal(0, 1, 2) * extent * 1.5
        thick = max(1, int(rng.uniform(0.015, 0.05) * s))
        cv2.line(cover, tuple(map(int, centre)), tuple(map(int, end)), 255, thick, cv2.LINE_AA)
    draw = rng.random()
    if draw < 0.1:  # wearing a pet's coat: shape, not texture, tells it apart
        colour = _breed_texture(rng, g, int(rng.integers(len(BREEDS))))
    elif draw < 0.3:
        colour = _lerp(_stripes(rng, g, rng.uniform(3, 10) * s / 96, 0, 4), _random_colour(rng), _random_colour(rng))
    else:  # flat with a shading gradient; often in a pet's colours
        if draw < 0.6:
            _, _, _, _, light, dark = BREEDS[int(rng.integers(len(BREEDS)))]
            c0, c1 = _hsv(*light), _hsv(*dark)
        else:
            c0, c1 = _random_colour(rng), _random_colour(rng)
        d = rng.normal(0, 0.3 / s, 2)
        colour = _lerp(np.clip(0.5 + (g.x - centre[0]) * d[0] + (g.y - centre[1]) * d[1], 0, 1) * 0.4, c0, c1)
    return colour.astype(np.float32), cover.astype(np.float32) / 255


def _blob(g: _Grid, cx: float, cy: float, radius: float, aspect: float, angle: float,
          rng: np.random.Generator, wiggle: float) -> np.ndarray:
    """Soft coverage of a smooth star-shaped blob: r(theta) = radius * (1 + sum_k a_k cos(k theta + phi_k))."""
    dx, dy = g.x - cx, g.y - cy
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = (-dx * np.sin(angle) + dy * np.cos(angle)) / aspect
    rho, theta = np.hypot(u, v), np.arctan2(v, u)
    r = np.ones_like(theta)
    for k in range(2, 6):
        r += rng.uniform(0, wiggle / k) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return np.clip(radius * r - rho + 0.5, 0, 1)


def _pet_shape(rng: np.random.Generator, g: _Grid, breed: int) -> np.ndarray:
    """Body + head + ears (+ tail): (S, S) soft coverage."""
    s = g.size
    radius = rng.uniform(0.18, 0.32) * s
    cx, cy = rng.uniform(0.25, 0.75, 2) * s
    angle = rng.uniform(0, 2 * np.pi)
    aspect = rng.uniform(0.55, 0.9)
    cover = _blob(g, cx, cy, radius, aspect, angle, rng, 0.35)
    head_r = radius * rng.uniform(0.45, 0.62)
    hx, hy = cx + 0.95 * radius * np.cos(angle), cy + 0.95 * radius * np.sin(angle)
    cover = np.maximum(cover, _blob(g, hx, hy, head_r, rng.uniform(0.8, 1), angle, rng, 0.15))

    extra = np.zeros((s, s), np.uint8)
    cat = BREEDS[breed][1] == 1
    for side in (-1, 1):
        a = angle + side * rng.uniform(0.5, 0.9)
        base = np.array([hx + 0.8 * head_r * np.cos(a), hy + 0.8 * head_r * np.sin(a)])
        out = np.array([np.cos(a), np.sin(a)])
        across = np.array([-out[1], out[0]]) * 0.35 * head_r
        if cat:  # pointed ears
            pts = np.stack([base - across, base + across, base + out * 0.75 * head_r])
            cv2.fillPoly(extra, [np.round(pts * 16).astype(np.int32)], 255, cv2.LINE_AA, shift=4)
        else:  # floppy ears
            centre = base + out * 0.2 * head_r
            axes = (int(0.45 * head_r) + 1, int(0.25 * head_r) + 1)
            cv2.ellipse(extra, tuple(map(int, centre)), axes, np.degrees(a), 0, 360, 255, -1, cv2.LINE_AA)
    if rng.random() < 0.4:  # tail from the far end of the body
        start = np.array([cx - 0.9 * radius * np.cos(angle), cy - 0.9 * radius * np.sin(angle)])
        bend = angle + np.pi + rng.uniform(-1.2, 1.2)
        mid = start + 0.5 * radius * np.array([np.cos(bend), np.sin(bend)])
        bend += rng.uniform(-1, 1)
        end = mid + 0.5 * radius * np.array([np.cos(bend), np.sin(bend)])
        thick = max(2, int(radius * rng.uniform(0.16, 0.26)))
        pts = np.round(np.stack([start, mid, end]) * 16).astype(np.int32)
        cv2.polylines(extra, [pts], False, 255, thick, cv2.LINE_AA, shift=4)
    return np.maximum(cover, extra.astype(np.float32) / 255).astype(np.float32)


def _shift(image: np.ndarray, offset: np.ndarray) -> np.ndarray:
    matrix = np.float32([[1, 0, offset[0]], [0, 1, offset[1]]])
    return cv2.warpAffine(image, matrix, image.shape[::-1], borderMode=cv2.BORDER_CONSTANT)


def _composite(canvas: np.ndarray, colour: np.ndarray, cover: np.ndarray) -> np.ndarray:
    return canvas + cover[..., None] * (colour - canvas)
