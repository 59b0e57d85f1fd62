"""Temporal post-processing of per-frame anomaly scores (numpy only).

RIAD scores each video frame on its own; the paper then averages the score
over the current and the two previous frames (Sec. 4.3: "the anomaly score is
averaged over the past three frames"). Video anomaly work also commonly
min-max normalises the scores of each test video before the frame-level AUROC;
`riad_tf.video` reports both, labelled.

This module imports nothing but numpy. It lives in `edge` so that the device
(`riad-edge video`) and training/evaluation (`riad_tf.video`)
run the very same code.

Example:

>>> temporal_smoothing([3.0, 6.0, 0.0, 3.0])
array([3. , 4.5, 3. , 3. ])
>>> minmax_normalise([2.0, 4.0, 3.0])
array([0. , 1. , 0.5])
"""

from __future__ import annotations

import numpy as np

PAPER_WINDOW = 3  # the current frame and the two previous ones (Sec. 4.3)


def temporal_smoothing(scores, window: int = PAPER_WINDOW) -> np.ndarray:
    """Causal moving average: the mean of the last `window` frame scores.

    Frame t gets `mean(scores[max(0, t - window + 1) : t + 1])`: the first
    frames of a video average the frames that exist (frame 0 keeps its own
    score). The sum runs from the oldest frame to the newest, so the result is
    exactly what `sum(last) / len(last)` gives. Smooth each video on its own,
    never across the boundary between two videos.

    Args:
        scores: `(T,)` per-frame scores of one video, in frame order.
        window: frames averaged, at least 1 (1 returns the scores unchanged).

    Returns:
        float64 `(T,)` smoothed scores.

    Raises:
        ValueError: `scores` is not 1-D or `window` is below 1.

    Example:

    >>> temporal_smoothing([1.0, 2.0, 3.0, 4.0], window=2)
    array([1. , 1.5, 2.5, 3.5])
    """
    values = np.asarray(scores, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"temporal_smoothing: expected 1-D frame scores, got shape {values.shape}")
    if int(window) < 1:
        raise ValueError(f"temporal_smoothing: window must be at least 1, got {window}")
    total = np.zeros_like(values)
    count = np.zeros_like(values)
    for lag in range(int(window) - 1, -1, -1):  # oldest frame first
        if lag >= len(values):
            continue
        total[lag:] += values[: len(values) - lag]
        count[lag:] += 1.0
    return total / np.maximum(count, 1.0)


def minmax_normalise(scores) -> np.ndarray:
    """Rescales one video's scores to [0, 1]: `(s - min) / (max - min)`.

    A video whose scores are all equal becomes all zeros.

    Args:
        scores: `(T,)` scores of one video.

    Returns:
        float64 `(T,)` scores in [0, 1].

    Example:

    >>> minmax_normalise([5.0, 5.0])
    array([0., 0.])
    """
    values = np.asarray(scores, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"minmax_normalise: expected 1-D frame scores, got shape {values.shape}")
    if values.size == 0:
        return values
    low, high = values.min(), values.max()
    if high <= low:
        return np.zeros_like(values)
    return (values - low) / (high - low)
