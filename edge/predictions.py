"""The per-image prediction record and its map file, shared by `riad-tf predict` and `riad-edge infer`.

Both commands print one JSON object per image:

    {"type": "image", "path": ..., "score": s}         always
    {"anomalous": ..., "threshold": t,                 when a threshold is known
     "threshold_source": "calibrated" | "override"}    (`edge.verdicts.is_anomalous`)
    {"threshold_source": "none"}                       when none is: scores only
    {"region_score": r}                                when min_region_area > 1
    {"map": "MAPS/NAME_map.png"}                       when maps are written

or, for an image that cannot be scored, `{"type": "image", "path": ..., "error": "..."}`: a
score is never NaN, and every line is valid JSON.

Maps are 8-bit grey PNGs: 0 is black, twice the region threshold is white (the
map's own maximum before calibration). Two inputs with the same file name
(`a/000.png`, `b/000.png`) get `000_map.png` and `000_2_map.png`, never one
overwriting the other.

Example:

>>> prediction_record(Path("a.png"), 0.7, {"image": 0.5, "region": 0.5})
{'type': 'image', 'path': 'a.png', 'score': 0.7, 'anomalous': True, 'threshold': 0.5, 'threshold_source': 'calibrated'}
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Mapping

import numpy as np

from edge.files import atomic_path, unique_name
from edge.images import map_white, save_map_png
from edge.verdicts import is_anomalous, region_score


def prediction_record(
    path, score: float, thresholds: Mapping | None, map_file=None, anomaly_map=None, map_float=None
) -> dict:
    """The JSON record of one scored image.

    Args:
        path: the input file.
        score: its anomaly score (Eq. 10).
        thresholds: the thresholds in force (`with_overrides`), or None.
        map_file: the anomaly-map file written for it, or None.
        anomaly_map: its map, needed for the verdict when `min_region_area` > 1.
        map_float: the float32 map file written for it, or None.

    Returns:
        A dict with `path` and `score`; `anomalous`, `threshold` and
        `threshold_source` when an image threshold is known; `region_score`
        when regions have a minimum area; `map` when a map was written. A score
        that is NaN or infinite gives an `error_record` instead.
    """
    if not np.isfinite(score):
        return error_record(path, f"the anomaly score is {float(score)} (NaN or infinite values in the input?)")
    record = {"type": "image", "path": str(path), "score": float(score)}
    thresholds = thresholds or {}
    if thresholds.get("image") is not None:
        area = int(thresholds.get("min_region_area", 1) or 1)
        if area > 1 and anomaly_map is not None:
            record["region_score"] = region_score(anomaly_map, area)
        record["anomalous"] = is_anomalous(score, anomaly_map, thresholds)
        record["threshold"] = float(thresholds["image"])
    record["threshold_source"] = threshold_source(thresholds)
    if map_file is not None:
        record["map"] = str(map_file)
    if map_float is not None:
        record["map_float"] = str(map_float)
    return record


def threshold_source(thresholds: Mapping | None) -> str:
    """Where the image threshold in force comes from, as records name it.

    Args:
        thresholds: the thresholds in force (`with_overrides`), or None.

    Returns:
        "calibrated", "override" (`with_overrides`), or "none" when there is no image threshold.

    Example:

    >>> threshold_source({"image": 0.5}), threshold_source(None)
    ('calibrated', 'none')
    """
    if not thresholds or thresholds.get("image") is None:
        return "none"
    return thresholds.get("source", "calibrated")


def error_record(path, message: str) -> dict:
    """The record of an image that could not be scored: its path and a one-line reason."""
    return {
        "type": "image",
        "path": str(path),
        "error": str(message).splitlines()[0] if str(message) else "unknown error",
    }


def warn_if_uncalibrated(thresholds: Mapping | None, model) -> None:
    """Says on stderr (once per command) that `model` gives scores only: no threshold, so no verdicts."""
    if not thresholds or thresholds.get("image") is None:
        logging.getLogger(__name__).warning(
            f"warning: {model} has no calibrated thresholds: records carry scores only, no verdicts "
            '("threshold_source": "none"); calibrate it (riad-tf calibrate RUN --good DIR, then export again) '
            "or pass --image-threshold"
        )


def with_overrides(thresholds: Mapping | None, image: float | None = None) -> dict | None:
    """The thresholds in force: the calibrated ones, or `image` given on the command line.

    An override replaces the image and region threshold together (they are one
    threshold, `edge.verdicts`) and marks the verdicts `"threshold_source": "override"`.

    Example:

    >>> with_overrides({"image": 0.5, "region": 0.5}, image=0.8)["source"]
    'override'
    """
    if image is None:
        return dict(thresholds) if thresholds else None
    return {**(thresholds or {}), "image": float(image), "region": float(image), "source": "override"}


class MapNames:
    """Writes `NAME_map.png` files into one folder, numbering repeated names.

    Args:
        folder: where the maps go (created when the first one is written).
        thresholds: the thresholds in force; twice the region threshold is white.
        float_maps: also write the float32 map as `NAME_map.npy`.
    """

    def __init__(self, folder: str | os.PathLike, thresholds: Mapping | None = None, float_maps: bool = False):
        self.folder = Path(folder)
        self.float_maps = float_maps
        self.vmax = map_white(thresholds)
        self._used: set[str] = set()

    def name(self, path) -> str:
        """`STEM_map.png`, or `STEM_N_map.png` for the N-th input named STEM."""
        stem = Path(path).stem
        return unique_name(lambda i: f"{stem}_map.png" if i == 1 else f"{stem}_{i}_map.png", self._used)

    def write(self, path, anomaly_map: np.ndarray) -> tuple[Path, Path | None]:
        """Writes the map of input `path`; returns the PNG and the `.npy` (None unless `float_maps`)."""
        png = save_map_png(self.folder / self.name(path), anomaly_map, self.vmax)
        if not self.float_maps:
            return png, None
        with atomic_path(png.with_suffix(".npy"), suffix=".npy") as tmp:
            np.save(tmp, np.asarray(anomaly_map, np.float32))
        return png, png.with_suffix(".npy")
