"""Reading video files frame by frame with OpenCV, for training (`riad_tf.video`) and the device.

OpenCV (`opencv-python-headless`) is imported only when a video file is
opened. Frames come out as uint8 RGB `(H, W, 3)` (OpenCV decodes BGR), or
`(H, W)` for grey video. Container headers can state a wrong frame count, so
`count_video_frames` decodes to count.

Example:

>>> frames = decode_video("clip.avi")                 # doctest: +SKIP
>>> next(frames).shape                                # doctest: +SKIP
(240, 360, 3)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from edge.errors import InputError

VIDEO_EXTENSIONS = (".avi", ".mp4", ".m4v", ".mov", ".mkv", ".mpg", ".mpeg", ".wmv", ".webm")


class VideoError(InputError):
    """A video file that cannot be opened or decoded; the message names the file."""


def is_video_file(path: str | os.PathLike) -> bool:
    """True for an existing file with a video extension (`.avi`, `.mp4`, ...)."""
    path = Path(path)
    return path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS


def _open(path: Path):
    import cv2

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such video file")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise VideoError(f"{path}: cannot open video (not a video file, or a codec OpenCV's FFmpeg lacks)")
    return capture


def decode_video(path: str | os.PathLike, indices: Sequence[int] | None = None) -> Iterator[np.ndarray]:
    """The frames of a video file, in order; the file is opened at once, so a bad one fails here.

    Args:
        path: the video file.
        indices: ascending frame numbers (0-based) to yield; None yields all.
            Skipped frames are only grabbed, not converted.

    Returns:
        An iterator of uint8 RGB `(H, W, 3)` (or grey `(H, W)`) frames; closing
        it releases the file.

    Raises:
        FileNotFoundError: no such file.
        VideoError: OpenCV cannot open it (here) or decode a frame (while iterating).
    """
    path = Path(path)
    return _frames(_open(path), path, indices)


def _frames(capture, path: Path, indices: Sequence[int] | None) -> Iterator[np.ndarray]:
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
                    raise VideoError(f"{path}: cannot decode frame {index + 1}")
                yield frame[..., ::-1] if frame.ndim == 3 else frame  # BGR -> RGB
                if wanted is not None:
                    next_wanted = next(wanted, None)
            index += 1
    finally:
        capture.release()


def count_video_frames(path: str | os.PathLike) -> int:
    """Frames of a video file, counted by decoding.

    Raises:
        FileNotFoundError, VideoError: the file cannot be opened as a video.
    """
    path = Path(path)
    capture = _open(path)
    try:
        count = 0
        while capture.grab():
            count += 1
        return count
    finally:
        capture.release()
