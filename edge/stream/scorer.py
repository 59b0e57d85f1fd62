"""Frames in, frame maps and scores out: tiles from several frames go through the runner together.

Works with any `edge.runner.Runner` (LiteRT, ONNX Runtime, OpenVINO, TensorRT) or
anything with the same call (`runner(images) -> (maps, scores)`) and the
attributes `image_size`, `channels`. Frames are converted to the model's
channels once (`edge.images.to_model_input` at the frame's own size, so no
resizing), then cut into tiles (`edge.tiling`).

Example:

>>> scorer = FrameScorer(Runner.open("riad.onnx"), stride=(16, 16))   # doctest: +SKIP
>>> scored = scorer.score(frames)                                    # doctest: +SKIP
>>> scored[0].score, scored[0].total.shape                           # doctest: +SKIP
(0.12, (64, 2048))
"""

from __future__ import annotations

import dataclasses

import numpy as np

from edge.images import to_model_input
from edge.stream.accumulate import Frame
from edge.tiling import cut_tiles, tile_sums


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
    """Tiles frames, runs the model on all their tiles at once, stitches each frame's map.

    Args:
        runner: an `edge.runner.Runner` or a look-alike.
        stride: (rows, columns) between tile starts; default half a tile.
    """

    def __init__(self, runner, stride: tuple[int, int] | None = None):
        self.runner = runner
        self.tile_size = tuple(runner.image_size)
        self.stride = tuple(stride) if stride else (max(1, self.tile_size[0] // 2), max(1, self.tile_size[1] // 2))

    def prepare(self, frame: Frame) -> np.ndarray:
        """The frame at the model's channels, float32 in [0, 1], same size."""
        return to_model_input([frame.image], frame.image.shape[:2], self.runner.channels, "float32")[0]

    def score(self, frames: list[Frame]) -> list[ScoredFrame]:
        """Scores frames; one runner call for all their tiles (the runner splits it by its batch limit)."""
        cuts = [cut_tiles(self.prepare(frame), self.tile_size, self.stride) for frame in frames]
        tiles = np.concatenate([tiles for tiles, _ in cuts]) if cuts else np.zeros((0, *self.tile_size, 1), np.float32)
        maps, scores = self.runner(tiles)
        scored, start = [], 0
        for frame, (frame_tiles, origins) in zip(frames, cuts):
            end = start + len(frame_tiles)
            total, count = tile_sums(np.asarray(maps[start:end], np.float32), origins, frame.image.shape[:2])
            scored.append(ScoredFrame(frame, total, count, np.asarray(scores[start:end], np.float32), origins))
            start = end
        return scored
