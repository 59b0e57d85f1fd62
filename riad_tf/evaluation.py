"""One evaluation, checked: the arrays `riad_tf.report.write_report` draws, with each image's verdict.

`Evaluation` holds the images, reconstructions, maps, scores, labels, defect
types, masks and thresholds of a test set, checks that they fit together, and
adds what both the figures and the HTML page need: each image's verdict under
the thresholds, its regions, and the hot spot of the good images' mean map.
"""

from __future__ import annotations

import numpy as np

from edge.regions import connected_regions
from edge.verdicts import is_anomalous
from riad_tf.thresholds import hot_spot


class Evaluation:
    """The checked inputs of `write_report`, with the verdict of each image."""

    def __init__(self, names, images, reconstructions, maps, scores, labels, defect_types, masks, thresholds):
        self.names = [str(n) for n in names]
        self.images = np.asarray(images)
        self.reconstructions = None if reconstructions is None else np.asarray(reconstructions)
        self.maps = np.asarray(maps, dtype=np.float64)
        self.scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        self.labels = np.asarray(labels).reshape(-1).astype(bool)
        self.defect_types = [str(d) for d in defect_types]
        self.masks = None if masks is None else np.asarray(masks).astype(bool)
        self.thresholds = dict(thresholds or {})
        self.image_threshold = _optional_float(self.thresholds.get("image"))
        self.pixel_threshold = _optional_float(self.thresholds.get("region"))
        self.supported_fpr = _optional_float(self.thresholds.get("supported_fpr"))
        self.min_area = int(self.thresholds.get("min_region_area", 1) or 1)
        self._check()
        self.good_spot = None  # the hot spot of the good images' mean map (`riad_tf.thresholds.hot_spot`)
        if (~self.labels).any():
            calibration = self.thresholds.get("hot_spot")
            cell = calibration["cell"] if calibration else max(1, min(self.maps.shape[1:]) // 8)
            self.good_spot = hot_spot(self.maps[~self.labels], cell)
        self.predicted = None
        if self.image_threshold is not None:
            self.predicted = np.array([is_anomalous(s, m, self.thresholds) for s, m in zip(self.scores, self.maps)])

    def region_mask(self, i: int) -> np.ndarray:
        """The pixels of image `i` inside regions above the region threshold (of at least `min_area` pixels)."""
        _, labels = connected_regions(self.maps[i].astype(np.float32), self.pixel_threshold, min_pixels=self.min_area)
        return labels > 0

    def _check(self) -> None:
        n = len(self.names)
        sized = {
            "images": self.images,
            "maps": self.maps,
            "scores": self.scores,
            "labels": self.labels,
            "defect_types": self.defect_types,
        }
        for field, value in (("masks", self.masks), ("reconstructions", self.reconstructions)):
            if value is not None:
                sized[field] = value
        for field, value in sized.items():
            if len(value) != n:
                raise ValueError(f"write_report: {field} has {len(value)} entries, names has {n}")
        if self.images.ndim != 4 or self.images.shape[-1] not in (1, 3):
            raise ValueError(f"write_report: images must be (N, H, W, 1 or 3), got {self.images.shape}")
        if self.reconstructions is not None and self.reconstructions.shape != self.images.shape:
            raise ValueError(
                f"write_report: reconstructions {self.reconstructions.shape} do not match images {self.images.shape}"
            )
        for field, value in (("maps", self.maps), ("masks", self.masks)):
            if value is not None and value.shape != self.images.shape[:3]:
                raise ValueError(f"write_report: {field} must be {self.images.shape[:3]}, got {value.shape}")

    def verdict(self, i: int) -> tuple[str, bool]:
        """A title line for image `i`, and whether the thresholded prediction was right."""
        truth = self.defect_types[i] if self.labels[i] else "good"
        score = f"score {self.scores[i]:.4g}"
        if self.image_threshold is None:
            return f"{score} | truth: {truth}", True
        predicted = bool(self.predicted[i])
        word = ">" if predicted else "<="
        call = "ANOMALOUS" if predicted else "good"
        outcome = "correct" if predicted == self.labels[i] else "wrong"
        text = f"{score} {word} {self.image_threshold:.4g}: {call} | truth: {truth} ({outcome})"
        return text, predicted == self.labels[i]


def _optional_float(value) -> float | None:
    return None if value is None else float(value)
