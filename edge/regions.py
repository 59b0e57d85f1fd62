"""Defects: connected regions of an anomaly map above the region threshold.

`connected_regions` finds them in one map (an image's, for `riad-edge infer`
and the report); `RegionTracker` follows them down a line-scan strip, in strip
coordinates. Final strip rows arrive a few at a time (`edge.stream.stitch`). A region
that touches the newest row may go on in the next rows, so it is held open
until a row without it arrives (or the stream ends); closed regions are
reported once, with their bounding box and peak map value. Regions are
8-connected (OpenCV's `connectedComponentsWithStats`). A region still open
after `max_open_lines` lines is reported anyway, marked `truncated`, so memory
stays bounded whatever the strip shows.

Example:

>>> tracker = RegionTracker(threshold=0.5)
>>> rows = np.zeros((6, 8), np.float32); rows[2:4, 3:5] = 0.9
>>> [r.box for r in tracker.add(0, rows)]
[(2, 3, 3, 4)]
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Region:
    """A defect: lines `top..bottom` and columns `left..right` (inclusive) of the strip."""

    top: int
    left: int
    bottom: int
    right: int
    peak: float
    pixels: int
    truncated: bool = False

    @property
    def box(self) -> tuple[int, int, int, int]:
        """(top line, left column, bottom line, right column), inclusive."""
        return (self.top, self.left, self.bottom, self.right)

    def to_dict(self) -> dict:
        record = {
            "lines": [self.top, self.bottom],
            "columns": [self.left, self.right],
            "peak": round(self.peak, 6),
            "pixels": self.pixels,
        }
        if self.truncated:
            record["truncated"] = True
        return record


def box_iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection over union of two inclusive boxes (top, left, bottom, right)."""
    height = min(a[2], b[2]) - max(a[0], b[0]) + 1
    width = min(a[3], b[3]) - max(a[1], b[1]) + 1
    inter = max(0, height) * max(0, width)
    area = lambda box: (box[2] - box[0] + 1) * (box[3] - box[1] + 1)  # noqa: E731
    return inter / float(area(a) + area(b) - inter)


def connected_regions(
    values: np.ndarray, threshold: float, first_row: int = 0, min_pixels: int = 1
) -> tuple[list[Region], np.ndarray]:
    """8-connected regions of `values > threshold`.

    Returns:
        the regions (boxes offset by `first_row`) and the label image
        (0: background, i + 1: region i).
    """
    import cv2

    mask = (values > threshold).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8, ltype=cv2.CV_32S)
    peaks = np.full(count, -np.inf, np.float32)
    inside = labels > 0
    np.maximum.at(peaks, labels[inside], values[inside])
    regions, kept = [], np.zeros(count, np.int32)
    for label in range(1, count):
        left, top, width, height, area = (int(v) for v in stats[label])
        if area < min_pixels:
            continue
        regions.append(
            Region(first_row + top, left, first_row + top + height - 1, left + width - 1, float(peaks[label]), area)
        )
        kept[label] = len(regions)
    return regions, kept[labels]


class RegionTracker:
    """Finds regions over final strip rows as they arrive.

    Args:
        threshold: the pixel threshold (map value > threshold is anomalous).
        min_pixels: smaller regions are ignored.
        max_open_lines: the most lines held for a region still growing.
    """

    def __init__(self, threshold: float, min_pixels: int = 1, max_open_lines: int = 4096):
        self.threshold, self.min_pixels, self.max_open_lines = float(threshold), int(min_pixels), int(max_open_lines)
        self._first = 0
        self._rows: np.ndarray | None = None

    def add(self, first_row: int, rows: np.ndarray) -> list[Region]:
        """Adds final rows (`first_row` must follow the previous ones); returns the regions now closed."""
        if len(rows) == 0:
            return []
        if self._rows is None or len(self._rows) == 0:
            self._first, self._rows = first_row, rows.astype(np.float32, copy=True)
        else:
            self._rows = np.concatenate([self._rows, rows.astype(np.float32)])
        return self._close(final=len(self._rows) > self.max_open_lines)

    def flush(self) -> list[Region]:
        """End of the stream: every region still open."""
        return self._close(final=True) if self._rows is not None and len(self._rows) else []

    def _close(self, final: bool) -> list[Region]:
        regions, labels = connected_regions(self._rows, self.threshold, self._first, self.min_pixels)
        last = len(self._rows) - 1
        closed, keep_from = [], len(self._rows)
        for index, region in enumerate(regions):
            if region.bottom - self._first < last or final:
                truncated = final and region.bottom - self._first == last and len(self._rows) > self.max_open_lines
                closed.append(dataclasses.replace(region, truncated=truncated))
                self._rows[labels == index + 1] = -np.inf  # reported: never again
            else:
                keep_from = min(keep_from, region.top - self._first)
        if final:
            keep_from = len(self._rows)
        self._first += keep_from
        self._rows = self._rows[keep_from:].copy()
        return closed
