"""Evaluation metrics of a scored test set (numpy / scikit-learn / scipy only).

Image level (Sec. 4.2, Table 1): ROC AUC of the image scores and the best F1.
Pixel level (Table 2): ROC AUC over all pixels, and AUPRO with MVTec AD's definition:

- the ground-truth regions are the 8-connected components of each image's mask;
- for a threshold t, PRO(t) is the mean over all regions of all images of the
  fraction of the region's pixels with value >= t, and FPR(t) is the fraction of
  all anomaly-free pixels (of every image, good images included) with value >= t;
- the PRO-vs-FPR curve, starting at (0, 0), is integrated with the trapezoid rule
  from FPR 0 to `fpr_limit` (interpolated at exactly `fpr_limit`) and divided by
  `fpr_limit`, so the result lies in [0, 1].

Thresholds for deployment are in `riad_tf.thresholds`.

Metrics that are undefined for the data (one class only, no anomalous region, no
anomaly-free pixel) raise `UndefinedMetricError`, a `ValueError`; `summarize`
turns those into None instead of failing.

Example:

>>> import numpy as np
>>> image_auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
0.75
>>> masks = np.zeros((1, 4, 4), bool); masks[0, :2, :2] = True
>>> aupro(masks.astype(np.float32), masks)  # a perfect map
1.0
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage
from sklearn.metrics import precision_recall_curve, roc_auc_score

# 8-connectivity inside each image, no connection across the image axis.
_EIGHT_CONNECTED_PER_IMAGE = np.zeros((3, 3, 3), dtype=bool)
_EIGHT_CONNECTED_PER_IMAGE[1] = True


class UndefinedMetricError(ValueError):
    """The metric does not exist for these data (e.g. only one class is present)."""


# --------------------------------------------------------------------------- input checks


def _as_values(values, name: str) -> np.ndarray:
    """A finite real-valued array (ints and bools become float64)."""
    values = np.asarray(values)
    if values.dtype.kind not in "biuf":
        raise ValueError(f"{name}: expected real numbers, got dtype {values.dtype}")
    if values.dtype.kind != "f":
        values = values.astype(np.float64)
    if values.size == 0:
        raise ValueError(f"{name}: got an empty array")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{name}: values contain NaN or infinity")
    return values


def _as_binary(labels, name: str) -> np.ndarray:
    """Boolean array from bools or 0/1 numbers; anything else is an error."""
    labels = np.asarray(labels)
    if labels.dtype == bool:
        return labels
    if labels.dtype.kind not in "iuf" or not np.all((labels == 0) | (labels == 1)):
        raise ValueError(f"{name}: must be boolean or 0/1 (1 = anomalous)")
    return labels == 1


def _check_scores_labels(scores, labels, fn: str) -> tuple[np.ndarray, np.ndarray]:
    scores = _as_values(scores, f"{fn}: scores")
    labels = _as_binary(labels, f"{fn}: labels")
    if scores.ndim != 1 or labels.shape != scores.shape:
        raise ValueError(
            f"{fn}: scores and labels must be 1-D of equal length, got shapes {scores.shape} and {labels.shape}"
        )
    return scores, labels


def _check_maps_masks(maps, masks, fn: str) -> tuple[np.ndarray, np.ndarray]:
    """`(N, H, W)` maps and masks of equal shapes, or (`_is_ragged`) N maps and masks of their own sizes."""
    if _is_ragged(maps) or _is_ragged(masks):
        if len(maps) != len(masks):
            raise ValueError(f"{fn}: {len(maps)} maps for {len(masks)} masks")
        pairs = [(_as_values(m, f"{fn}: maps"), _as_binary(k, f"{fn}: masks")) for m, k in zip(maps, masks)]
        for i, (m, k) in enumerate(pairs):
            if m.ndim != 2 or m.shape != k.shape:
                raise ValueError(f"{fn}: map {i} is {m.shape} and its mask {k.shape}; need equal (H, W)")
        return _object_array([m for m, _ in pairs]), _object_array([k for _, k in pairs])
    maps = _as_values(maps, f"{fn}: maps")
    masks = _as_binary(masks, f"{fn}: masks")
    if maps.ndim != 3 or masks.shape != maps.shape:
        raise ValueError(
            f"{fn}: maps and masks must both be (N, H, W) with equal shapes, got {maps.shape} and {masks.shape}"
        )
    return maps, masks


def _is_ragged(maps) -> bool:
    """Maps of their own sizes: a list of 2-D arrays of different shapes, or an object array of them."""
    if isinstance(maps, np.ndarray):
        return maps.dtype == object
    return isinstance(maps, (list, tuple)) and len({np.shape(m) for m in maps}) > 1


def _object_array(arrays: list) -> np.ndarray:
    out = np.empty(len(arrays), object)
    out[:] = arrays
    return out


def _pixels(maps, masks) -> tuple[np.ndarray, np.ndarray]:
    """Every pixel's value and label, flat, over all images (`_check_maps_masks`'s output)."""
    if maps.dtype != object:
        return maps.ravel(), masks.ravel()
    return np.concatenate([m.ravel() for m in maps]), np.concatenate([k.ravel() for k in masks])


def _regions(masks) -> tuple[np.ndarray, int]:
    """Flat labels of each image's 8-connected defect regions (0: no defect), numbered across images."""
    if masks.dtype != object:
        regions, count = ndimage.label(masks, structure=_EIGHT_CONNECTED_PER_IMAGE)
        return regions.ravel(), count
    labelled, count = [], 0
    for mask in masks:
        regions, found = ndimage.label(mask, structure=np.ones((3, 3), bool))
        labelled.append(np.where(regions > 0, regions + count, 0).ravel())
        count += found
    return np.concatenate(labelled), count


def _require_both_classes(labels: np.ndarray, fn: str, what: str) -> None:
    num_positive = int(labels.sum())
    if num_positive == 0 or num_positive == labels.size:
        present = "anomalous" if num_positive else "good"
        raise UndefinedMetricError(f"{fn}: only {present} {what} present; ROC AUC needs both good and anomalous {what}")


# --------------------------------------------------------------------------- image level


def image_auroc(scores, labels) -> float:
    """ROC AUC of image scores (Table 1).

    Args:
        scores: `(N,)` anomaly scores, higher = more anomalous.
        labels: `(N,)` 1 (or True) for anomalous images, 0 for good ones.

    Returns:
        The area under the ROC curve, in [0, 1]; ties count one half.

    Raises:
        UndefinedMetricError: (a ValueError) when only one class is present.

    Example:

    >>> image_auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    0.75
    """
    scores, labels = _check_scores_labels(scores, labels, "image_auroc")
    _require_both_classes(labels, "image_auroc", "images")
    return float(roc_auc_score(labels, scores))


def f1_max(scores, labels) -> tuple[float, float]:
    """The best F1 score over all thresholds, and the threshold reaching it.

    The threshold follows scikit-learn's `precision_recall_curve`: it is one of
    the scores, and the images predicted anomalous are those with
    `score >= threshold` (note: `>=`, unlike the calibrated thresholds).

    Args:
        scores: `(N,)` anomaly scores.
        labels: `(N,)` 1 (or True) for anomalous images.

    Returns:
        `(f1, threshold)` as plain floats.

    Raises:
        UndefinedMetricError: when no image is anomalous.

    Example:

    >>> f1, t = f1_max([0.1, 0.2, 0.3, 0.4, 0.5], [0, 1, 0, 1, 1])
    >>> round(f1, 4), t
    (0.8571, 0.2)
    """
    scores, labels = _check_scores_labels(scores, labels, "f1_max")
    if not labels.any():
        raise UndefinedMetricError("f1_max: no anomalous image; F1 needs at least one")
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    # The last (precision 1, recall 0) point has no threshold.
    precision, recall = precision[:-1], recall[:-1]
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(denominator), where=denominator > 0)
    best = int(np.argmax(f1))
    return float(f1[best]), float(thresholds[best])


# --------------------------------------------------------------------------- pixel level


def pixel_auroc(maps, masks) -> float:
    """ROC AUC over all pixels of all images (Table 2).

    Args:
        maps: `(N, H, W)` anomaly maps.
        masks: `(N, H, W)` ground truth, True / 1 on anomalous pixels.

    Returns:
        The area under the pixel ROC curve, in [0, 1].

    Raises:
        UndefinedMetricError: when all pixels are anomalous or none is.

    Example:

    >>> maps = [[[0.9, 0.2], [0.4, 0.3]]]
    >>> pixel_auroc(maps, [[[1, 0], [0, 1]]])
    0.75
    """
    values, labels = _pixels(*_check_maps_masks(maps, masks, "pixel_auroc"))
    _require_both_classes(labels, "pixel_auroc", "pixels")
    return float(roc_auc_score(labels, values))


def pro_curve(maps, masks) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The per-region-overlap curve: PRO against FPR at every distinct map value.

    Sorts all pixels once by value; walking down the sorted values, each
    anomaly-free pixel adds 1 / (number of anomaly-free pixels) to the FPR and
    each pixel of region r adds 1 / (|r| * number of regions) to the PRO.
    Pixels with equal values are taken together (one point per distinct value).

    Args:
        maps: `(N, H, W)` anomaly maps.
        masks: `(N, H, W)` ground truth, True / 1 on anomalous pixels.

    Returns:
        `(fprs, pros, thresholds)`, 1-D float64 arrays of equal length. Point i
        counts the pixels with `value >= thresholds[i]`; the first point is
        (0, 0) with threshold +inf and the last is (1, 1). `fprs` and `pros`
        are non-decreasing.

    Raises:
        UndefinedMetricError: when the masks have no anomalous region, or no
            anomaly-free pixel.

    Example:

    >>> fprs, pros, _ = pro_curve([[[0.9, 0.1], [0.5, 0.5]]], [[[1, 0], [0, 0]]])
    >>> fprs.tolist(), pros.tolist()
    ([0.0, 0.0, 0.6666666666666666, 1.0], [0.0, 1.0, 1.0, 1.0])
    """
    maps, masks = _check_maps_masks(maps, masks, "pro_curve")
    values, labels = _pixels(maps, masks)
    regions, num_regions = _regions(masks)
    if num_regions == 0:
        raise UndefinedMetricError("pro_curve: the masks contain no anomalous region")
    num_good = int(labels.size - labels.sum())
    if num_good == 0:
        raise UndefinedMetricError("pro_curve: every pixel is anomalous; the FPR is undefined")

    region_sizes = np.bincount(regions)
    inverse_size = np.zeros(num_regions + 1)
    inverse_size[1:] = 1.0 / region_sizes[1:]

    order = np.argsort(values)[::-1]  # descending; order within ties is irrelevant
    values = values[order]
    false_positives = np.cumsum(regions[order] == 0, dtype=np.int64)
    overlap = np.cumsum(inverse_size[regions[order]])
    # One point per distinct value: the last pixel of each run of equal values.
    last_of_run = np.append(values[1:] != values[:-1], True)

    fprs = false_positives[last_of_run] / num_good  # exact ratios of integers
    pros = np.clip(overlap[last_of_run] / num_regions, 0.0, 1.0)
    return (
        np.concatenate([[0.0], fprs]),
        np.concatenate([[0.0], pros]),
        np.concatenate([[np.inf], values[last_of_run].astype(np.float64)]),
    )


def _area_up_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid area under (x, y), x non-decreasing, from x[0] to x_max.

    Points with x <= x_max are kept (vertical steps add no area); when x_max
    falls between two points, y is interpolated linearly there.
    """
    inside = int(np.searchsorted(x, x_max, side="right"))
    x_part, y_part = x[:inside], y[:inside]
    if x_part[-1] < x_max and inside < x.size:
        x0, x1, y0, y1 = x[inside - 1], x[inside], y[inside - 1], y[inside]
        y_at = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
        x_part, y_part = np.append(x_part, x_max), np.append(y_part, y_at)
    return float(np.trapezoid(y_part, x_part))


def aupro(maps, masks, fpr_limit: float = 0.3) -> float:
    """Normalised area under the PRO curve up to `fpr_limit` (MVTec AD's AUPRO).

    Args:
        maps: `(N, H, W)` anomaly maps; good images (all-zero masks) count for the FPR.
        masks: `(N, H, W)` ground truth, True / 1 on anomalous pixels; regions
            are the 8-connected components of each image's mask.
        fpr_limit: upper FPR bound of the integration, in (0, 1].

    Returns:
        (1 / fpr_limit) * integral of PRO d(FPR) over [0, fpr_limit], in [0, 1].

    Raises:
        UndefinedMetricError: when there is no anomalous region or no anomaly-free pixel.
        ValueError: for bad shapes, non-binary masks or an out-of-range `fpr_limit`.

    Example:

    >>> maps = [[[0.9, 0.1], [0.5, 0.5]]]
    >>> aupro(maps, [[[1, 0], [0, 0]]], fpr_limit=0.3)
    1.0
    """
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"aupro: fpr_limit must be in (0, 1], got {fpr_limit}")
    fprs, pros, _ = pro_curve(maps, masks)
    return _area_up_to(fprs, pros, fpr_limit) / fpr_limit


# --------------------------------------------------------------------------- report


def _defined_or_none(metric, *args, **kwargs):
    try:
        return metric(*args, **kwargs)
    except UndefinedMetricError:
        return None


def _metrics(scores, labels, maps, masks, fpr_limit) -> dict:
    best = _defined_or_none(f1_max, scores, labels)
    block = {
        "num_images": int(labels.size),
        "num_anomalous": int(labels.sum()),
        "image_auroc": _defined_or_none(image_auroc, scores, labels),
        "f1_max": None if best is None else best[0],
        "f1_threshold": None if best is None else best[1],
        "pixel_auroc": None,
        "aupro": None,
    }
    if maps is not None:
        block["pixel_auroc"] = _defined_or_none(pixel_auroc, maps, masks)
        block["aupro"] = _defined_or_none(aupro, maps, masks, fpr_limit)
    return block


def _summarize_inputs(scores, labels, maps, masks):
    """`summarize`'s arrays, checked: one label (and map and mask, when given) per score."""
    scores, labels = _check_scores_labels(scores, labels, "summarize")
    if (maps is None) != (masks is None):
        raise ValueError("summarize: give both maps and masks, or neither")
    if maps is not None:
        maps, masks = _check_maps_masks(maps, masks, "summarize")
        if len(maps) != scores.size:
            raise ValueError(f"summarize: {len(maps)} maps for {scores.size} scores; need one per image")
    return scores, labels, maps, masks


def summarize(
    scores,
    labels,
    maps=None,
    masks=None,
    defect_types: Sequence[str] | None = None,
    fpr_limit: float = 0.3,
) -> dict:
    """All metrics of a test set, overall and per defect type.

    Args:
        scores: `(N,)` image scores.
        labels: `(N,)` 1 for anomalous images, 0 for good ones.
        maps, masks: optional `(N, H, W)` anomaly maps and ground-truth masks
            (give both or neither) for the pixel metrics, or lists of N maps
            and masks of each image's own size (images scored in tiles).
        defect_types: optional `(N,)` type names; "good" marks the good images.
            Each other type t is evaluated on {good images} U {images of type t}.
        fpr_limit: integration limit of AUPRO.

    Returns:
        A JSON-serialisable dict with `num_images`, `num_anomalous`,
        `image_auroc`, `f1_max`, `f1_threshold`, `pixel_auroc`, `aupro` (None
        when undefined for the data or when no maps were given) and
        `per_defect_type`: `{type: block with the same keys}` (empty without
        `defect_types`).

    Example:

    >>> s = summarize([0.1, 0.9, 0.8], [0, 1, 1], defect_types=["good", "cut", "hole"])
    >>> s["image_auroc"], s["per_defect_type"]["cut"]["image_auroc"]
    (1.0, 1.0)
    """
    scores, labels, maps, masks = _summarize_inputs(scores, labels, maps, masks)

    def subset(keep):
        return (
            scores[keep],
            labels[keep],
            None if maps is None else maps[keep],
            None if masks is None else masks[keep],
            fpr_limit,
        )

    summary = _metrics(*subset(slice(None)))
    summary["per_defect_type"] = {}
    if defect_types is None:
        return summary

    types = np.asarray(defect_types, dtype=str)
    if types.shape != scores.shape:
        raise ValueError(f"summarize: {types.size} defect types for {scores.size} images; need one per image")
    is_good = types == "good"
    if np.any(is_good == labels):
        raise ValueError('summarize: labels disagree with defect_types (label 0 iff type "good")')
    for defect in sorted(set(types[~is_good].tolist())):
        summary["per_defect_type"][defect] = _metrics(*subset(is_good | (types == defect)))
    return summary


def verdict_rates(predicted, labels) -> dict:
    """How verdicts went on a labelled test set: the false- and true-positive rates, with their counts.

    Args:
        predicted: `(N,)` True where an image (or frame) was called anomalous.
        labels: `(N,)` 1 for anomalous, 0 for good.

    Returns:
        `{"false_positive_rate", "true_positive_rate"}` (None without good, or
        without anomalous, items) and the counts `false_positives`, `num_good`,
        `true_positives`, `num_anomalous`.

    Example:

    >>> verdict_rates([True, False, True, True], [0, 0, 1, 1])["false_positive_rate"]
    0.5
    """
    predicted, labels = np.asarray(predicted, bool), np.asarray(labels, bool)
    good = ~labels
    return {
        "false_positive_rate": float(predicted[good].mean()) if good.any() else None,
        "true_positive_rate": float(predicted[labels].mean()) if labels.any() else None,
        "false_positives": int(predicted[good].sum()),
        "num_good": int(good.sum()),
        "true_positives": int(predicted[labels].sum()),
        "num_anomalous": int(labels.sum()),
    }
