"""Good images at a scale, and fresh random model-size crops of them: what a model for strips trains on.

With `RiadConfig.scale` set, a model does not see whole images squeezed to its
size (thin defects vanish in the squeeze) but the product at one scale: each
good image (a photo or a line camera's strip, of any size) is resized once by
the scale, and every epoch draws new crops of the model's size at random
places. An image gives crops in proportion to its area (at least one), so an
epoch sees about as many pixels as the scaled images hold. The crops of an
epoch depend only on (seed, epoch, crop index): a resumed run continues
exactly. Held-out images are cut into a fixed grid of tiles instead
(`grid_tiles`), so their validation loss compares across epochs.

Example:

>>> images = [np.zeros((40, 100, 1), np.float32), np.zeros((20, 30, 1), np.float32)]
>>> crops = RandomCrops(images, (32, 32), seed=0)
>>> len(crops), crops.crops(epoch=0, indices=np.arange(3)).shape
(5, (3, 32, 32, 1))
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from edge.images import load_image, prepare_image
from edge.tiling import cut_tiles, pad_to_tile, scaled_size
from riad_tf.image_files import as_data_error

_FIXED_EPOCH = 2**31  # the key of `sample`'s crops, no training epoch's


class RandomCrops:
    """Scaled images and the random crops drawn from them, epoch by epoch.

    Args:
        images: float32 `(H, W, C)` arrays at the training scale, of any sizes;
            one smaller than a tile is padded by repeating its edge (as
            `edge.tiling` pads at inference).
        tile_size: the model's (height, width).
        seed: the run's seed.
    """

    def __init__(self, images: Sequence[np.ndarray], tile_size: tuple[int, int], seed: int = 0):
        if not len(images):
            raise ValueError("no images to crop")
        self.images = [pad_to_tile(np.asarray(image, np.float32), tile_size) for image in images]
        self.tile_size = tuple(tile_size)
        self.seed = int(seed)
        tile_area = tile_size[0] * tile_size[1]
        counts = [max(1, round(image.shape[0] * image.shape[1] / tile_area)) for image in self.images]
        self._owner = np.repeat(np.arange(len(self.images)), counts)  # crop index -> image

    def __len__(self) -> int:
        """Crops per epoch."""
        return len(self._owner)

    @property
    def crop_shape(self) -> tuple[int, int, int]:
        return (*self.tile_size, self.images[0].shape[2])

    def crops(self, epoch: int, indices) -> np.ndarray:
        """The crops `indices` of `epoch`, float32 `(len(indices), th, tw, C)`."""
        height, width = self.tile_size
        out = np.empty((len(indices), *self.crop_shape), np.float32)
        for slot, index in enumerate(np.asarray(indices, np.int64)):
            image = self.images[self._owner[index]]
            rng = np.random.default_rng([self.seed, int(epoch), int(index)])
            row = int(rng.integers(0, image.shape[0] - height + 1))
            col = int(rng.integers(0, image.shape[1] - width + 1))
            out[slot] = image[row : row + height, col : col + width]
        return out

    def sample(self, count: int) -> np.ndarray:
        """`count` fixed crops (at most one epoch's), the same on every call: for batch-norm statistics."""
        return self.crops(_FIXED_EPOCH, np.arange(min(count, len(self))))


def read_scaled(path, scale: float, channels: int) -> np.ndarray:
    """An image file resized by `scale` (`edge.tiling.scaled_size`), float32 `(h, w, channels)` in [0, 1].

    Decoded and resized as `riad_tf.image_files.read_image` does (and the edge runtime).

    Raises:
        DataError: the file cannot be read as an image.
    """
    with as_data_error():
        values = load_image(path)
    return prepare_image(values, scaled_size(values.shape[:2], scale), channels)


def read_all_scaled(samples, scale: float, channels: int) -> list[np.ndarray]:
    """`read_scaled` of every sample, with a progress bar."""
    return [
        read_scaled(sample.path, scale, channels)
        for sample in tqdm(samples, desc="reading images", unit="img", disable=None)
    ]


def grid_tiles(images: Sequence[np.ndarray], tile_size: tuple[int, int]) -> np.ndarray:
    """Every image cut into a grid of model-size tiles, a tile apart (the last at the edge), all together.

    Example:

    >>> grid_tiles([np.zeros((40, 100, 1), np.float32)], (32, 32)).shape
    (8, 32, 32, 1)
    """
    return np.concatenate([cut_tiles(image, tile_size, tile_size)[0] for image in images])
