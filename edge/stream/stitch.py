"""Frame maps in, the strip's anomaly map out, in strip coordinates, a few final rows at a time.

Frames overlap, so a strip row may get values from two (or more) frames; its
value is the mean over every tile that covered it. Once a frame is added, the
rows before `Frame.next_start` can get nothing more and leave as final rows;
only the rows of the frame in progress are held (bounded memory). Rows no
frame covered (frames dropped under load, lines of skipped bad data) come out
as 0 with `covered` False.

Example:

>>> stitcher = StripStitcher(width=4)
>>> first, rows, covered = stitcher.add(0, np.ones((3, 4)), np.ones((3, 4)), next_start=2)
>>> first, rows.shape
(0, (2, 4))
"""

from __future__ import annotations

import numpy as np


class StripStitcher:
    """Holds the sums and counts of the strip rows not yet final.

    Args:
        width: the strip width W.
    """

    def __init__(self, width: int):
        self.width = int(width)
        self.base = 0  # strip row of the first held row
        self._sum = np.zeros((0, self.width), np.float32)
        self._count = np.zeros((0, self.width), np.float32)

    def add(self, first_line: int, total: np.ndarray, count: np.ndarray, next_start: int):
        """Adds a frame's `(sum, count)` at `first_line`; returns the rows now final.

        Returns:
            `(first_row, rows (n, W) float32, covered (n,) bool)`; n may be 0.
        """
        end = first_line + len(total)
        if first_line < self.base:  # never expected: frames arrive in strip order
            raise ValueError(f"frame at line {first_line} arrived after line {self.base} was final")
        self._grow(end)
        start = first_line - self.base
        self._sum[start : start + len(total)] += total
        self._count[start : start + len(total)] += count
        return self._release(max(next_start, self.base))

    def flush(self):
        """End of the stream: every held row."""
        return self._release(self.base + len(self._sum))

    def _grow(self, end: int) -> None:
        missing = end - (self.base + len(self._sum))
        if missing > 0:
            zeros = np.zeros((missing, self.width), np.float32)
            self._sum = np.concatenate([self._sum, zeros])
            self._count = np.concatenate([self._count, zeros])

    def _release(self, upto: int):
        self._grow(upto)
        n = upto - self.base
        total, count = self._sum[:n], self._count[:n]
        rows = np.where(count > 0, total / np.maximum(count, 1.0), 0.0).astype(np.float32)
        covered = (count > 0).any(axis=1)
        first = self.base
        self._sum, self._count = self._sum[n:].copy(), self._count[n:].copy()
        self.base = upto
        return first, rows, covered
