"""Images in, model input out: decoding, channels, resizing, dtype (docs/method.md, "Images").

This is the one implementation of preprocessing: training and evaluation read
images through it too (`riad_tf.image_files.read_image` wraps `load_image` and
`prepare_image`), so a model sees on the device exactly what it saw in training:

- 8-bit values are divided by 255 and 16-bit ones by 65535 (float in [0, 1]);
- RGBA drops alpha; a palette image becomes RGB; a 1-channel model gets the
  ITU-R 601 luma (0.299 R + 0.587 G + 0.114 B) of a colour image, taken
  before resizing;
- resizing to the model size is Pillow's bilinear filter on float32 planes;
- a 3-channel model gets a grey image repeated to 3 channels;
- values are clipped to [0, 1]; a uint8 model gets round(255 x value).

Example:

>>> batch = to_model_input([np.zeros((48, 40), np.uint8)], (32, 32), 3, "float32")
>>> batch.shape, batch.dtype
((1, 32, 32, 3), dtype('float32'))
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from edge.errors import InputError
from edge.files import atomic_path

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601, as Pillow's "L"
_RESAMPLING = {"bilinear": Image.Resampling.BILINEAR, "nearest": Image.Resampling.NEAREST}


class ImageError(InputError):
    """An image that cannot be read or used; the message names the file."""


def open_image(path, name: str | None = None) -> Image.Image:
    """Opens and fully decodes an image file (its first frame), so a truncated file fails here.

    Args:
        path: PNG, JPEG, BMP or TIFF file (or a binary file object).
        name: what error messages call it (default: `path`).

    Returns:
        The decoded Pillow image, detached from the file.

    Raises:
        ImageError: "PATH: cannot read image: REASON".

    Example:

    >>> open_image("part.png").size                           # doctest: +SKIP
    (640, 480)
    """
    name = path if name is None else name
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except FileNotFoundError:
        raise ImageError(f"{name}: cannot read image: file not found") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: cannot read image: not an image file, or a format Pillow does not know") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ImageError(f"{name}: cannot read image: {reason}") from None


def load_image(path, name: str | None = None) -> np.ndarray:
    """Decodes an image file to float32 `(H, W, 1)` (grey) or `(H, W, 3)` in [0, 1].

    8-bit images are divided by 255, 16-bit ones by 65535; palette images
    become RGB, alpha is dropped, other colour modes become RGB.

    Raises:
        ImageError: "PATH: cannot read image: REASON".

    Example:

    >>> load_image("part.png").shape                          # doctest: +SKIP
    (480, 640, 3)
    """
    try:
        return _to_float(open_image(path, name))
    except ImageError as err:
        message = str(err)
        raise ImageError(
            message if message.startswith(str(path if name is None else name)) else f"{name or path}: {message}"
        ) from None


def _to_float(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(image)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ImageError(
                f"integer image with values {values.min()} to {values.max()}: only 8- and 16-bit values "
                "(0-65535) are understood; convert it to 16-bit or to float in [0, 1]"
            )
        values = values.astype(np.float32) / 65535.0
    elif mode == "F":
        values = np.asarray(image, np.float32)
    else:
        if mode == "P":
            image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        if image.mode in ("1", "LA", "La"):
            image = image.convert("L")
        elif image.mode not in ("L", "RGB"):
            image = image.convert("RGB")  # RGBA, CMYK, YCbCr, LAB, HSV: alpha dropped
        values = np.asarray(image).astype(np.float32) / 255.0
    return as_unit_float(values)


FLOAT_SLACK = 1e-3  # float pixels this far outside [0, 1] are rounding, not another range


def as_unit_float(image: np.ndarray) -> np.ndarray:
    """An array image as float32 `(H, W, 1|3)` in [0, 1]: integer types are scaled, alpha dropped."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        values = image.astype(np.float32) / 255.0
    elif image.dtype == np.uint16:
        values = image.astype(np.float32) / 65535.0
    elif np.issubdtype(image.dtype, np.floating) or image.dtype == bool:
        values = image.astype(np.float32, copy=False)  # np.clip below copies
    else:
        raise ImageError(f"image dtype {image.dtype} not understood (use uint8, uint16 or float in [0, 1])")
    if values.ndim == 2:
        values = values[..., None]
    if values.ndim != 3 or values.shape[-1] not in (1, 2, 3, 4):
        raise ImageError(f"image shape {image.shape} is not (H, W) or (H, W, C) with C in 1-4")
    if values.shape[-1] in (2, 4):  # grey + alpha, RGBA: drop alpha
        values = values[..., :-1]
    finite = np.isfinite(values)
    low, high = (values[finite].min(), values[finite].max()) if finite.any() else (0.0, 1.0)
    if low < -FLOAT_SLACK or high > 1 + FLOAT_SLACK:
        raise ImageError(f"float image with values {low:g} to {high:g}: float images must hold values in [0, 1]")
    # Rounding overshoots are clipped; NaN and infinities stay, for the callers' one-line refusal.
    return np.clip(values, 0.0, 1.0, out=values.copy(), where=finite)


def resize_image(values: np.ndarray, size: tuple[int, int], method: str = "bilinear") -> np.ndarray:
    """Resizes float32 `(H, W, C)` plane by plane with Pillow; the same size is returned as is.

    Args:
        values: float32 `(H, W, C)`.
        size: (height, width).
        method: "bilinear" (images: averages over the source footprint when
            shrinking) or "nearest" (masks: stay binary).

    Returns:
        float32 `(height, width, C)`.

    Example:

    >>> resize_image(np.ones((48, 40, 1), np.float32), (32, 32)).shape
    (32, 32, 1)
    """
    height, width = size
    if values.shape[:2] == (height, width):
        return values
    resample = _RESAMPLING[method]
    planes = [
        np.asarray(Image.fromarray(np.ascontiguousarray(values[..., c])).resize((width, height), resample))  # mode "F"
        for c in range(values.shape[-1])
    ]
    return np.stack(planes, axis=-1).astype(np.float32)


def prepare_image(image: np.ndarray, size: tuple[int, int], channels: int) -> np.ndarray:
    """One image as a model sees it: float32 `(height, width, channels)` in [0, 1].

    Colour to grey (luma) happens before resizing, grey to colour (repeat) after.

    Args:
        image: array `(H, W)` or `(H, W, C)`, uint8, uint16 or float in [0, 1].
        size: the model's (height, width).
        channels: the model's channels, 1 or 3.

    Returns:
        float32 `(height, width, channels)`.

    Raises:
        ValueError: `channels` is not 1 or 3.

    Example:

    >>> prepare_image(np.full((48, 40, 3), 255, np.uint8), (32, 32), 1).shape
    (32, 32, 1)
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    values = as_unit_float(image)
    if channels == 1 and values.shape[-1] == 3:
        values = values @ _LUMA[:, None]
    values = resize_image(values, size)
    if channels == 3 and values.shape[-1] == 1:
        values = np.repeat(values, 3, axis=-1)
    return np.clip(values, 0.0, 1.0)


def to_model_input(images: Sequence[np.ndarray], size: tuple[int, int], channels: int, dtype: str) -> np.ndarray:
    """Prepares a list of images of any size for a model (`prepare_image` each).

    Args:
        images: arrays `(H, W)` or `(H, W, C)`, uint8, uint16 or float in [0, 1];
            sizes may differ.
        size: the model's (height, width).
        channels: the model's channels, 1 or 3.
        dtype: the model's input dtype, "float32" or "uint8".

    Returns:
        `(B, height, width, channels)` array of `dtype`.
    """
    batch = [prepare_image(image, size, channels) for image in images]
    if not batch:
        return np.zeros((0, *size, channels), dtype)
    stacked = np.stack(batch)
    if dtype == "uint8":
        return np.round(stacked * 255.0).astype(np.uint8)
    return stacked.astype(np.float32)


def natural_key(name: str) -> tuple:
    """Sort key that orders embedded numbers by value: `f2` before `f10`."""
    return tuple(
        (0, int(part), "") if part.isdigit() else (1, 0, part.lower()) for part in re.split(r"(\d+)", name) if part
    )


def frame_files(folder: str | os.PathLike) -> list[Path]:
    """The images directly inside `folder` in natural name order; hidden files (`._0001.png`) skipped.

    One listing for training (`riad_tf.video`) and the device (`riad-edge video`, `stream`).
    """
    files = [
        p
        for p in Path(folder).iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    ]
    return sorted(files, key=lambda p: natural_key(p.name))


def find_images(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Expands folders into the image files they hold (sorted); files are kept as given."""
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS))
        else:
            found.append(path)
    return found


def save_map_png(path: str | os.PathLike, anomaly_map: np.ndarray, vmax: float | None = None) -> Path:
    """Writes an anomaly map as an 8-bit grey PNG, atomically: 0 -> 0, `vmax` -> 255 (clipped).

    Args:
        path: the target file; its folder is created.
        anomaly_map: `(H, W)` map.
        vmax: the value written as white; default the map's maximum (an
            all-zero map stays black).

    Returns:
        The path written.

    Example:

    >>> import tempfile
    >>> p = save_map_png(Path(tempfile.mkdtemp()) / "m.png", np.eye(4))
    >>> np.asarray(Image.open(p)).max()
    np.uint8(255)
    """
    path = Path(path)
    if np.ndim(anomaly_map) != 2:
        raise ValueError(f"{path}: an anomaly map must be 2-D (H, W), got shape {np.shape(anomaly_map)}")
    image = Image.fromarray(map_to_grey(anomaly_map, vmax))  # 2-D uint8: mode "L"
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path


def map_white(thresholds) -> float | None:
    """The map value drawn white in every map picture: twice the region threshold (None: each map's maximum).

    Example:

    >>> map_white({"image": 0.4, "region": 0.3}), map_white(None)
    (0.6, None)
    """
    region = (thresholds or {}).get("region")
    return None if region is None else 2 * float(region)


def map_to_grey(anomaly_map: np.ndarray, vmax: float | None = None) -> np.ndarray:
    """An anomaly map as uint8 grey: 0 -> 0, `vmax` -> 255 (clipped); `vmax` defaults to the map's maximum.

    Example:

    >>> map_to_grey(np.array([[0.0, 0.5], [1.0, 2.0]]), vmax=1.0).tolist()
    [[0, 128], [255, 255]]
    """
    values = np.asarray(anomaly_map, np.float64)
    top = float(values.max()) if vmax is None else float(vmax)
    scaled = np.clip(values / top, 0.0, 1.0) if top > 0 else np.zeros_like(values)
    return np.round(scaled * 255).astype(np.uint8)
