"""Thresholds with a stated guarantee, and region verdicts that agree with image verdicts (edge.verdicts)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from edge.regions import connected_regions
from edge.verdicts import conformal_threshold, is_anomalous, region_score
from riad_tf.thresholds import calibrate


def _good_maps(count: int, seed: int, size: int = 24) -> np.ndarray:
    """Smooth random maps, like RIAD's mean-filtered maps of good images."""
    noise = np.random.default_rng(seed).random((count, size, size))
    return np.stack([ndimage.uniform_filter(m, 5) for m in noise]).astype(np.float32)


def test_nine_images_cannot_support_one_percent():
    bound = conformal_threshold(np.arange(9.0), 0.01)
    assert not bound.supported and bound.threshold == 8.0 and bound.supported_fpr == pytest.approx(0.1)
    assert "needs at least 99 good images" in bound.warning() and "0.1" in bound.warning()
    enough = conformal_threshold(np.arange(99.0), 0.01)
    assert enough.supported and enough.warning() is None and enough.supported_fpr == pytest.approx(0.01)
    assert calibrate(np.arange(9.0), np.zeros((9, 4, 4)), 0.01)["target_supported"] is False


def test_the_bound_holds_for_new_good_images():
    # 4000 repetitions: calibrate on 39 good scores, count how often a fresh good score exceeds the threshold.
    rng = np.random.default_rng(0)
    calibration, fresh = rng.gamma(2.0, size=(4000, 39)), rng.gamma(2.0, size=4000)
    thresholds = np.array([conformal_threshold(c, 0.1).threshold for c in calibration])
    bound = conformal_threshold(calibration[0], 0.1).supported_fpr
    assert bound <= 0.1
    assert np.mean(fresh > thresholds) <= bound + 0.015  # ~3 standard errors


@pytest.mark.parametrize("min_area", [1, 6])
def test_good_images_with_a_region_stay_within_the_target(min_area):
    pool = _good_maps(1000, seed=1)
    values = np.array([region_score(m, min_area) for m in pool])
    rng, rates = np.random.default_rng(2), []
    for repeat in range(40):  # the bound is on average over calibration sets: average over 40 of them
        order = rng.permutation(len(pool))
        calibration, later = order[:60], order[60:]
        thresholds = calibrate(pool[calibration].max(axis=(1, 2)), pool[calibration], 0.05, min_region_area=min_area)
        assert thresholds["region"] == thresholds["image"] and thresholds["target_supported"]
        rates.append(np.mean(values[later] > thresholds["region"]))
        if repeat == 0:  # on the calibration images themselves: verdicts against the regions actually found
            maps = pool[calibration]
            has_region = [bool(connected_regions(m, thresholds["region"], min_pixels=min_area)[0]) for m in maps]
            verdicts = [is_anomalous(float(m.max()), m, thresholds) for m in maps]
            assert verdicts == has_region  # the image verdict is "has a region", never a contradiction
            assert np.mean(has_region) <= 0.05
    assert np.mean(rates) <= thresholds["supported_fpr"] + 0.01


def test_region_score_is_the_threshold_where_regions_vanish():
    maps = _good_maps(20, seed=3)
    for m in maps:
        assert region_score(m, 1) == m.max()
        for area in (3, 10):
            t = region_score(m, area)
            assert connected_regions(m, np.nextafter(t, -np.inf), min_pixels=area)[0]
            assert not connected_regions(m, t, min_pixels=area)[0]
