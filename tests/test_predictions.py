"""The per-image prediction record and map files shared by `riad-tf predict` and `riad-edge infer`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from edge.predictions import MapNames, prediction_record


def test_record_has_a_verdict_only_with_an_image_threshold():
    assert prediction_record(Path("a/x.png"), np.float32(0.25), None) == {
        "type": "image",
        "path": "a/x.png",
        "score": 0.25,
        "threshold_source": "none",
    }
    assert prediction_record("x.png", 0.25, {"image": None, "region": 0.1}) == {
        "type": "image",
        "path": "x.png",
        "score": 0.25,
        "threshold_source": "none",
    }
    calibrated = prediction_record("x.png", 0.75, {"image": 0.5, "region": 0.1}, map_file=Path("m/x_map.png"))
    assert calibrated == {
        "type": "image",
        "path": "x.png",
        "score": 0.75,
        "anomalous": True,
        "threshold": 0.5,
        "threshold_source": "calibrated",
        "map": "m/x_map.png",
    }
    assert prediction_record("x.png", 0.5, {"image": 0.5})["anomalous"] is False  # strictly above the threshold
    json.dumps(calibrated)  # plain JSON types
    assert prediction_record("x.png", float("nan"), {"image": 0.5})["error"].startswith("the anomaly score is nan")


def test_same_named_inputs_get_distinct_map_files(tmp_path):
    names = MapNames(tmp_path / "maps", {"image": 1.0, "region": 0.25})
    first, _ = names.write(Path("a/000.png"), np.full((4, 4), 0.5))
    second, _ = names.write(Path("b/000.png"), np.zeros((4, 4)))
    third, _ = names.write(Path("c/000.jpg"), np.zeros((4, 4)))
    assert [p.name for p in (first, second, third)] == ["000_map.png", "000_2_map.png", "000_3_map.png"]
    assert np.asarray(Image.open(first)).max() == 255  # 0.5 = twice the pixel threshold: white
    assert np.asarray(Image.open(second)).max() == 0


def test_maps_scale_to_their_maximum_before_calibration(tmp_path):
    path, _ = MapNames(tmp_path, None).write("x.png", np.array([[0.0, 0.1], [0.2, 0.4]]))
    assert np.asarray(Image.open(path)).tolist() == [[0, 64], [128, 255]]
