"""Anomaly maps and image scores (Sec. 3.4, Eq. 8-10).

For each region size k the reconstruction I_r,k is compared with the image:

    G_k = 1 - meanfilter(MSGMS(I, I_r,k))      (Eq. 8)
    G_A = mean over k of G_k                   (Eq. 9)
    score = max(G_A)                           (Eq. 10)

The mean filter is s_f x s_f, stride 1, 'SAME', and averages only pixels inside
the image (padding is not counted), as `tf.nn.avg_pool2d` and ONNX AveragePool
with count_include_pad=0 do.

Example:

>>> import numpy as np
>>> x = np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32)
>>> maps, scores = anomaly_map(x, [x, x], smoothing=5)
>>> maps.shape, float(np.abs(scores).max()) < 1e-6
(TensorShape([2, 32, 32]), True)
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from riad_tf.losses import GMS_C, msgms_map


def mean_filter(maps, size: int = 21):
    """s_f x s_f mean filter on `(B, H, W, 1)` maps; the border averages in-image pixels only."""
    return tf.nn.avg_pool2d(maps, ksize=size, strides=1, padding="SAME")


def _gaussian_window(size: int = 11, sigma: float = 1.5):
    coords = tf.range(size, dtype=tf.float32) - (size - 1) / 2.0
    g = tf.exp(-tf.square(coords) / (2.0 * sigma**2))
    g = g / tf.reduce_sum(g)
    return (g[:, None] * g[None, :])[:, :, None, None]


def ssim_map(x, y, max_val: float = 1.0):
    """Full-resolution SSIM map on the grey image (for the RIAD_SSIM ablation, Table 6).

    Same constants as `tf.image.ssim` (11 x 11 Gaussian, sigma 1.5, K1 = 0.01,
    K2 = 0.03); borders are reflect-padded so the map keeps the image size.
    Unlike the loss L_S (per channel, valid region only, `tf.image.ssim`), this
    map is for localisation, so it covers every pixel.

    Returns:
        `(B, H, W, 1)` float32.
    """
    window = _gaussian_window()
    pad = [[0, 0], [5, 5], [5, 5], [0, 0]]

    def blur(t):
        return tf.nn.conv2d(tf.pad(t, pad, mode="REFLECT"), window, strides=1, padding="VALID")

    x = tf.reduce_mean(tf.cast(x, tf.float32), axis=-1, keepdims=True)
    y = tf.reduce_mean(tf.cast(y, tf.float32), axis=-1, keepdims=True)
    c1, c2 = (0.01 * max_val) ** 2, (0.03 * max_val) ** 2
    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    return ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))


def similarity_map(images, reconstruction, score_function: str = "msgms", scales: int = 4, c: float = GMS_C):
    """The per-pixel similarity that Eq. 8 smooths: MSGMS (the paper) or SSIM (ablation)."""
    if score_function == "msgms":
        return msgms_map(images, reconstruction, scales, c)
    if score_function == "ssim":
        return ssim_map(images, reconstruction)
    raise ValueError(f"score_function must be 'msgms' or 'ssim', got {score_function!r}")


def anomaly_map(
    images,
    reconstructions: Sequence,
    smoothing: int = 21,
    scales: int = 4,
    c: float = GMS_C,
    score_function: str = "msgms",
):
    """Anomaly maps and image scores (Eq. 8-10).

    Args:
        images: `(B, H, W, C)` in [0, 1].
        reconstructions: one reconstruction `(B, H, W, C)` per k in K, as a
            sequence or a stacked `(|K|, B, H, W, C)` tensor.
        smoothing: mean-filter size s_f.
        scales, c: MSGMS pyramid depth and GMS constant.
        score_function: "msgms" or "ssim".

    Returns:
        `(maps, scores)`: maps `(B, H, W)` (G_A, Eq. 9; in [0, 1] for MSGMS,
        in [0, 2] for SSIM, which can be negative), scores `(B,)` (Eq. 10).
    """
    images = tf.cast(tf.convert_to_tensor(images), tf.float32)
    recs = tf.cast(tf.convert_to_tensor(reconstructions), tf.float32)  # (|K|, B, H, W, C)
    num_k = tf.shape(recs)[0]
    # All k at once: the image is repeated for each reconstruction.
    tiled = tf.reshape(tf.tile(images[None], [num_k, 1, 1, 1, 1]), tf.concat([[-1], tf.shape(images)[1:]], 0))
    similarity = similarity_map(tiled, tf.reshape(recs, tf.shape(tiled)), score_function, scales, c)
    similarity = tf.reshape(similarity, tf.concat([[num_k], tf.shape(images)[:3], [1]], 0))
    # Eq. 8-9: mean_k (1 - f * S_k) = 1 - f * mean_k S_k, since the mean filter f is linear,
    # so one filter pass serves every k.
    maps = 1.0 - mean_filter(tf.reduce_mean(similarity, axis=0), smoothing)[..., 0]
    scores = tf.reduce_max(maps, axis=[1, 2])  # Eq. 10
    return maps, scores
