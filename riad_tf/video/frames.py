"""Decoding the frames of a video file or a folder of frame images, in order.

Video files are decoded with OpenCV (`opencv-python-headless`, imported only
when a video file is read). A frame folder holds one image per frame; its
frames are ordered by natural sort of the file names (`frame_2.png` before
`frame_10.png`) and read with `riad_tf.data.read_image`.

Frames become model inputs exactly as still images do (METHOD.md, "Data"):
float32 in [0, 1], grey repeated to 3 channels or colour turned into grey
(ITU-R 601 luma) for a 1-channel model, resized with Pillow's bilinear filter
to the config's `image_size`. A frame decoded from a lossless video and the
same frame stored as an 8-bit image give identical arrays.

Example:

>>> frames = read_frames(video, RiadConfig(image_size=(256, 256), channels=1))  # doctest: +SKIP
>>> frames.shape                                                              # doctest: +SKIP
(180, 256, 256, 1)
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from edge.images import prepare_image
from riad_tf.data import DataError, read_image

VIDEO_EXTENSIONS = (".avi", ".mp4", ".m4v", ".mov", ".mkv", ".mpg", ".mpeg", ".wmv", ".webm")


def is_video_file(path: Path) -> bool:
    """True for a file with a video extension (`.avi`, `.mp4`, ...)."""
    return path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS


def frame_to_input(frame: np.ndarray, image_size, channels: int) -> np.ndarray:
    """Turns one decoded frame into a model input, exactly as still images and the device do.

    Args:
        frame: uint8 `(H, W)` grey or `(H, W, 3)` RGB.
        image_size: (height, width) of the model input.
        channels: 1 or 3.

    Returns:
        float32 `(height, width, channels)` in [0, 1].

    Example:

    >>> frame_to_input(np.full((48, 64, 3), 255, np.uint8), (32, 32), 1).shape
    (32, 32, 1)
    """
    return prepare_image(frame, tuple(image_size), channels)


def decode_video(path: Path, indices: Sequence[int] | None = None) -> Iterator[np.ndarray]:
    """Yields the frames of a video file as uint8 RGB `(H, W, 3)`, in order.

    Args:
        path: the video file.
        indices: ascending frame numbers (0-based) to yield; None yields all.
            Skipped frames are only grabbed, not converted.

    Raises:
        DataError: "PATH: cannot open video ..." when OpenCV cannot open it.
    """
    import cv2

    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise DataError(f"{path}: cannot open video (not a video file, or a codec OpenCV's FFmpeg lacks)")
    wanted = None if indices is None else iter(indices)
    next_wanted = None if wanted is None else next(wanted, None)
    try:
        index = 0
        while wanted is None or next_wanted is not None:
            if not capture.grab():
                return
            if wanted is None or index == next_wanted:
                ok, frame = capture.retrieve()
                if not ok:
                    raise DataError(f"{path}: cannot decode frame {index + 1}")
                yield frame[..., ::-1] if frame.ndim == 3 else frame  # OpenCV gives BGR
                if wanted is not None:
                    next_wanted = next(wanted, None)
            index += 1
    finally:
        capture.release()


def count_video_frames(path: Path) -> int:
    """Frames of a video file, counted by decoding (container headers can be wrong).

    Raises:
        DataError: the file cannot be opened as a video.
    """
    import cv2

    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise DataError(f"{path}: cannot open video (not a video file, or a codec OpenCV's FFmpeg lacks)")
    try:
        count = 0
        while capture.grab():
            count += 1
        return count
    finally:
        capture.release()


def iter_frames(source: Path, frame_paths: Sequence[Path] | None, config,
                indices: Sequence[int] | None = None) -> Iterator[np.ndarray]:
    """Yields model inputs float32 `(H, W, C)` for the frames of one video.

    Args:
        source: a video file, or the folder holding `frame_paths`.
        frame_paths: the frame images in order, or None for a video file.
        config: a `RiadConfig` (`image_size`, `channels`).
        indices: ascending 0-based frame numbers; None reads every frame.
    """
    if frame_paths is None:
        for frame in decode_video(source, indices):
            yield frame_to_input(frame, config.image_size, config.channels)
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
