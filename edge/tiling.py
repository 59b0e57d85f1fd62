"""Images or stream frames in, model-size tiles out, and tile maps back into one map.

Image inspection (`infer --tile`) and the line-scan stream tile the same way.

Tiles of the model's size start every `stride` pixels; the last tile of a row
or column is aligned to the frame's edge, so every pixel is covered at least
once. A frame smaller than a tile (the short frame at the end of a stream) is
padded by repeating its edge and the padding is cut off the map again.

Example:

>>> tile_starts(100, 32, 24).tolist()
[0, 24, 48, 68]
>>> tiles, origins = cut_tiles(np.zeros((40, 100, 1), np.float32), (32, 32), (24, 24))
>>> tiles.shape, origins.shape
((8, 32, 32, 1), (8, 2))
"""

from __future__ import annotations

import numpy as np


def tile_starts(length: int, tile: int, stride: int) -> np.ndarray:
    """Start offsets of tiles of size `tile` every `stride` pixels over `length`, the last one at the edge."""
    if tile < 1 or stride < 1:
        raise ValueError(f"tile size and stride must be >= 1, got {tile} and {stride}")
    if length <= tile:
        return np.zeros(1, np.int64)
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return np.asarray(starts, np.int64)


def pad_to_tile(image: np.ndarray, tile_size: tuple[int, int]) -> np.ndarray:
    """Repeats the last row / column until the image is at least one tile in each direction."""
    pad_h, pad_w = max(0, tile_size[0] - image.shape[0]), max(0, tile_size[1] - image.shape[1])
    if not (pad_h or pad_w):
        return image
    return np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")


def cut_tiles(image: np.ndarray, tile_size: tuple[int, int], stride: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Cuts `(H, W, C)` into tiles.

    Args:
        image: the frame, `(H, W, C)`.
        tile_size: the model's (height, width).
        stride: (rows, columns) between tile starts.

    Returns:
        `tiles` `(N, th, tw, C)` (a copy) and `origins` `(N, 2)` int64: each
        tile's (row, column) in the (padded) frame, row-major.
    """
    image = pad_to_tile(image, tile_size)
    rows = tile_starts(image.shape[0], tile_size[0], stride[0])
    cols = tile_starts(image.shape[1], tile_size[1], stride[1])
    windows = np.lib.stride_tricks.sliding_window_view(image, tile_size, axis=(0, 1))  # (H', W', C, th, tw)
    grid_r, grid_c = np.meshgrid(rows, cols, indexing="ij")
    origins = np.stack([grid_r.ravel(), grid_c.ravel()], axis=1)
    tiles = windows[origins[:, 0], origins[:, 1]].transpose(0, 2, 3, 1)
    return np.ascontiguousarray(tiles), origins


def tile_sums(maps: np.ndarray, origins: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Adds tile maps into a frame: `(sum, count)` arrays of `shape` (the frame's, without padding).

    The mean over overlapping tiles is `sum / count`; sums and counts are
    kept apart so overlapping frames average over all their tiles.
    """
    height, width = shape
    tile_h, tile_w = maps.shape[1:3]
    padded = (max(height, tile_h), max(width, tile_w))
    total = np.zeros(padded, np.float32)
    count = np.zeros(padded, np.float32)
    for tile_map, (row, col) in zip(maps, origins):
        total[row : row + tile_h, col : col + tile_w] += tile_map
        count[row : row + tile_h, col : col + tile_w] += 1.0
    return total[:height, :width], count[:height, :width]
