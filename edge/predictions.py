"""The per-image prediction record and its map file, shared by `riad-tf predict` and `riad-edge infer`.

Both commands print one JSON object per image:

    {"path": ..., "score": s}                          always
    {"anomalous": s > t_image, "threshold": t_image}   when the model is calibrated
    {"map": "MAPS/NAME_map.png"}                       when maps are written

Maps are 8-bit grey PNGs: 0 is black, twice the pixel threshold is white (the
map's own maximum before calibration). Two inputs with the same file name
(`a/000.png`, `b/000.png`) get `000_map.png` and `000_2_map.png`, never one
overwriting the other.

Example:

>>> prediction_record(Path("a.png"), 0.7, {"image": 0.5, "pixel": 0.2})
{'path': 'a.png', 'score': 0.7, 'anomalous': True, 'threshold': 0.5}
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np

from edge.images import save_map_png


def prediction_record(path, score: float, thresholds: Mapping | None, map_file=None) -> dict:
    """The JSON record of one scored image.

    Args:
        path: the input file.
        score: its anomaly score (Eq. 10).
        thresholds: the calibrated thresholds, or None.
        map_file: the anomaly-map file written for it, or None.

    Returns:
        A dict with `path` and `score`; `anomalous` and `threshold` when an
        image threshold is known; `map` when a map was written.
    """
    record = {"path": str(path), "score": float(score)}
    threshold = (thresholds or {}).get("image")
    if threshold is not None:
        record["anomalous"] = bool(score > threshold)
        record["threshold"] = threshold
    if map_file is not None:
        record["map"] = str(map_file)
    return record


class MapNames:
    """Writes `NAME_map.png` files into one folder, numbering repeated names.

    Args:
        folder: where the maps go (created when the first one is written).
        thresholds: the calibrated thresholds; twice the pixel threshold is white.
    """

    def __init__(self, folder: str | os.PathLike, thresholds: Mapping | None = None):
        self.folder = Path(folder)
        pixel = (thresholds or {}).get("pixel")
        self.vmax = 2 * pixel if pixel is not None else None
        self._used: set[str] = set()

    def name(self, path) -> str:
        """`STEM_map.png`, or `STEM_N_map.png` for the N-th input named STEM."""
        stem = Path(path).stem
        name, index = f"{stem}_map.png", 1
        while name in self._used:
            index += 1
            name = f"{stem}_{index}_map.png"
        self._used.add(name)
        return name

    def write(self, path, anomaly_map: np.ndarray) -> Path:
        """Writes the map of input `path`; returns the map file."""
        return save_map_png(self.folder / self.name(path), anomaly_map, self.vmax)
