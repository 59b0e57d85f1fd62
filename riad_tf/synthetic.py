"""A small synthetic inspection data set in the MVTec AD layout, for the demo and tests.

Each image is a woven texture (two crossing sinusoidal threads and a finer
diagonal ripple, slightly tinted) with a random phase per image and mild noise.
Test images carry one planted defect of one of two kinds, with an exact mask:

- `scratch`: a thin straight line, much brighter or darker than the weave;
- `spot`: a dark blob made of two or three overlapping ellipses.

Both break the texture's regular gradients, which is what RIAD's MSGMS score
sees (Eq. 4-5), so a small model trained for a few epochs learns to find them.

Example:

>>> import tempfile
>>> root = make_synthetic_dataset(Path(tempfile.mkdtemp()) / "demo", n_train=4,
...                               n_test_good=2, n_test_defect=2)
>>> sorted(p.name for p in (root / "test").iterdir())
['good', 'scratch', 'spot']
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

DEFECT_TYPES = ("scratch", "spot")
MARKER = "SYNTHETIC.txt"  # marks a folder this module wrote and may replace
TINT = np.array([1.0, 0.92, 0.8], np.float32)


def make_synthetic_dataset(
    out_dir: str | os.PathLike,
    *,
    image_size: int = 64,
    n_train: int = 40,
    n_test_good: int = 10,
    n_test_defect: int = 10,
    seed: int = 0,
) -> Path:
    """Writes a synthetic MVTec-style category of RGB PNG images.

    Layout: `train/good`, `test/good`, `test/scratch`, `test/spot` and
    `ground_truth/<defect>/NAME_mask.png` (0 or 255). The category is built in
    a temporary folder and renamed into place; an existing folder is replaced
    only if this function wrote it.

    Args:
        out_dir: the category folder to create.
        image_size: side of the square images, at least 16.
        n_train: good training images.
        n_test_good: good test images.
        n_test_defect: defective test images per defect type.
        seed: the same seed writes the same files.

    Returns:
        The category folder (`out_dir`), ready for `riad_tf.data.load_mvtec`.

    Raises:
        FileExistsError: `out_dir` exists, is not empty and was not written here.
    """
    if image_size < 16:
        raise ValueError(f"image_size must be at least 16, got {image_size}")
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".tmp"))
    try:
        _write_images(tmp / "train" / "good", n_train, image_size, rng)
        _write_images(tmp / "test" / "good", n_test_good, image_size, rng)
        for defect in DEFECT_TYPES:
            _write_images(
                tmp / "test" / defect,
                n_test_defect,
                image_size,
                rng,
                defect=defect,
                mask_dir=tmp / "ground_truth" / defect,
            )
        (tmp / MARKER).write_text(
            f"Synthetic RIAD demo data: image_size={image_size} n_train={n_train} "
            f"n_test_good={n_test_good} n_test_defect={n_test_defect} seed={seed}\n"
        )
        _move_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _write_images(folder, count, size, rng, defect=None, mask_dir=None) -> None:
    folder.mkdir(parents=True)
    if mask_dir is not None:
        mask_dir.mkdir(parents=True)
    digits = max(3, len(str(count - 1)))
    for i in range(count):
        name = f"{i:0{digits}d}"
        image = woven_texture(size, rng)
        if defect is not None:
            mask = _DEFECT_MASKS[defect](size, rng)
            image = _paint(image, mask, defect, rng)
            Image.fromarray(mask.astype(np.uint8) * 255).save(mask_dir / f"{name}_mask.png", compress_level=1)
        Image.fromarray(np.round(image * 255).astype(np.uint8)).save(folder / f"{name}.png", compress_level=1)


def woven_texture(size: int, rng: np.random.Generator) -> np.ndarray:
    """A tinted woven texture, float32 (size, size, 3) in [0, 1], random phase.

    Example:

    >>> woven_texture(32, np.random.default_rng(0)).shape
    (32, 32, 3)
    """
    period = max(4.0, size / 8)
    coords = np.arange(size, dtype=np.float32)
    phase_x, phase_y, phase_d = rng.uniform(0, 2 * np.pi, size=3)
    warp = np.sin(2 * np.pi * coords / period + phase_x)[None, :]
    weft = np.sin(2 * np.pi * coords / period + phase_y)[:, None]
    ripple = np.sin(2 * np.pi * (coords[None, :] + coords[:, None]) / (period / 2) + phase_d)
    grey = 0.5 + 0.15 * warp + 0.15 * weft + 0.05 * ripple + rng.uniform(-0.03, 0.03)
    grey += 0.02 * rng.standard_normal(grey.shape, dtype=np.float32)
    return np.clip(grey[..., None] * TINT, 0.0, 1.0).astype(np.float32)


def _scratch_mask(size: int, rng: np.random.Generator) -> np.ndarray:
    """A thin straight line, 30-60 % of the image long, fully inside the image."""
    length = rng.uniform(0.3, 0.6) * size
    angle = rng.uniform(0, np.pi)
    dx, dy = np.cos(angle) * length / 2, np.sin(angle) * length / 2
    margin = 2
    cx = rng.uniform(abs(dx) + margin, size - abs(dx) - margin)
    cy = rng.uniform(abs(dy) + margin, size - abs(dy) - margin)
    canvas = Image.new("L", (size, size), 0)
    width = max(1, size // 32)
    ImageDraw.Draw(canvas).line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=255, width=width)
    return np.asarray(canvas) > 0


def _spot_mask(size: int, rng: np.random.Generator) -> np.ndarray:
    """A blob: two or three overlapping ellipses, radii 1/16 to 1/8 of the image."""
    low, high = size / 16, size / 8
    cx, cy = rng.uniform(high * 2, size - high * 2, size=2)
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    for _ in range(rng.integers(2, 4)):
        ox, oy = rng.uniform(-low, low, size=2)
        rx, ry = rng.uniform(low, high, size=2)
        draw.ellipse([cx + ox - rx, cy + oy - ry, cx + ox + rx, cy + oy + ry], fill=255)
    return np.asarray(canvas) > 0


_DEFECT_MASKS = {"scratch": _scratch_mask, "spot": _spot_mask}


def _paint(image: np.ndarray, mask: np.ndarray, defect: str, rng) -> np.ndarray:
    """Replaces the pixels under `mask` with the defect's flat colour and mild noise."""
    if defect == "scratch":
        colour = np.full(3, rng.choice([0.05, 0.95]), np.float32)
    else:
        colour = np.array([0.22, 0.16, 0.1], np.float32)
    noise = rng.normal(0.0, 0.02, size=(int(mask.sum()), 1))
    out = image.copy()
    out[mask] = np.clip(colour + noise, 0.0, 1.0)
    return out


def _move_into_place(tmp: Path, out_dir: Path) -> None:
    if out_dir.exists():
        if out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()
        elif (out_dir / MARKER).is_file():
            shutil.rmtree(out_dir)
        else:
            raise FileExistsError(
                f"{out_dir}: exists and is not a synthetic data set written here; choose a new or empty folder"
            )
    os.replace(tmp, out_dir)
