"""Reading and checking the image files of a data set (`riad_tf.data` lists them).

`validate` decodes every image and mask before training starts, so a corrupt
file stops the run at once with a one-line `DataError` naming the file, not
hours later; `load_arrays` then decodes the images into float32 arrays in
[0, 1] (docs/method.md, "Images"). `load_split` lists and checks the data set
of a run's `data_spec`.

Example:

>>> split = load_dataset("riad-demo/data")                    # doctest: +SKIP
>>> split, skipped = validate(split)                          # doctest: +SKIP
>>> images = load_arrays(split.train, RiadConfig(image_size=(64, 64)))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from tqdm.auto import tqdm

from edge.images import ImageError, load_image, open_image, prepare_image, resize_image
from riad_tf.data import MASK_SUFFIX, DataError, DataSplit, PathLike, Sample, load_dataset


def load_split(spec: dict, skip_unreadable: bool = False) -> tuple[DataSplit, list[tuple[Path, str]]]:
    """Lists and checks the image data set of a `data_spec`: `validate(load_dataset(...))`.

    Returns:
        (the `DataSplit`, the skipped unreadable images as (path, reason) pairs).
    """
    split = load_dataset(
        spec["path"],
        layout=spec["layout"],
        normal=spec["normal"],
        abnormal=spec["abnormal"],
        masks=spec["masks"],
        test_normal=spec["test_normal"],
    )
    return validate(split, skip_unreadable=skip_unreadable)


def read_image(path: PathLike, image_size: int | tuple[int, int] | None, channels: int = 3) -> np.ndarray:
    """Decodes an image to float32 (H, W, C) in [0, 1], exactly as the edge runtime does.

    PNG, JPEG, BMP and TIFF, 8-bit (scaled by 255) or 16-bit (scaled by 65535).
    Grey images are repeated to 3 channels; colour images become grey (ITU-R
    601 luma, as Pillow's "L") for a 1-channel model; alpha is dropped; palette
    images are expanded. Resizing is Pillow's bilinear filter on the float
    values (it averages over the source footprint when shrinking). The work is
    `edge.images.load_image` and `edge.images.prepare_image`, so training and
    the device cannot drift apart.

    Args:
        path: the image file.
        image_size: (height, width) or one int for a square; None keeps the size.
        channels: 3 or 1.

    Returns:
        float32 array (H, W, channels).

    Raises:
        DataError: "PATH: cannot read image: REASON" for a corrupt, truncated
            or non-image file.
        ValueError: `channels` is not 1 or 3.

    Example:

    >>> read_image("part.png", (256, 256), 3).shape           # doctest: +SKIP
    (256, 256, 3)
    """
    with as_data_error():
        values = load_image(path)  # (H, W, 1) or (H, W, 3)
    return prepare_image(values, _target_size(image_size, values), channels)


def read_mask(path: PathLike, image_size: int | tuple[int, int] | None) -> np.ndarray:
    """Decodes a ground-truth mask to bool (H, W): defect where above half range.

    That is > 127 for 8-bit masks and > 32767 for 16-bit ones; in a colour mask,
    a pixel is a defect where any channel is. Resizing is nearest-neighbour, so
    the mask stays binary.

    Args:
        path: the mask file.
        image_size: (height, width) or one int; None keeps the size.

    Returns:
        bool array (H, W).

    Raises:
        DataError: the file cannot be read as an image.

    Example:

    >>> read_mask("part_mask.png", (256, 256)).dtype          # doctest: +SKIP
    dtype('bool')
    """
    with as_data_error():
        values = load_image(path).max(axis=-1, keepdims=True)
    binary = (values > 0.5).astype(np.float32)
    return resize_image(binary, _target_size(image_size, binary), "nearest")[..., 0] > 0.5


def image_size_of(path: PathLike) -> tuple[int, int]:
    """(height, width) of an image file, decoding it fully to catch corrupt files.

    Raises:
        DataError: the file cannot be read as an image.
    """
    with as_data_error():
        width, height = open_image(path).size
    return height, width


@contextlib.contextmanager
def as_data_error():
    """Re-raises edge's `ImageError` ("PATH: cannot read image: REASON") as a `DataError`."""
    try:
        yield
    except ImageError as err:
        raise DataError(str(err)) from None


def _target_size(image_size: int | tuple[int, int] | None, values: np.ndarray) -> tuple[int, int]:
    """(height, width) from one int, a pair, or None (the image's own size)."""
    if image_size is None:
        return values.shape[:2]
    if isinstance(image_size, int):
        return image_size, image_size
    return tuple(image_size)


def has_pixel_masks(samples: Iterable[Sample]) -> bool:
    """True when any anomalous sample has a mask (pixel-level evaluation is possible)."""
    return any(s.label == 1 and s.mask_path is not None for s in samples)


def validate(
    split_or_samples: DataSplit | Sequence[Sample], *, skip_unreadable: bool = False
) -> tuple[DataSplit | list[Sample], list[tuple[Path, str]]]:
    """Decodes every image and mask once, before training starts.

    Checks: every image decodes completely; when some anomalous images have
    masks, all must (with none at all, evaluation is image-level only); every
    mask decodes and has its image's size (original sizes, before resizing).

    Args:
        split_or_samples: a `DataSplit` or a list of samples.
        skip_unreadable: drop unreadable images and report them instead of
            raising. Mask problems raise either way.

    Returns:
        (the readable samples, as a `DataSplit` when given one, else a list;
        the skipped images as (path, reason) pairs).

    Raises:
        DataError: one line naming the first bad file and its problem.

    Example:

    >>> split, skipped = validate(load_dataset("data/"), skip_unreadable=True)  # doctest: +SKIP
    """
    if isinstance(split_or_samples, DataSplit):
        parts = {"train": split_or_samples.train, "test": split_or_samples.test}
    else:
        parts = {"samples": list(split_or_samples)}
    every = [s for samples in parts.values() for s in samples]
    _check_masks_complete(every)
    skipped: list[tuple[Path, str]] = []
    kept = {name: [] for name in parts}
    progress = tqdm(total=len(every), desc="checking images", unit="img", disable=None)
    for name, samples in parts.items():
        for sample in samples:
            progress.update()
            try:
                size = image_size_of(sample.path)
            except DataError as err:
                if not skip_unreadable:
                    raise
                skipped.append((sample.path, str(err).split(": cannot read image: ", 1)[-1]))
                continue
            if sample.mask_path is not None:
                _check_mask(sample, size)
            kept[name].append(sample)
    progress.close()
    if isinstance(split_or_samples, DataSplit):
        if split_or_samples.train and not kept["train"]:
            folder = split_or_samples.train[0].path.parent
            raise DataError(f"{folder}: none of the training images could be read")
        return DataSplit(kept["train"], kept["test"]), skipped
    return kept["samples"], skipped


def _check_masks_complete(samples: list[Sample]) -> None:
    anomalous = [s for s in samples if s.label == 1]
    if not has_pixel_masks(anomalous):
        return
    for sample in anomalous:
        if sample.mask_path is None:
            raise DataError(
                f"{sample.path}: no mask found for this anomalous image, while other anomalous "
                f"images have masks (expected {sample.path.stem}{MASK_SUFFIX}.png)"
            )


def _check_mask(sample: Sample, image_size: tuple[int, int]) -> None:
    if not Path(sample.mask_path).is_file():
        raise DataError(f"{sample.mask_path}: mask file not found (for {sample.path})")
    mask_size = image_size_of(sample.mask_path)
    if mask_size != image_size:
        raise DataError(
            f"{sample.mask_path}: mask is {mask_size[1]}x{mask_size[0]} but its image "
            f"{sample.path} is {image_size[1]}x{image_size[0]} (width x height)"
        )


def load_arrays(samples: Sequence[Sample], config, with_masks: bool = False):
    """Decodes samples into arrays at the config's size and channels.

    Args:
        samples: the images to read.
        config: a `RiadConfig` (its `image_size` and `channels` are used).
        with_masks: also return the masks; images without a mask get an
            all-zero one.

    Returns:
        images float32 (N, H, W, C) in [0, 1], and with `with_masks` also
        masks bool (N, H, W).

    Example:

    >>> images, masks = load_arrays(split.test, config, with_masks=True)  # doctest: +SKIP
    """
    height, width = config.image_size
    images = np.empty((len(samples), height, width, config.channels), np.float32)
    masks = np.zeros((len(samples), height, width), bool)
    for i, sample in enumerate(tqdm(samples, desc="reading images", unit="img", disable=None)):
        images[i] = read_image(sample.path, (height, width), config.channels)
        if with_masks and sample.mask_path is not None:
            masks[i] = read_mask(sample.mask_path, (height, width))
    return (images, masks) if with_masks else images
