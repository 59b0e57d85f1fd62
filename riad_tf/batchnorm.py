"""Batch-norm moving statistics: the guard that compares both modes, and re-estimation.

Every score, threshold and export runs the U-Net in inference mode, on the
moving mean and variance that batch norm keeps during training. When those lag
behind the weights, the inference-mode model is a different, worse model than
the one training measured, and nothing else shows it (issue #13: train loss
0.146 against validation loss 0.854, a detector worse than chance).

- `frozen_statistics`: run the model in training mode (batch statistics)
  without moving the stored statistics, to compare both modes on the same data.
- `statistics_diverged`: the guard's rule.
- `reestimate_statistics`: replace the moving statistics by their plain average
  over given batches (what the saved model gets by default, `bn_statistics:
  reestimated`, and the remedy when the guard fires).

Example:

>>> from riad_tf.model import build_unet
>>> import numpy as np
>>> net = build_unet((32, 32, 1), widths=(4, 8, 8, 16, 16))
>>> batches = [np.random.default_rng(i).random((4, 32, 32, 1), dtype=np.float32) for i in range(3)]
>>> reestimate_statistics(net, batches, lambda batch: net(batch, training=True))
3
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterable

import keras
import numpy as np

from edge.errors import TrainingError

# The guard fires when the inference-mode loss exceeds the training-mode loss
# on the same images and masks by this factor. A healthy model stays near 1
# (measured 0.95-1.2 on magnetic tile, docs/accuracy.md); the lagging
# statistics of issue #13 gave about 6.
DIVERGENCE_RATIO = 1.5


class BatchNormDivergenceError(TrainingError):
    """The trained model's inference-mode loss stays far above its training-mode loss."""


def batchnorm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    """Every batch-norm layer of `model` (a functional model such as the RIAD U-Net)."""
    return [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]


def _statistic_variables(model: keras.Model) -> list:
    return [v for layer in batchnorm_layers(model) for v in (layer.moving_mean, layer.moving_variance)]


def moving_statistics(model: keras.Model) -> list[np.ndarray]:
    """A copy of every batch-norm layer's moving mean and variance (for `set_moving_statistics`)."""
    return [v.numpy() for v in _statistic_variables(model)]


def set_moving_statistics(model: keras.Model, values: list[np.ndarray]) -> None:
    """Puts back what `moving_statistics` copied."""
    for variable, value in zip(_statistic_variables(model), values, strict=True):
        variable.assign(value)


@contextlib.contextmanager
def frozen_statistics(model: keras.Model):
    """Restores every batch-norm moving mean and variance on exit.

    Inside, calls with `training=True` use batch statistics as training does,
    and whatever they write into the moving statistics is undone afterwards.
    """
    saved = moving_statistics(model)
    try:
        yield
    finally:
        set_moving_statistics(model, saved)


def statistics_diverged(inference_loss: float, training_mode_loss: float, ratio: float = DIVERGENCE_RATIO) -> bool:
    """The guard's rule: inference mode is off when its loss exceeds `ratio` x the training-mode loss.

    Example:

    >>> statistics_diverged(0.854, 0.146), statistics_diverged(0.15, 0.146)
    (True, False)
    """
    return inference_loss > ratio * training_mode_loss


def reestimate_statistics(model: keras.Model, batches: Iterable, forward: Callable) -> int:
    """Sets every batch-norm layer's moving statistics to their average over `batches`.

    Each batch goes through `forward(batch)`, which must call `model` with
    `training=True` on what training feeds it (for RIAD: the masked copies).
    The momentum of batch `i` is `i / (i + 1)`, so the moving statistics end
    as the plain mean of the per-batch statistics. Runs eagerly: momentum is
    read at call time.

    Args:
        model: the network whose batch-norm layers are re-estimated.
        batches: the inputs, each passed to `forward`.
        forward: runs the model in training mode on one batch.

    Returns:
        The number of batches used.
    """
    layers = batchnorm_layers(model)
    momenta = [layer.momentum for layer in layers]
    count = 0
    try:
        for count, batch in enumerate(batches, start=1):
            for layer in layers:
                layer.momentum = (count - 1) / count  # the first batch replaces the old statistics
            forward(batch)
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    return count
