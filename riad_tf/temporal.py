"""Temporal post-processing of per-frame anomaly scores: re-exported from `edge.temporal`.

The smoothing exists once, in the numpy-only `edge.temporal`, so that training,
evaluation and the device (`riad-edge video`) compute the same numbers. This
module keeps `from riad_tf.temporal import temporal_smoothing` working.

Example:

>>> temporal_smoothing([3.0, 6.0, 0.0, 3.0])
array([3. , 4.5, 3. , 3. ])
"""

from edge.temporal import PAPER_WINDOW, minmax_normalise, temporal_smoothing

__all__ = ["PAPER_WINDOW", "minmax_normalise", "temporal_smoothing"]
