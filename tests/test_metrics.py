"""Metrics on hand-computed cases and against an independent brute-force AUPRO."""

import json
from collections import deque

import numpy as np
import pytest

from riad_tf.metrics import UndefinedMetricError, aupro, f1_max, image_auroc, pixel_auroc, pro_curve, summarize
from riad_tf.thresholds import calibrate, false_alarm_chance, hot_spot, hot_spot_warning, threshold_at_fpr

# --------------------------------------------------------------------------- brute force


def _regions_8_connected(mask):
    """Independent flood fill: the 8-connected components of one 2-D mask as lists of pixels."""
    seen = np.zeros(mask.shape, bool)
    regions = []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        seen[start] = True
        queue, pixels = deque([start]), []
        while queue:
            r, c = queue.popleft()
            pixels.append((r, c))
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    rr, cc = r + dr, c + dc
                    if 0 <= rr < mask.shape[0] and 0 <= cc < mask.shape[1]:
                        if mask[rr, cc] and not seen[rr, cc]:
                            seen[rr, cc] = True
                            queue.append((rr, cc))
        regions.append(pixels)
    return regions


def _brute_force_aupro(maps, masks, fpr_limit):
    """Loops over every distinct threshold with full passes; integrates segment by segment."""
    maps, masks = np.asarray(maps, np.float64), np.asarray(masks, bool)
    regions = [
        np.array([maps[i][p] for p in pixels]) for i in range(len(maps)) for pixels in _regions_8_connected(masks[i])
    ]
    good = maps[~masks]
    points = [(0.0, 0.0)]
    for t in sorted(set(maps.ravel().tolist()), reverse=True):
        fpr = np.mean(good >= t)
        pro = np.mean([np.mean(r >= t) for r in regions])
        points.append((fpr, pro))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
        if x0 >= fpr_limit:
            break
        if x1 <= fpr_limit:
            area += (x1 - x0) * (y0 + y1) / 2
        else:  # the segment crosses the limit: cut it there
            y_cut = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
            area += (fpr_limit - x0) * (y0 + y_cut) / 2
    return area / fpr_limit


# --------------------------------------------------------------------------- AUPRO


def _two_region_example():
    """Two 2 x 4 images: a good one and one with regions A (size 2) and B (size 4).

    Image 1's mask: column 0 is region A, columns 2-3 region B, column 1 is good.
    Anomaly-free pixels: 8 (image 0) + 2 (image 1) = 10.
    """
    good_map = [[0.85, 0.40, 0.05, 0.05], [0.05, 0.05, 0.05, 0.05]]
    defect_map = [[0.90, 0.60, 0.80, 0.70], [0.50, 0.10, 0.30, 0.20]]
    defect_mask = [[1, 0, 1, 1], [1, 0, 1, 1]]
    maps = np.array([good_map, defect_map], np.float32)
    masks = np.array([np.zeros((2, 4), int), defect_mask])
    return maps, masks


# Walking down the distinct values (FP = good pixels >= t, out of 10;
# PRO = (fraction of A + fraction of B) / 2):
#   t=0.90  A 1/2          -> (0.0, 0.25)
#   t=0.85  FP 1           -> (0.1, 0.25)
#   t=0.80  B 1/4          -> (0.1, 0.375)
#   t=0.70  B 2/4          -> (0.1, 0.5)
#   t=0.60  FP 2           -> (0.2, 0.5)
#   t=0.50  A 2/2          -> (0.2, 0.75)
#   t=0.40  FP 3           -> (0.3, 0.75)
#   t=0.30  B 3/4          -> (0.3, 0.875)
#   t=0.20  B 4/4          -> (0.3, 1.0)
#   t=0.10  FP 4           -> (0.4, 1.0)
#   t=0.05  FP 10 (6 ties) -> (1.0, 1.0)
# Area to 0.3: 0.1 * 0.25 + 0.1 * 0.5 + 0.1 * 0.75 = 0.15           -> AUPRO 0.15 / 0.3 = 0.5
# Area to 0.25: 0.025 + 0.05 + 0.05 * 0.75 = 0.1125                 -> 0.1125 / 0.25 = 0.45
# Area to 1.0: 0.15 + 0.1 * 1 + 0.6 * 1 = 0.85                      -> 0.85
@pytest.mark.parametrize("fpr_limit,expected", [(0.3, 0.5), (0.25, 0.45), (1.0, 0.85)])
def test_aupro_two_regions_by_hand(fpr_limit, expected):
    maps, masks = _two_region_example()
    assert aupro(maps, masks, fpr_limit=fpr_limit) == pytest.approx(expected, abs=1e-12)
    assert _brute_force_aupro(maps, masks, fpr_limit) == pytest.approx(expected, abs=1e-12)


def test_pro_curve_points_by_hand():
    maps, masks = _two_region_example()
    fprs, pros, thresholds = pro_curve(maps, masks)
    np.testing.assert_allclose(fprs, [0, 0, 0.1, 0.1, 0.1, 0.2, 0.2, 0.3, 0.3, 0.3, 0.4, 1.0])
    np.testing.assert_allclose(pros, [0, 0.25, 0.25, 0.375, 0.5, 0.5, 0.75, 0.75, 0.875, 1, 1, 1])
    assert thresholds[0] == np.inf
    np.testing.assert_allclose(thresholds[1:], np.unique(maps)[::-1])


def test_good_images_count_for_the_fpr():
    maps, masks = _two_region_example()
    # A third, good image whose 8 pixels all score above everything else: the first
    # 8 of 18 anomaly-free pixels (FPR 0.444 > 0.3) come before any region pixel.
    hot_good = np.full((1, 2, 4), 0.95, np.float32)
    no_region = np.zeros((1, 2, 4), int)
    assert aupro(np.concatenate([maps, hot_good]), np.concatenate([masks, no_region])) == 0.0
    assert aupro(maps, masks) == pytest.approx(0.5)


def test_aupro_regions_are_8_connected():
    # One 3 x 3 image. Mask pixels (0,0), (1,1), (1,2): one region of 3 under
    # 8-connectivity ((0,0) touches (1,1) diagonally), two regions {1} and {2}
    # under 4-connectivity. Map: 1.0 at (0,0), 0.5 on the other region pixels,
    # 0.75 on one good pixel, 0 on the 5 others (6 good pixels).
    mask = np.zeros((1, 3, 3), bool)
    mask[0, 0, 0] = mask[0, 1, 1] = mask[0, 1, 2] = True
    amap = np.zeros((1, 3, 3))
    amap[0, 0, 0], amap[0, 1, 1], amap[0, 1, 2], amap[0, 2, 0] = 1.0, 0.5, 0.5, 0.75
    # 8-connected: (0, 0) -> t=1: (0, 1/3) -> t=.75: (1/6, 1/3) -> t=.5: (1/6, 1) -> (1, 1)
    #   area to 1 = 1/6 * 1/3 + 5/6 * 1 = 8/9.
    # 4-connected would give PRO 1/2 at t=1: 1/6 * 1/2 + 5/6 = 11/12.
    assert aupro(amap, mask, fpr_limit=1.0) == pytest.approx(8 / 9)
    _, pros, _ = pro_curve(amap, mask)
    assert pros[1] == pytest.approx(1 / 3)


def test_aupro_regions_do_not_connect_across_images():
    # The same pixel set in two images is two regions, not one.
    masks = np.zeros((2, 3, 3), bool)
    masks[:, 1, 1] = True
    maps = np.zeros((2, 3, 3))
    maps[0, 1, 1] = 1.0  # only image 0's region is found at the top threshold
    _, pros, _ = pro_curve(maps, masks)
    assert pros[1] == pytest.approx(0.5)


def test_aupro_perfect_inverted_and_constant_maps():
    maps, masks = _two_region_example()
    masks = masks.astype(bool)
    assert aupro(masks.astype(np.float32), masks) == 1.0
    assert aupro(1.0 - masks, masks) == 0.0
    assert pixel_auroc(masks.astype(np.float32), masks) == 1.0
    assert pixel_auroc(1.0 - masks, masks) == 0.0
    # A constant map is one tie group: the curve is the straight line (0,0)-(1,1);
    # area to 0.3 is 0.3^2 / 2 = 0.045, so AUPRO = 0.045 / 0.3 = 0.15 (interpolated cut).
    assert aupro(np.ones_like(maps), masks, fpr_limit=0.3) == pytest.approx(0.15)
    assert aupro(np.ones_like(maps), masks, fpr_limit=1.0) == pytest.approx(0.5)


@pytest.mark.parametrize("fpr_limit", [0.0, -0.1, 1.5])
def test_aupro_rejects_bad_fpr_limit(fpr_limit):
    maps, masks = _two_region_example()
    with pytest.raises(ValueError, match="fpr_limit"):
        aupro(maps, masks, fpr_limit=fpr_limit)


@pytest.mark.parametrize("seed", range(6))
def test_aupro_matches_brute_force_on_random_maps(seed):
    rng = np.random.default_rng(seed)
    masks = rng.random((3, 7, 9)) < 0.2
    masks[0] = False  # one good image
    masks[1, 0, 0] = True  # at least one region
    # Coarse values in the first half of the seeds (many ties), fine ones after.
    levels = 6 if seed < 3 else 10_000
    maps = rng.integers(0, levels, masks.shape) / levels + 0.3 * masks
    for fpr_limit in (0.02, 0.1, 0.3, 0.77, 1.0):
        got = aupro(maps, masks, fpr_limit=fpr_limit)
        assert 0.0 <= got <= 1.0
        assert got == pytest.approx(_brute_force_aupro(maps, masks, fpr_limit), abs=1e-9)


def test_aupro_limit_changes_the_value():
    maps, masks = _two_region_example()
    values = [aupro(maps, masks, fpr_limit=f) for f in (0.05, 0.25, 0.3, 1.0)]
    # By hand: PRO is 0.25 on (0, 0.1], so 0.05 gives 0.25; then 0.45, 0.5, 0.85.
    np.testing.assert_allclose(values, [0.25, 0.45, 0.5, 0.85])


def test_pro_metrics_undefined_cases():
    maps = np.random.default_rng(0).random((2, 4, 4))
    with pytest.raises(UndefinedMetricError, match="no anomalous region"):
        aupro(maps, np.zeros((2, 4, 4), bool))
    with pytest.raises(UndefinedMetricError, match="every pixel"):
        aupro(maps, np.ones((2, 4, 4), bool))
    with pytest.raises(ValueError, match="only good pixels"):
        pixel_auroc(maps, np.zeros((2, 4, 4), bool))


def test_pixel_inputs_are_checked():
    maps = np.zeros((2, 4, 4))
    with pytest.raises(ValueError, match="equal shapes"):
        aupro(maps, np.zeros((2, 4, 5), bool))
    with pytest.raises(ValueError, match="0/1"):
        pixel_auroc(maps, np.full((2, 4, 4), 255, np.uint8))
    with pytest.raises(ValueError, match="NaN"):
        pixel_auroc(np.full((2, 4, 4), np.nan), np.zeros((2, 4, 4), bool))


# --------------------------------------------------------------------------- AUROC and F1


def test_image_auroc_by_hand():
    # Positive/negative pairs: 0.35 beats 0.1 but not 0.4; 0.8 beats both -> 3 of 4.
    assert image_auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert image_auroc(np.array([0.5, 0.5]), np.array([False, True])) == pytest.approx(0.5)  # tie
    assert image_auroc([0.9, 0.1], [0, 1]) == 0.0


def test_pixel_auroc_by_hand():
    # Anomalous pixels 0.9 and 0.3; good ones 0.2 and 0.4: 0.9 beats both, 0.3 beats 0.2 -> 3/4.
    maps = np.array([[[0.9, 0.2], [0.4, 0.3]]], np.float32)
    assert pixel_auroc(maps, np.array([[[1, 0], [0, 1]]], np.uint8)) == pytest.approx(0.75)


@pytest.mark.parametrize("labels", [[0, 0, 0], [1, 1, 1]])
def test_single_class_is_a_clear_error(labels):
    with pytest.raises(ValueError, match="only .* images present"):
        image_auroc([0.1, 0.2, 0.3], labels)


def test_image_inputs_are_checked():
    with pytest.raises(ValueError, match="equal length"):
        image_auroc([0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(ValueError, match="0/1"):
        image_auroc([0.1, 0.2], [0, 2])


def test_f1_max_by_hand():
    # scores 0.1..0.5 with labels 0 1 0 1 1, predicting score >= t:
    #   t=.5: P 1, R 1/3, F1 .5;  t=.4: P 1, R 2/3, F1 .8;  t=.3: P 2/3, R 2/3, F1 2/3;
    #   t=.2: P 3/4, R 1, F1 6/7; t=.1: P 3/5, R 1, F1 .75.   Best: 6/7 at 0.2.
    scores, labels = np.array([0.1, 0.2, 0.3, 0.4, 0.5]), np.array([0, 1, 0, 1, 1])
    f1, threshold = f1_max(scores, labels)
    assert isinstance(f1, float) and isinstance(threshold, float)
    assert f1 == pytest.approx(6 / 7)
    assert threshold == pytest.approx(0.2)
    predicted = scores >= threshold
    tp = np.sum(predicted & (labels == 1))
    assert 2 * tp / (predicted.sum() + labels.sum()) == pytest.approx(f1)


def test_f1_max_perfect_and_undefined():
    f1, threshold = f1_max([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1])
    assert f1 == 1.0 and threshold == pytest.approx(0.8)
    with pytest.raises(UndefinedMetricError, match="no anomalous image"):
        f1_max([0.1, 0.2], [0, 0])


# --------------------------------------------------------------------------- thresholds


def _rate_above(values, t):
    values = np.asarray(values).ravel()
    return np.sum(values > t) / values.size


def test_threshold_at_fpr_by_hand():
    values = np.random.default_rng(0).permutation(100).astype(np.float64)  # 0..99
    # 1% of 100 values may be above: only 99, so t = 98.
    assert threshold_at_fpr(values, 0.01) == 98.0
    assert threshold_at_fpr(values, 0.0) == 99.0
    # 0.29 * 100 rounds to 28.999999999999996 in floating point; 29 / 100 <= 0.29 still holds.
    assert threshold_at_fpr(values, 0.29) == 70.0
    # Ties: [1, 1, 1, 1, 2] with 20% allowed: t = 1 leaves only the 2 above.
    assert threshold_at_fpr([1, 1, 1, 1, 2], 0.2) == 1.0
    assert threshold_at_fpr([1, 1, 1, 1, 2], 0.1) == 2.0


@pytest.mark.parametrize("seed", range(5))
def test_threshold_at_fpr_is_valid_and_minimal(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 400))
    values = rng.integers(0, 20, n) / 7 if seed % 2 else rng.normal(size=n)
    for target in (0.0, 0.001, 0.01, 0.05, 0.1, 0.29, 0.5, 0.99):
        t = threshold_at_fpr(values, target)
        assert isinstance(t, float)
        assert _rate_above(values, t) <= target
        # Any smaller threshold lets too many values through.
        assert _rate_above(values, np.nextafter(t, -np.inf)) > target


def test_threshold_at_fpr_on_pixel_maps():
    maps = np.random.default_rng(1).random((4, 8, 8)).astype(np.float32)
    t = threshold_at_fpr(maps, 0.05)
    assert _rate_above(maps, t) <= 0.05
    assert _rate_above(maps, np.nextafter(np.float32(t), np.float32(-np.inf))) > 0.05


def test_threshold_at_fpr_rejects_bad_input():
    with pytest.raises(ValueError, match="target_fpr"):
        threshold_at_fpr([0.1, 0.2], 1.0)
    with pytest.raises(ValueError, match="empty"):
        threshold_at_fpr([], 0.01)


def test_calibrate_keys_types_and_values():
    rng = np.random.default_rng(2)
    scores = rng.random(20).astype(np.float32)
    maps = rng.random((20, 8, 8)).astype(np.float32)
    thresholds = calibrate(scores, maps, target_fpr=0.05)
    assert set(thresholds) >= {"image", "region", "segmentation", "target_fpr", "supported_fpr", "num_images", "rule"}
    assert type(thresholds["image"]) is float and type(thresholds["segmentation"]) is float
    assert type(thresholds["target_fpr"]) is float and thresholds["target_fpr"] == 0.05
    assert type(thresholds["num_images"]) is int and thresholds["num_images"] == 20
    assert thresholds["rule"] == "anomalous if value > threshold"
    assert json.loads(json.dumps(thresholds)) == thresholds
    assert thresholds["image"] == float(np.sort(scores)[19])  # k = ceil(21 x 0.95) = 20: the largest of 20
    assert thresholds["supported_fpr"] == pytest.approx(1 / 21) and thresholds["target_supported"]
    assert _rate_above(maps, thresholds["segmentation"]) <= 0.05
    with pytest.raises(ValueError, match="same images"):
        calibrate(scores, maps[:5])


# --------------------------------------------------------------------------- summarize


def _summary_example():
    types = ["good", "good", "crack", "crack", "hole"]
    labels = [0, 0, 1, 1, 1]
    scores = [0.2, 0.5, 0.6, 0.4, 0.9]
    # 1 x 2 maps; each crack image has its left pixel anomalous; the hole image has an
    # empty mask (no region).
    maps = np.array([[[0.1, 0.3]], [[0.2, 0.0]], [[0.8, 0.25]], [[0.22, 0.05]], [[0.9, 0.9]]])
    masks = np.zeros((5, 1, 2), bool)
    masks[2, 0, 0] = masks[3, 0, 0] = True
    return scores, labels, maps, masks, types


def test_summarize_overall_and_per_type_by_hand():
    summary = summarize(*_summary_example())
    # Overall image AUROC: anomalous 0.6, 0.4, 0.9 vs good 0.2, 0.5 -> 2 + 1 + 2 of 6.
    assert summary["image_auroc"] == pytest.approx(5 / 6)
    # Overall pixels: anomalous 0.8, 0.22 vs 8 good (0.1 .3 .2 0 .25 .05 .9 .9):
    # 0.8 beats 6, 0.22 beats 4 -> 10 / 16.
    assert summary["pixel_auroc"] == pytest.approx(10 / 16)
    # Overall PRO curve: the two 0.9 good pixels first -> (2/8, 0); 0.8 -> (2/8, 1/2);
    # 0.3 -> (3/8, 1/2). Area to 0.3: 0.05 * 0.5 = 0.025 -> 0.025 / 0.3 = 1/12.
    assert summary["aupro"] == pytest.approx(1 / 12)
    assert summary["num_images"] == 5 and summary["num_anomalous"] == 3
    assert list(summary["per_defect_type"]) == ["crack", "hole"]

    crack = summary["per_defect_type"]["crack"]
    assert crack["num_images"] == 4 and crack["num_anomalous"] == 2
    # Images: good 0.2, 0.5; crack 0.6, 0.4 -> 0.6 beats both, 0.4 beats 0.2 -> 3/4.
    assert crack["image_auroc"] == pytest.approx(0.75)
    # F1 (score >= t): t=.6 2/3, t=.5 1/2, t=.4 P 2/3 R 1 -> 0.8, t=.2 2/3. Best 0.8 at 0.4.
    assert crack["f1_max"] == pytest.approx(0.8) and crack["f1_threshold"] == pytest.approx(0.4)
    # Pixels: 0.8 beats all 6 good pixels, 0.22 beats 4 (0.1, 0.2, 0, 0.05) -> 10/12.
    assert crack["pixel_auroc"] == pytest.approx(10 / 12)
    # PRO: 0.8 -> (0, 1/2); 0.3 -> (1/6, 1/2); 0.25 -> (2/6, 1/2): PRO 1/2 up to 0.3 -> 0.5.
    assert crack["aupro"] == pytest.approx(0.5)

    hole = summary["per_defect_type"]["hole"]
    assert hole["image_auroc"] == 1.0 and hole["f1_max"] == 1.0
    # The hole mask is empty: pixel metrics are undefined, reported as None.
    assert hole["pixel_auroc"] is None and hole["aupro"] is None
    json.dumps(summary)


def test_summarize_never_crashes_on_undefined_metrics():
    scores, labels, maps, masks, types = _summary_example()
    # No good image at all: image AUROC is undefined everywhere.
    anomalous = slice(2, 5)
    summary = summarize(scores[anomalous], labels[anomalous], maps[anomalous], masks[anomalous], types[anomalous])
    assert summary["image_auroc"] is None
    assert summary["per_defect_type"]["crack"]["image_auroc"] is None
    assert summary["per_defect_type"]["hole"]["aupro"] is None
    # Without maps, the pixel metrics are None and there are no per-type blocks without types.
    summary = summarize(scores, labels)
    assert summary["pixel_auroc"] is None and summary["aupro"] is None
    assert summary["image_auroc"] == pytest.approx(5 / 6) and summary["per_defect_type"] == {}


def test_summarize_rejects_inconsistent_input():
    scores, labels, maps, masks, types = _summary_example()
    with pytest.raises(ValueError, match="both maps and masks"):
        summarize(scores, labels, maps=maps)
    with pytest.raises(ValueError, match="labels disagree"):
        summarize(scores, [0, 1, 1, 1, 1], defect_types=types)
    with pytest.raises(ValueError, match="one per image"):
        summarize(scores, labels, maps[:3], masks[:3])


# --------------------------------------------------------------------------- hot spots and broken promises


def test_hot_spot_finds_a_planted_spot_and_passes_even_maps():
    rng = np.random.default_rng(0)
    maps = 0.01 + 0.004 * rng.random((30, 64, 64))
    even = hot_spot(maps, 16)
    assert not even["flagged"] and even["ratio"] < 1.5
    maps[:, 40:56, 8:24] += 0.04  # the same 16 x 16 cell in every map
    spot = hot_spot(maps, 16)
    assert spot["flagged"] and spot["ratio"] > 3
    assert (spot["row"], spot["col"]) == (40, 8) and spot["peak_share"] == 1.0
    warning = hot_spot_warning(spot, "the 30 calibration images")
    assert "30 calibration images" in warning and "row 40, column 8" in warning and "\n" not in warning
    assert hot_spot_warning(even, "the 30 calibration images") is None
    # A spot in one image only is no fixed hot spot.
    once = 0.01 + 0.004 * rng.random((30, 64, 64))
    once[0, 40:56, 8:24] += 0.04
    assert not hot_spot(once, 16)["flagged"]
    with pytest.raises(ValueError, match="hot_spot"):
        hot_spot(np.zeros((0, 8, 8)), 4)


@pytest.mark.parametrize("n,target,m", [(9, 0.1, 15), (20, 0.05, 15), (40, 0.05, 80)])
def test_false_alarm_chance_matches_repeated_calibrations(n, target, m):
    """Calibrate on n good scores, count the m new good images above: the tail frequency is the stated chance."""
    rng = np.random.default_rng(1)
    trials = 20000
    scores = rng.random((trials, n + m))
    thresholds = calibrate(scores[0, :n], np.zeros((n, 1, 1)), target)
    rank = n + 1 - round(thresholds["supported_fpr"] * (n + 1))
    cut = np.sort(scores[:, :n], axis=1)[:, rank - 1]
    alarms = (scores[:, n:] > cut[:, None]).sum(axis=1)
    for count in (1, 2, 4):
        assert false_alarm_chance(count, m, thresholds) == pytest.approx(np.mean(alarms >= count), abs=0.01)
    assert false_alarm_chance(0, m, thresholds) == 1.0
