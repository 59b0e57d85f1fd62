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

import dataclasses
from typing import Callable

import numpy as np

ScoreFunction = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def scaled_size(shape: tuple[int, int], scale: float | tuple[float, float]) -> tuple[int, int]:
    """(height, width) of an image of `shape` resized by `scale` (one, or (rows, columns)), rounded, at least 1.

    Example:

    >>> scaled_size((1263, 500), 0.5), scaled_size((256, 512), (0.5, 0.25))
    ((632, 250), (128, 128))
    """
    rows, cols = (scale, scale) if np.isscalar(scale) else scale
    return max(1, round(shape[0] * rows)), max(1, round(shape[1] * cols))


def tile_stride(tile_size: tuple[int, int], share: float = 0.5) -> tuple[int, int]:
    """(rows, columns) between tile starts: `share` of the tile (`RiadConfig.tile_stride`), at least 1.

    Example:

    >>> tile_stride((128, 128), 0.5), tile_stride((128, 128), 1.0)
    ((64, 64), (128, 128))
    """
    return max(1, round(tile_size[0] * share)), max(1, round(tile_size[1] * share))


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


@dataclasses.dataclass
class TiledMap:
    """An image's stitched map with its tiles' own maps, scores and (row, column) origins."""

    map: np.ndarray
    tile_maps: np.ndarray
    tile_scores: np.ndarray
    origins: np.ndarray


def tiled_map(
    image: np.ndarray,
    score: ScoreFunction,
    tile_size: tuple[int, int],
    stride: tuple[int, int],
    batch_size: int = 8,
    progress: Callable[[int, int], None] | None = None,
) -> TiledMap:
    """An image scored tile by tile, the tile maps averaged into one map of the image's size.

    Args:
        image: float32 `(H, W, C)` in [0, 1], already at the model's scale and channels.
        score: float32 `(B, th, tw, C)` -> `(maps (B, th, tw), scores (B,))`.
        tile_size: the model's (height, width).
        stride: (rows, columns) between tile starts.
        batch_size: tiles per call of `score`.
        progress: called with (tiles scored, tiles in all) after each call of `score`.

    Returns:
        A `TiledMap`: `map` `(H, W)` float32, `tile_maps` `(N, th, tw)`, `tile_scores` `(N,)`, `origins` `(N, 2)`.

    Example:

    >>> score = lambda tiles: (tiles[..., 0], tiles.max(axis=(1, 2, 3)))
    >>> tiled_map(np.ones((40, 100, 1), np.float32), score, (32, 32), (16, 16)).map.shape
    (40, 100)
    """
    tiles, origins = cut_tiles(image, tile_size, stride)
    maps, scores = [], []
    for start in range(0, len(tiles), batch_size):
        chunk_maps, chunk_scores = score(tiles[start : start + batch_size])
        maps.append(np.asarray(chunk_maps, np.float32).reshape(-1, *tile_size))
        scores.append(np.asarray(chunk_scores, np.float32).reshape(-1))
        if progress is not None:
            progress(min(start + batch_size, len(tiles)), len(tiles))
    tile_maps = np.concatenate(maps)
    total, count = tile_sums(tile_maps, origins, image.shape[:2])
    return TiledMap(total / np.maximum(count, 1.0), tile_maps, np.concatenate(scores), origins)
