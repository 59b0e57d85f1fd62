"""Frames in, frame maps and scores out: tiles from several frames go through the runner together.

Works with any `edge.runner.Runner` (LiteRT, ONNX Runtime, OpenVINO, TensorRT) or
anything with the same call (`runner(images) -> (maps, scores)`) and the
attributes `image_size`, `channels` (and `metadata`). A frame is resized to
the model's scale and channels (`edge.images.to_model_input`) exactly as
`riad-edge infer` resizes an image (`edge.inspection.tiling_of`: the scale the
model was trained at, or the squeeze of its whole training images), cut into
tiles (`edge.tiling`), and its map is brought back to the frame's lines and
columns, so the strip map and its regions are in camera pixels.

Example:

>>> scorer = FrameScorer(Runner.open("riad.onnx"), stride=(16, 16))   # doctest: +SKIP
>>> scored = scorer.score(frames)                                    # doctest: +SKIP
>>> scored[0].score, scored[0].total.shape                           # doctest: +SKIP
(0.12, (64, 2048))
"""

from __future__ import annotations

import dataclasses

import numpy as np

from edge.images import resize_image, to_model_input
from edge.inspection import tiling_of
from edge.stream.accumulate import Frame
from edge.tiling import cut_tiles, scaled_size, tile_stride, tile_sums


@dataclasses.dataclass
class ScoredFrame:
    """A frame with its map as `(total, count)` (mean = total / count), per-tile scores and the worst tile."""

    frame: Frame
    total: np.ndarray
    count: np.ndarray
    tile_scores: np.ndarray
    tile_origins: np.ndarray

    @property
    def score(self) -> float:
        """The frame score: the largest tile score (RIAD's image score is a map maximum, Eq. 10)."""
        return float(self.tile_scores.max())

    @property
    def worst_tile(self) -> tuple[int, int]:
        """(row, column) in the frame of the tile with the largest score."""
        row, col = self.tile_origins[int(np.argmax(self.tile_scores))]
        return int(row), int(col)

    @property
    def mean_map(self) -> np.ndarray:
        return self.total / np.maximum(self.count, 1.0)


class FrameScorer:
    """Scales and tiles frames, runs the model on all their tiles at once, stitches each frame's map.

    Args:
        runner: an `edge.runner.Runner` or a look-alike.
        stride: (rows, columns) between tile starts, in model pixels; default
            the model's `tile_stride` share of a tile (half a tile).
        scale: (rows, columns) model pixels per camera pixel; default the
            model's (`edge.inspection.tiling_of`), 1 for a model that records none.
    """

    def __init__(self, runner, stride: tuple[int, int] | None = None, scale: tuple[float, float] | None = None):
        self.runner = runner
        self.tile_size = tuple(runner.image_size)
        preprocessing = getattr(getattr(runner, "metadata", None), "preprocessing", None)
        recorded = (
            tiling_of(preprocessing, self.tile_size) if preprocessing else ((1.0, 1.0), tile_stride(self.tile_size))
        )
        self.scale = tuple(scale) if scale else recorded[0]
        self.stride = tuple(stride) if stride else recorded[1]

    def prepare(self, frame: Frame) -> np.ndarray:
        """The frame at the model's scale and channels, float32 in [0, 1]."""
        size = scaled_size(frame.image.shape[:2], self.scale)
        return to_model_input([frame.image], size, self.runner.channels, "float32")[0]

    def score(self, frames: list[Frame]) -> list[ScoredFrame]:
        """Scores frames; one runner call for all their tiles (the runner splits it by its batch limit)."""
        prepared = [self.prepare(frame) for frame in frames]
        cuts = [cut_tiles(image, self.tile_size, self.stride) for image in prepared]
        tiles = np.concatenate([tiles for tiles, _ in cuts]) if cuts else np.zeros((0, *self.tile_size, 1), np.float32)
        maps, scores = self.runner(tiles)
        scored, start = [], 0
        for frame, image, (frame_tiles, origins) in zip(frames, prepared, cuts):
            end = start + len(frame_tiles)
            total, count = tile_sums(np.asarray(maps[start:end], np.float32), origins, image.shape[:2])
            total, count = self._to_frame(total, count, frame.image.shape[:2])
            to_frame = (frame.image.shape[0] / image.shape[0], frame.image.shape[1] / image.shape[1])
            native_origins = np.round(origins * np.asarray(to_frame)).astype(np.int64)
            scored.append(ScoredFrame(frame, total, count, np.asarray(scores[start:end], np.float32), native_origins))
            start = end
        return scored

    def _to_frame(self, total: np.ndarray, count: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """A scaled frame's (sum, count) as the frame's own lines and columns (the mean map resized, count 1)."""
        if total.shape == tuple(shape):
            return total, count
        mean = resize_image((total / np.maximum(count, 1.0))[..., None], shape)[..., 0]
        return mean, np.ones(shape, np.float32)
