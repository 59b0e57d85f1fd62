"""What the stream writes: JSON lines, overlay PNGs of defective frames, latency statistics.

Records, one JSON object a line (`"type"` says which):

    frame     {"type": "frame", "frame": i, "time": unix s, "lines": [first, last],
               "score": max tile score, "tile": {"line", "column"} of that tile,
               "anomalous": bool, "regions": [region, ...], "latency_ms": ..,
               "partial": bool, "overlay": PNG path (defective frames, if asked)}
    fault     {"type": "fault", "time": .., "reason": "one line naming the data and the problem"}
    regions   {"type": "regions", ...}  regions still open when the stream ended
    summary   {"type": "summary", ...}  last line (`StreamPipeline.run`)

A region is `{"lines": [top, bottom], "columns": [left, right], "peak": p,
"pixels": n}` in strip coordinates (line index from the start of the stream,
column), bounds inclusive.

A `JsonLines` file is written as `FILE.partial` and renamed to `FILE` when the
stream ends (Ctrl-C included), so a finished file is never half-written.

Example:

>>> stats = LatencyStats()
>>> for ms in (1.0, 2.0, 3.0): stats.add(ms / 1e3)
>>> stats.summary()["p50_ms"]
2.0
"""

from __future__ import annotations

import json
import os
import sys
from collections import deque
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from edge.errors import OutputError
from edge.files import atomic_path, open_own_file

LATENCY_WINDOW = 100_000  # latest latencies kept for the percentiles (bounded memory)


class LatencyStats:
    """End-to-end latencies (seconds) of the latest `window` frames, summarised in milliseconds."""

    def __init__(self, window: int = LATENCY_WINDOW):
        self._values: deque[float] = deque(maxlen=window)
        self.count = 0

    def add(self, seconds: float) -> None:
        self._values.append(float(seconds))
        self.count += 1

    def summary(self) -> dict:
        if not self._values:
            return {"p50_ms": None, "p99_ms": None, "max_ms": None}
        values = np.fromiter(self._values, np.float64) * 1e3
        return {
            key: round(float(np.percentile(values, q)), 3)
            for key, q in (("p50_ms", 50), ("p99_ms", 99), ("max_ms", 100))
        }


class JsonLines:
    """JSON records, one a line, to stdout (`path` None or "-") or to a file renamed into place at `close`.

    Every record is written whole or not at all: a write that fails (a full
    disk) or is interrupted cuts the file back to the end of the last whole
    record and raises `OutputError`, so the file renamed into place by
    `close()` holds every record up to the last finished one.
    """

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = None if path in (None, "-") else Path(path)
        self.records = 0
        if self.path is None:
            self._file = sys.stdout
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._partial = self.path.with_name(self.path.name + ".partial")
            self._file = open_own_file(self._partial, fresh=True)
            self._kept = 0  # bytes of whole records

    def write(self, record: dict) -> None:
        line = json.dumps(record) + "\n"
        if self.path is None:
            self._file.write(line)
            self._file.flush()
        else:
            self._write_whole(line.encode())
        self.records += 1

    def _write_whole(self, data: bytes) -> None:
        try:
            view = memoryview(data)
            while view:
                view = view[self._file.write(view) :]
        except BaseException as err:
            self._file.truncate(self._kept)
            self._file.seek(self._kept)  # a later record follows the last whole one, not a hole
            if not isinstance(err, OSError):
                raise
            raise OutputError(
                f"{self.path}: cannot write: {err.strerror or err}; it keeps the {self.records} whole records before"
            ) from None
        self._kept += len(data)

    def close(self) -> None:
        if self.path is not None and not self._file.closed:
            self._file.close()
            os.replace(self._partial, self.path)


def write_overlay(
    path: str | os.PathLike, image: np.ndarray, anomalous: np.ndarray, boxes: list[tuple[int, int, int, int]]
) -> Path:
    """Writes a frame with its anomalous pixels tinted red and region boxes outlined, atomically.

    Args:
        path: the PNG to write.
        image: the frame `(h, W, C)` float in [0, 1].
        anomalous: `(h, W)` bool, pixels above the pixel threshold.
        boxes: (top, left, bottom, right) in frame rows and columns, inclusive.
    """
    path = Path(path)
    rgb = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image[..., :3]
    rgb = rgb.astype(np.float32).copy()
    rgb[anomalous] = 0.5 * rgb[anomalous] + 0.5 * np.array([1.0, 0.0, 0.0], np.float32)
    picture = Image.fromarray(np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    for top, left, bottom, right in boxes:
        draw.rectangle((left, top, right, bottom), outline=(255, 255, 0))
    with atomic_path(path) as tmp:
        picture.save(tmp, format="PNG")
    return path
