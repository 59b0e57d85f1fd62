"""Thresholds from anomaly-free images only, and the checks that they keep their promise.

- `calibrate`: the image threshold (conformal: an order statistic of held-out
  good images' scores, with the false-positive rate their number supports; see
  `edge.verdicts`) and the region threshold;
- `threshold_at_fpr`: a per-pixel quantile;
- `hot_spot`: a false defect planted at the same place of every map (a
  cell-sized window of the mean good map far above the rest);
- `false_alarm_chance`: how likely it is by chance that a calibrated threshold
  rejects at least this many good test images.

Every threshold is for the rule

    anomalous  iff  value > threshold

Example:

>>> threshold_at_fpr([0.1, 0.2, 0.3, 0.4], target_fpr=0.25)
0.3
"""

from __future__ import annotations

import numpy as np
from scipy.stats import beta, betabinom

from riad_tf.metrics import _as_values

ANOMALY_RULE = "anomalous if value > threshold"


# A fixed hot spot (`hot_spot`): a cell-sized window of the mean good map this many times its median window.
# Measured (docs/method.md, "Thresholds"): a spot planted by the paper's plain partitions on the demo 2.80x;
# the demo with context partitions 1.39x; magnetic tile's own brighter region 2.06-2.12x with either rule.
HOT_SPOT_RATIO = 2.5


def threshold_at_fpr(good_values, target_fpr: float = 0.01) -> float:
    """The smallest threshold whose false-positive rate on good data is at most `target_fpr`.

    With the rule `anomalous iff value > threshold`, the returned t is the
    smallest t such that `mean(good_values > t) <= target_fpr`. It is always one
    of the given values: with k = the largest count with k / n <= target_fpr,
    t is the (k+1)-th largest value.

    Args:
        good_values: scores or maps of anomaly-free images, any shape (flattened).
        target_fpr: allowed false-positive rate, in [0, 1).

    Returns:
        The threshold as a plain float.

    Example:

    >>> threshold_at_fpr(np.arange(100), target_fpr=0.01)
    98.0
    """
    values = _as_values(good_values, "threshold_at_fpr: good_values").ravel()
    if not 0.0 <= target_fpr < 1.0:
        raise ValueError(f"threshold_at_fpr: target_fpr must be in [0, 1), got {target_fpr}")
    n = values.size
    # Largest k with k / n <= target_fpr, decided with the same division a caller
    # would use to check the rate (target * n alone can round either way).
    allowed = int(np.floor(target_fpr * n))
    while allowed + 1 < n and (allowed + 1) / n <= target_fpr:
        allowed += 1
    while allowed > 0 and allowed / n > target_fpr:
        allowed -= 1
    kth_smallest = n - 1 - allowed
    return float(np.partition(values, kth_smallest)[kth_smallest])


def calibrate(good_scores, good_maps, target_fpr: float = 0.01, min_region_area: int = 1) -> dict:
    """Thresholds from held-out anomaly-free images, with the false-positive rate they support.

    The image threshold is `edge.verdicts.conformal_threshold` of the images'
    region scores (`edge.verdicts.region_score`; with `min_region_area` 1, the
    image scores themselves): a new good image is called anomalous, or shows a
    region, with probability at most `supported_fpr`. Regions are drawn at the
    same threshold ("region"), so region and image verdicts agree. The
    per-pixel quantile at `target_fpr` ("segmentation") is only a drawing aid.

    Args:
        good_scores: `(N,)` image scores of good images.
        good_maps: `(N, H, W)` anomaly maps of the same images (or N maps of
            their own sizes: images scored in tiles).
        target_fpr: the wanted bound on the false-positive rate.
        min_region_area: the smallest region (pixels) that makes an image anomalous.

    Returns:
        A JSON-serialisable dict: `image`, `region`, `min_region_area`,
        `segmentation`, `target_fpr`, `supported_fpr` (the bound, on average
        over calibration sets), `fpr_90` (with 90 % probability this
        calibration's own rate is below it), `target_supported`, `num_images`,
        `rule` ("anomalous if value > threshold") and `method`.

    Example:

    >>> t = calibrate(np.arange(10.0), np.zeros((10, 4, 4)), target_fpr=0.1)
    >>> t["image"], t["supported_fpr"], t["target_supported"]
    (9.0, 0.09090909090909091, True)
    """
    from edge.verdicts import conformal_threshold, region_score

    scores = _as_values(good_scores, "calibrate: good_scores")
    maps = [_as_values(m, "calibrate: good_maps") for m in good_maps]
    if scores.ndim != 1 or len(maps) != scores.shape[0] or any(m.ndim != 2 for m in maps):
        raise ValueError(
            f"calibrate: expected (N,) scores and N (H, W) maps of the same images, "
            f"got shape {scores.shape} and {len(maps)} maps"
        )
    if min_region_area > 1:
        scores = np.array([region_score(m, min_region_area) for m in maps])
    image = conformal_threshold(scores, target_fpr)
    # This calibration's own rate is Beta(n + 1 - k, k)-distributed over calibration sets (continuous scores).
    upper = float(beta.ppf(0.9, image.num_images + 1 - image.rank, image.rank))
    return {
        "image": image.threshold,
        "region": image.threshold,
        "min_region_area": int(min_region_area),
        "segmentation": threshold_at_fpr(np.concatenate([m.ravel() for m in maps]), target_fpr),
        "target_fpr": float(target_fpr),
        "supported_fpr": image.supported_fpr,
        "fpr_90": upper,
        "target_supported": image.supported,
        "num_images": image.num_images,
        "rule": ANOMALY_RULE,
        "method": "conformal: the k-th smallest good score, k = ceil((n + 1)(1 - target_fpr))",
    }


def hot_spot(good_maps, cell: int) -> dict:
    """Where the mean anomaly map of good images is highest, over cell-sized windows, against the rest.

    A place that scores high in every good image is a false defect the model
    plants there: a fixed inference partition that hides a cell together with
    its neighbours does that (docs/method.md, "Masks"). The mean map is
    averaged over `cell` x `cell` windows (stride cell / 2); the ratio of the
    highest window to the median one says how far the spot stands out
    (`HOT_SPOT_RATIO` and above is flagged), and the share of maps whose
    maximum lies where the mean map is hot (at least halfway from the median
    window to the top one) how many images it decides.

    Args:
        good_maps: `(N, H, W)` anomaly maps of good images.
        cell: the window, in pixels: the largest region size k.

    Returns:
        A JSON-serialisable dict: `ratio`, `peak` and `median` (window means),
        `row` and `col` (the top-left pixel of the peak window), `cell`,
        `peak_share` (the share of the maps whose maximum lies where the mean
        map is hot) and `flagged`.

    Example:

    >>> maps = np.full((4, 32, 32), 0.01); maps[:, :8, :8] = 0.05
    >>> spot = hot_spot(maps, 8)
    >>> spot["row"], spot["col"], round(spot["ratio"], 1), spot["flagged"]
    (0, 0, 5.0, True)
    """
    maps = _as_values(good_maps, "hot_spot: good_maps")
    if maps.ndim != 3 or len(maps) == 0:
        raise ValueError(f"hot_spot: expected (N, H, W) maps of at least one image, got shape {maps.shape}")
    cell = max(1, min(int(cell), *maps.shape[1:]))
    stride = max(1, cell // 2)
    mean = maps.mean(axis=0)
    # Window sums from an integral image, every window of the stride.
    integral = np.pad(mean.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    rows = np.arange(0, mean.shape[0] - cell + 1, stride)
    cols = np.arange(0, mean.shape[1] - cell + 1, stride)
    r, c = np.meshgrid(rows, cols, indexing="ij")
    windows = (integral[r + cell, c + cell] - integral[r, c + cell] - integral[r + cell, c] + integral[r, c]) / cell**2
    top = np.unravel_index(int(np.argmax(windows)), windows.shape)
    row, col = int(rows[top[0]]), int(cols[top[1]])
    peak, median = float(windows[top]), float(np.median(windows))
    ratio = peak / median if median > 0 else (1.0 if peak <= 0 else float("inf"))
    # A map peaks in the spot when the mean map is hot where it peaks: halfway from the median window to the top.
    peaks = np.array([np.unravel_index(int(np.argmax(m)), m.shape) for m in maps])
    inside = mean[peaks[:, 0], peaks[:, 1]] >= (peak + median) / 2
    return {
        "ratio": ratio,
        "peak": peak,
        "median": median,
        "row": row,
        "col": col,
        "cell": cell,
        "peak_share": float(inside.mean()),
        "flagged": bool(ratio >= HOT_SPOT_RATIO),
    }


def hot_spot_warning(spot: dict, what: str) -> str | None:
    """The one-line warning for a flagged `hot_spot` of `what` (say "the calibration images"), or None."""
    if not spot["flagged"]:
        return None
    return (
        f"warning: the mean anomaly map of {what} has a {spot['cell']} x {spot['cell']} spot at row {spot['row']}, "
        f"column {spot['col']} at {spot['ratio']:.1f}x its median (the maximum of {spot['peak_share']:.0%} of the "
        f"images lies there): a false defect in the same place of every image; look at the mean good map in the "
        f'report (docs/method.md, "Masks")'
    )


def false_alarm_chance(false_alarms: int, num_good: int, thresholds: dict) -> float:
    """How likely at least `false_alarms` of `num_good` new good images are rejected by calibrated thresholds.

    A conformal threshold at rank k of n good scores rejects a new good image
    with a probability that is Beta(n + 1 - k, k)-distributed over calibration
    sets; the count among m images is then beta-binomial. A small value says
    the promise is broken (the test images differ from the calibration ones,
    or the thresholds are stale), not bad luck.

    Args:
        false_alarms: good test images called anomalous.
        num_good: good test images.
        thresholds: a `calibrate` record (`num_images`, `supported_fpr`).

    Returns:
        P(X >= false_alarms), X beta-binomial as above.

    Example:

    >>> t = calibrate(np.arange(9.0), np.zeros((9, 2, 2)), target_fpr=0.1)
    >>> round(false_alarm_chance(4, 15, t), 3)
    0.128
    """
    n = int(thresholds["num_images"])
    exceed = round(float(thresholds["supported_fpr"]) * (n + 1))  # n + 1 - k
    if false_alarms <= 0:
        return 1.0
    return float(betabinom.sf(false_alarms - 1, num_good, exceed, n + 1 - exceed))
