"""Scoring a video on the device: every frame in order, then the paper's temporal smoothing.

RIAD scores each frame on its own, like a still image (Sec. 4.1); the frame's
score is then averaged over the current and the previous `window - 1` frames
(Sec. 4.3, `edge.temporal`). This module does what `riad_tf.video` does in
evaluation, without TensorFlow:

- frames come from a video file (OpenCV, BGR turned to RGB) or a folder of
  frame images in natural name order (`edge.stream.sources`);
- each frame becomes a model input as in training (`Runner.preprocess`:
  [0, 1], luma or grey repeated to the model's channels, Pillow's bilinear
  resize to the model size);
- the window is the run's `temporal_window` (stored in the model metadata),
  3 when a model's metadata predates it.

Example:

>>> runner = Runner.open("deploy/ped2/riad.onnx")                    # doctest: +SKIP
>>> video = score_video(runner, "Test001.avi")                       # doctest: +SKIP
>>> video.scores.shape, video.window                                 # doctest: +SKIP
((180,), 3)
>>> Path("scores.csv").write_text(video.to_csv())                   # doctest: +SKIP
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from edge.errors import InputError
from edge.images import ImageError
from edge.stream.sources import BadBlock, FrameFolder, VideoFile
from edge.temporal import PAPER_WINDOW, minmax_normalise, temporal_smoothing


@dataclasses.dataclass(frozen=True)
class VideoScores:
    """The scores of one video's frames, in frame order.

    Attributes:
        source: the video file or frame folder.
        scores: float32 `(T,)` RIAD image score of each frame (Eq. 10).
        smoothed: float64 `(T,)` mean of the last `window` scores.
        window: frames averaged.
        normalised: float64 `(T,)` `smoothed` min-max normalised within the
            video, or None when not asked for.
        anomalous: bool `(T,)` `smoothed` above the calibrated
            "smoothed_frame" threshold, or None without a usable threshold.
        seconds: wall time of decoding and scoring.
    """

    source: str
    scores: np.ndarray
    smoothed: np.ndarray
    window: int
    normalised: np.ndarray | None = None
    anomalous: np.ndarray | None = None
    seconds: float = 0.0

    @property
    def frames_per_second(self) -> float:
        return len(self.scores) / self.seconds if self.seconds > 0 else float("inf")

    def to_csv(self) -> str:
        """One row per frame: `frame` (1-based, as in `labels.csv`), `score`, `smoothed`.

        Then `normalised` and `anomalous` (0/1) when present. Floats keep full precision.
        """
        header = ["frame", "score", "smoothed"]
        columns = [np.arange(1, len(self.scores) + 1), self.scores.astype(np.float64), self.smoothed]
        if self.normalised is not None:
            header.append("normalised")
            columns.append(self.normalised)
        if self.anomalous is not None:
            header.append("anomalous")
            columns.append(self.anomalous.astype(int))
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(zip(*(column.tolist() for column in columns)))
        return out.getvalue()


def read_frames(source: str | os.PathLike) -> Iterator[np.ndarray]:
    """Yields the decoded frames of a video file or a frame folder, in order.

    Args:
        source: a video file (any format OpenCV's FFmpeg decodes) or a folder
            of frame images (PNG, JPEG, BMP, TIFF; natural name order).

    Yields:
        uint8 RGB `(H, W, 3)` video frames, or float32 `(H, W, C)` images.

    Raises:
        FileNotFoundError, ValueError: the source cannot be opened.
        ImageError: a frame image cannot be decoded (dropping it would shift
            every later frame, so the video is not scored).
    """
    path = Path(source)
    frames = FrameFolder(path) if path.is_dir() else VideoFile(path)
    try:
        for block in frames:
            if isinstance(block, BadBlock):
                raise ImageError(block.reason)
            yield block.lines
    finally:
        frames.close()


def _batches(frames: Iterator[np.ndarray], size: int) -> Iterator[list[np.ndarray]]:
    batch = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def model_window(metadata) -> int:
    """The model's `temporal_window` (its training config), 3 when the metadata predates it."""
    return int(metadata.config.get("temporal_window", PAPER_WINDOW))


def smoothed_threshold(metadata, window: int) -> float | None:
    """The calibrated threshold of the smoothed score, if one exists for this `window`.

    `riad-tf` calibrates "smoothed_frame" with the run's window; with any other
    window the threshold does not apply and None is returned.
    """
    thresholds = metadata.thresholds or {}
    if thresholds.get("smoothed_frame") is None:
        return None
    calibrated = int(thresholds.get("temporal_window", model_window(metadata)))
    return float(thresholds["smoothed_frame"]) if calibrated == int(window) else None


def score_video(
    runner,
    source: str | os.PathLike,
    *,
    window: int | None = None,
    normalise: bool = False,
    batch_size: int = 8,
    progress: Callable[[int, float], None] | None = None,
) -> VideoScores:
    """Scores every frame of a video with an exported model and smooths the scores.

    Args:
        runner: an `edge.runner.Runner`.
        source: a video file or a folder of frame images.
        window: frames averaged (None: the model's `temporal_window`).
        normalise: also min-max normalise the smoothed scores within the video.
        batch_size: frames decoded and scored per runner call.
        progress: called as `progress(frames_done, seconds)` after each batch.

    Returns:
        A `VideoScores`.

    Raises:
        ValueError: a window or batch size below 1, a source that cannot be
            opened, or a video without frames (the message names the file).

    Example:

    >>> score_video(runner, "clip.avi", window=1).smoothed  # == scores  # doctest: +SKIP
    """
    window = model_window(runner.metadata) if window is None else int(window)
    if window < 1 or batch_size < 1:
        raise ValueError(f"window and batch size must be at least 1, got {window} and {batch_size}")
    start = time.perf_counter()
    scores = []
    done = 0
    for batch in _batches(read_frames(source), batch_size):
        _, batch_scores = runner(runner.preprocess(batch))
        scores.append(batch_scores)
        done += len(batch)
        if progress is not None:
            progress(done, time.perf_counter() - start)
    if not done:
        raise InputError(f"{source}: no frames could be decoded (empty video, or a codec OpenCV's FFmpeg lacks)")
    scores = np.concatenate(scores).astype(np.float32)
    smoothed = temporal_smoothing(scores, window)
    threshold = smoothed_threshold(runner.metadata, window)
    return VideoScores(
        source=str(source),
        scores=scores,
        smoothed=smoothed,
        window=window,
        normalised=minmax_normalise(smoothed) if normalise else None,
        anomalous=None if threshold is None else smoothed > threshold,
        seconds=time.perf_counter() - start,
    )
