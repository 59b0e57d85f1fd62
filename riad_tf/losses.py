"""Image similarity and the RIAD training loss (Sec. 3.3, Eq. 3-7).

All functions take `(B, H, W, C)` images in [0, 1] as numpy arrays or tensors.
Maps come back as `(B, H, W, 1)`, losses per image as `(B,)`, so each loss is
a Keras loss (`model.compile(loss=riad_loss)`) and reduces correctly under
`tf.distribute`.

Example:

>>> import numpy as np
>>> x = np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32)
>>> float(np.abs(gms_map(x, x) - 1).max()) < 1e-6
True
"""

from __future__ import annotations

import functools

import numpy as np
import tensorflow as tf

GMS_C = 0.0026  # Eq. 4, for intensities in [0, 1]


@functools.cache
def _prewitt_kernels() -> np.ndarray:
    """h_x and h_y of Eq. 3: Prewitt kernels divided by 3 (docs/method.md), as a conv2d filter `(3, 3, 1, 2)`.

    Built on first use, in numpy: a TensorFlow tensor made at import time would
    start TensorFlow's runtime and freeze its thread settings before
    `riad-tf benchmark` sets them. conv2d applies them as cross-correlation.
    """
    h_x = np.array([[1.0, 0.0, -1.0]] * 3, np.float32) / np.float32(3.0)
    kernels = np.stack([h_x, h_x.T], axis=-1)[:, :, None, :]
    kernels.setflags(write=False)  # cached: shared by every call
    return kernels


def _as_float(x):
    return tf.cast(tf.convert_to_tensor(x), tf.float32)


def _grey(images):
    """Channel mean, keeping a channel axis: `(B, H, W, 1)`."""
    return tf.reduce_mean(images, axis=-1, keepdims=True)


def gradient_magnitude(grey):
    """g(I) = sqrt((I * h_x)^2 + (I * h_y)^2) with zero 'SAME' padding (Eq. 3)."""
    grads = tf.nn.conv2d(grey, _prewitt_kernels(), strides=1, padding="SAME")
    squared = tf.reduce_sum(tf.square(grads), axis=-1, keepdims=True)
    # The floor keeps the gradient of sqrt finite on flat regions; it moves g by 1e-10.
    return tf.sqrt(tf.maximum(squared, 1e-20))


def gms_map(x, y, c: float = GMS_C):
    """Gradient magnitude similarity of two images, per pixel (Eq. 4).

    Args:
        x, y: images `(B, H, W, C)`; GMS is computed on their grey (channel mean).
        c: stability constant.

    Returns:
        `(B, H, W, 1)` float32, 1 where the gradients agree.
    """
    gx = gradient_magnitude(_grey(_as_float(x)))
    gy = gradient_magnitude(_grey(_as_float(y)))
    return (2.0 * gx * gy + c) / (tf.square(gx) + tf.square(gy) + c)


def _pyramid(images, scales: int):
    """The image and `scales - 1` successive 2 x 2 average poolings (Eq. 5)."""
    levels = [images]
    for _ in range(scales - 1):
        levels.append(tf.nn.avg_pool2d(levels[-1], ksize=2, strides=2, padding="VALID"))
    return levels


def _gms_pyramid(x, y, scales: int, c: float):
    return [gms_map(xl, yl, c) for xl, yl in zip(_pyramid(_as_float(x), scales), _pyramid(_as_float(y), scales))]


def msgms_map(x, y, scales: int = 4, c: float = GMS_C):
    """Multi-scale GMS map at full resolution (Sec. 3.4).

    GMS at each pyramid level, upsampled bilinearly (half-pixel centres) to
    H x W, averaged per pixel.

    Returns:
        `(B, H, W, 1)` float32.
    """
    levels = _gms_pyramid(x, y, scales, c)
    size = tf.shape(levels[0])[1:3]
    upsampled = [levels[0]] + [tf.image.resize(level, size, method="bilinear") for level in levels[1:]]
    return tf.add_n(upsampled) / float(scales)


def msgms_loss(y_true, y_pred, scales: int = 4, c: float = GMS_C):
    """L_G: mean over scales of the mean of 1 - GMS at that scale (Eq. 5). Shape `(B,)`."""
    levels = _gms_pyramid(y_true, y_pred, scales, c)
    per_scale = [tf.reduce_mean(1.0 - level, axis=[1, 2, 3]) for level in levels]
    return tf.add_n(per_scale) / float(scales)


def ssim_loss(y_true, y_pred):
    """L_S: mean of 1 - SSIM map (Eq. 6), tf.image.ssim's definition. Shape `(B,)`.

    11 x 11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, per channel, the
    mean taken over the valid region (the border of 5 pixels is not covered).
    """
    return 1.0 - tf.image.ssim(_as_float(y_true), _as_float(y_pred), max_val=1.0)


def mse_loss(y_true, y_pred):
    """L_2: mean squared error per image. Shape `(B,)`."""
    return tf.reduce_mean(tf.square(_as_float(y_true) - _as_float(y_pred)), axis=[1, 2, 3])


def riad_loss(y_true, y_pred, lambda_g: float = 1.0, lambda_s: float = 1.0, scales: int = 4, c: float = GMS_C):
    """L = lambda_G L_G + lambda_S L_S + L_2 (Eq. 7), per image `(B,)`.

    Example:

    >>> import numpy as np
    >>> x = np.random.default_rng(0).random((1, 32, 32, 3), dtype=np.float32)
    >>> float(riad_loss(x, x)[0]) < 1e-5
    True
    """
    return (
        lambda_g * msgms_loss(y_true, y_pred, scales, c)
        + lambda_s * ssim_loss(y_true, y_pred)
        + mse_loss(y_true, y_pred)
    )
