"""Decoding the frames of a video file or a folder of frame images, in order.

Video files are decoded by `edge.video_files` (OpenCV), as on the device; its
errors become `DataError`s here. A frame folder holds one image per frame; its
frames are ordered by natural sort of the file names (`frame_2.png` before
`frame_10.png`) and read with `riad_tf.image_files.read_image`.

Frames become model inputs exactly as still images do (docs/method.md, "Images"):
float32 in [0, 1], grey repeated to 3 channels or colour turned into grey
(ITU-R 601 luma) for a 1-channel model (`edge.images.prepare_image`), resized with Pillow's bilinear filter
to the config's `image_size`. A frame decoded from a lossless video and the
same frame stored as an 8-bit image give identical arrays.

Example:

>>> frames = read_frames(video, RiadConfig(image_size=(256, 256), channels=1))  # doctest: +SKIP
>>> frames.shape                                                              # doctest: +SKIP
(180, 256, 256, 1)
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from edge import video_files
from edge.images import prepare_image
from edge.video_files import is_video_file  # noqa: F401  (part of this module's interface)
from riad_tf.data import DataError
from riad_tf.image_files import read_image


@contextlib.contextmanager
def _as_data_errors():
    try:
        yield
    except video_files.VideoError as err:
        raise DataError(str(err)) from None


def decode_video(path: Path, indices: Sequence[int] | None = None) -> Iterator[np.ndarray]:
    """Yields the frames of a video file as uint8 RGB `(H, W, 3)`, in order (`edge.video_files.decode_video`).

    Raises:
        DataError: "PATH: cannot open video ..." when OpenCV cannot open it, or a frame does not decode.
    """
    with _as_data_errors():
        yield from video_files.decode_video(path, indices)


def count_video_frames(path: Path) -> int:
    """Frames of a video file, counted by decoding (container headers can be wrong).

    Raises:
        DataError: the file cannot be opened as a video.
    """
    with _as_data_errors():
        return video_files.count_video_frames(path)


def iter_frames(
    source: Path, frame_paths: Sequence[Path] | None, config, indices: Sequence[int] | None = None
) -> Iterator[np.ndarray]:
    """Yields model inputs float32 `(H, W, C)` for the frames of one video.

    Args:
        source: a video file, or the folder holding `frame_paths`.
        frame_paths: the frame images in order, or None for a video file.
        config: a `RiadConfig` (`image_size`, `channels`).
        indices: ascending 0-based frame numbers; None reads every frame.
    """
    if frame_paths is None:
        for frame in decode_video(source, indices):
            yield prepare_image(frame, tuple(config.image_size), config.channels)
        return
    chosen = frame_paths if indices is None else [frame_paths[i] for i in indices]
    for path in chosen:
        yield read_image(path, config.image_size, config.channels)


def stack_frames(frames: Iterator[np.ndarray], config, count: int | None = None) -> np.ndarray:
    """Collects frames into one float32 `(N, H, W, C)` array (preallocated when `count` is known)."""
    if count is None:
        collected = list(frames)
        return np.stack(collected) if collected else np.zeros((0, *config.input_shape), np.float32)
    out = np.empty((count, *config.input_shape), np.float32)
    filled = 0
    for filled, frame in enumerate(frames, start=1):
        out[filled - 1] = frame
    return out[:filled]
