"""Thresholds with a stated guarantee, and verdicts that agree with each other (numpy only).

Calibration (`conformal_threshold`) takes the scores of n good images that
training never saw. With the rule `anomalous iff score > t`, the threshold is
the k-th smallest of them, k = ceil((n + 1)(1 - target)). A new good image of
the same kind then exceeds it with probability at most
(n + 1 - k) / (n + 1) <= target, whatever the score distribution: the new
image's rank among the n + 1 is uniform (a conformal, order-statistic rule).
When k > n the target is not supported by n images: the threshold is their
largest score and the supported rate is 1 / (n + 1). Reaching a rate r needs
at least (1 - r) / r good images (99 for 1 %).

Image and region verdicts use one threshold. An image's region score is the
largest value t such that its map has an 8-connected region of at least
`min_region_area` pixels above t; with the default area 1 it is the map's
maximum, which is RIAD's image score (Eq. 10). The region threshold is
calibrated on the region scores of good images, so the share of good images
with any reported region is bounded as above, and an image is anomalous
exactly when it has a region: the two verdicts never disagree. The per-pixel
quantile (`segmentation`) is kept as a drawing aid only.

Example:

>>> t = conformal_threshold(np.arange(1.0, 100.0), 0.05)   # 99 good scores
>>> t.threshold, round(t.supported_fpr, 3), t.supported
(95.0, 0.05, True)
>>> conformal_threshold(np.arange(9.0), 0.01).supported_fpr
0.1
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

RULE = "anomalous if value > threshold"


@dataclasses.dataclass(frozen=True)
class ConformalThreshold:
    """A threshold from n good scores, with the false-positive rate n supports."""

    threshold: float
    target_fpr: float
    rank: int  # the threshold is the rank-th smallest good score
    num_images: int

    @property
    def supported_fpr(self) -> float:
        """The bound n images support at this rank: (n + 1 - rank) / (n + 1)."""
        return (self.num_images + 1 - self.rank) / (self.num_images + 1)

    @property
    def supported(self) -> bool:
        """Whether the bound reaches the target."""
        return self.supported_fpr <= self.target_fpr

    def warning(self, what: str = "image") -> str | None:
        """A one-line warning when the target is not supported; None otherwise (`support_warning`)."""
        return support_warning(self.target_fpr, self.supported_fpr, self.num_images, what)


def support_warning(target_fpr: float, supported_fpr: float, num_images: int, what: str = "image") -> str | None:
    """The warning for a target that `num_images` good images cannot support (as `calibrate` records them), or None."""
    if supported_fpr <= target_fpr:
        return None
    needed = math.ceil((1 - target_fpr) / target_fpr) if target_fpr > 0 else None
    need = f"needs at least {needed} good images" if needed else "cannot be guaranteed by any number of images"
    return (
        f"warning: a false-positive rate of {target_fpr:g} for {what}s {need}; with {num_images} the "
        f"{what} threshold is their largest score and a new good image exceeds it with probability up to "
        f"{supported_fpr:.3g} (1/(n+1))"
    )


def conformal_threshold(good_scores, target_fpr: float) -> ConformalThreshold:
    """The smallest order statistic of good scores whose exceedance probability is at most `target_fpr`.

    Args:
        good_scores: scores of n >= 1 good images, not used in training.
        target_fpr: the wanted bound on the false-positive rate, in [0, 1).

    Returns:
        A `ConformalThreshold`; when n images cannot support the target, the
        largest score with `supported_fpr` = 1 / (n + 1).
    """
    scores = np.sort(np.asarray(good_scores, np.float64).ravel())
    if scores.size == 0:
        raise ValueError("no good images to calibrate a threshold on")
    if not np.all(np.isfinite(scores)):
        raise ValueError("the good images' scores contain NaN or infinity")
    if not 0.0 <= target_fpr < 1.0:
        raise ValueError(f"target_fpr must be in [0, 1), got {target_fpr}")
    n = scores.size
    # k = ceil((n + 1)(1 - target)), computed so that float rounding never makes k one too small.
    k = min(n + 1, math.ceil(round((n + 1) * (1.0 - target_fpr), 9)))
    k = max(k, 1)
    rank = min(k, n)
    return ConformalThreshold(float(scores[rank - 1]), float(target_fpr), rank, n)


def region_score(anomaly_map: np.ndarray, min_area: int = 1) -> float:
    """The image's value for the verdict: `region_score > t` iff `map > t` has an 8-connected region of `min_area`.

    It is the smallest map value t at which no region of `min_area` pixels
    remains above t. With `min_area` 1 this is the map's maximum, RIAD's image
    score (Eq. 10). A map with fewer pixels than `min_area` gives -inf.

    Example:

    >>> m = np.zeros((6, 6)); m[0, 0] = 9.0; m[3:5, 3:5] = 5.0
    >>> region_score(m, 1), region_score(m, 4)
    (9.0, 5.0)
    """
    values = np.asarray(anomaly_map, np.float64)
    if min_area <= 1:
        return float(values.max())
    if min_area > values.size:
        return -math.inf
    candidates = np.unique(values)  # ascending; having a region above candidates[i] only gets harder with i
    below, above = -1, len(candidates) - 1  # a region above "below" (-1: below every value), none above "above"
    while above - below > 1:
        middle = (below + above) // 2
        if _largest_region(values > candidates[middle]) >= min_area:
            below = middle
        else:
            above = middle
    return float(candidates[above])


def _largest_region(mask: np.ndarray) -> int:
    import cv2

    count, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    return int(stats[1:, cv2.CC_STAT_AREA].max()) if count > 1 else 0


THRESHOLD_KEYS = ("image", "region", "segmentation", "smoothed_frame")
SHARE_KEYS = ("target_fpr", "supported_fpr", "fpr_90")


def thresholds_problem(thresholds) -> str | None:
    """What is wrong with a thresholds record (`thresholds.json`, the metadata's `thresholds`), or None.

    Every threshold present must be a finite number (or null), `min_region_area`
    a positive integer, the rates shares in [0, 1]; "image" must be there.

    Example:

    >>> thresholds_problem({"image": 0.3, "region": 0.3, "min_region_area": 4}) is None
    True
    >>> thresholds_problem({"image": float("nan")})
    'image must be a finite number, got nan'
    """
    if not isinstance(thresholds, dict):
        return f"must be a JSON object, got {type(thresholds).__name__}"
    if "image" not in thresholds:
        return "has no image threshold"
    for key in THRESHOLD_KEYS:
        value = thresholds.get(key)
        if value is not None and not _finite(value):
            return f"{key} must be a finite number, got {value!r}"
    if thresholds["image"] is None:
        return "image must be a finite number, got None"
    area = thresholds.get("min_region_area", 1)
    if not (isinstance(area, int) and not isinstance(area, bool) and area >= 1):
        return f"min_region_area must be a positive integer, got {area!r}"
    for key in SHARE_KEYS:
        value = thresholds.get(key)
        if value is not None and not (_finite(value) and 0 <= value <= 1):
            return f"{key} must be a share in [0, 1], got {value!r}"
    return None


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_anomalous(score: float, anomaly_map: np.ndarray | None, thresholds: dict) -> bool:
    """The image verdict: its region score above the image threshold (`score` itself when the area is 1)."""
    area = int(thresholds.get("min_region_area", 1) or 1)
    value = score if area <= 1 or anomaly_map is None else region_score(anomaly_map, area)
    return bool(value > thresholds["image"])
