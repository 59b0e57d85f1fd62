"""Anomaly maps and scores in numpy: the device's copy of RIAD's scoring (Sec. 3.4).

Used when only the bare U-Net is exported. Every convention is docs/method.md's, so
these maps equal `riad_tf.scoring.anomaly_map` (TensorFlow) to float rounding:

- GMS on the grey image (channel mean), Prewitt kernels / 3 applied as
  cross-correlation with zero padding (Eq. 3-4), c = 0.0026;
- MSGMS: 4 scales, each a 2 x 2 average pool of the previous; every GMS map is
  upsampled bilinearly with half-pixel centres (tf.image.resize) (Eq. 5);
- G_k = 1 - meanfilter(MSGMS), the filter s_f x s_f, 'SAME', averaging only
  in-image pixels (Eq. 8); G_A = mean over k (Eq. 9); score = max G_A (Eq. 10).

Everything is vectorised over images and region sizes; the image's gradients
are computed once and broadcast against its |K| reconstructions.

Example:

>>> x = np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32)
>>> maps, scores = anomaly_map(x, np.stack([x, x]), smoothing=5)
>>> maps.shape, float(np.abs(scores).max()) < 1e-6
((2, 32, 32), True)
"""

from __future__ import annotations

import numpy as np

GMS_C = 0.0026  # Eq. 4, for intensities in [0, 1]


def grey(images: np.ndarray) -> np.ndarray:
    """Channel mean: `(..., H, W, C)` -> `(..., H, W)` float32."""
    return np.asarray(images, np.float32).mean(axis=-1, dtype=np.float32)


def gradient_magnitude(grey_images: np.ndarray) -> np.ndarray:
    """g(I) = sqrt((I * h_x)^2 + (I * h_y)^2), Prewitt / 3, zero padding (Eq. 3).

    With h_x = [[1, 0, -1]] * 3 / 3 as a cross-correlation, I * h_x at (i, j) is
    (column sum at j-1 - column sum at j+1) / 3 over rows i-1..i+1; h_y = h_x^T.
    """
    pad = [(0, 0)] * (grey_images.ndim - 2) + [(1, 1), (1, 1)]
    p = np.pad(grey_images, pad)
    rows = p[..., :-2, :] + p[..., 1:-1, :] + p[..., 2:, :]  # (.., H, W + 2): sums of rows i-1..i+1
    cols = p[..., :-2] + p[..., 1:-1] + p[..., 2:]  # (.., H + 2, W): sums of columns j-1..j+1
    gx = (rows[..., :-2] - rows[..., 2:]) / np.float32(3.0)
    gy = (cols[..., :-2, :] - cols[..., 2:, :]) / np.float32(3.0)
    # Same floor as the TensorFlow code (it keeps sqrt's gradient finite there).
    return np.sqrt(np.maximum(gx * gx + gy * gy, np.float32(1e-20)))


def gms_map(grey_x: np.ndarray, grey_y: np.ndarray, c: float = GMS_C) -> np.ndarray:
    """GMS = (2 g_x g_y + c) / (g_x^2 + g_y^2 + c) on grey images (Eq. 4); broadcasts."""
    gx, gy = gradient_magnitude(grey_x), gradient_magnitude(grey_y)
    c = np.float32(c)
    return (2.0 * gx * gy + c) / (gx * gx + gy * gy + c)


def average_pool_2x2(maps: np.ndarray) -> np.ndarray:
    """2 x 2 average pooling, stride 2, 'VALID', on the last two axes (one pyramid step)."""
    height, width = maps.shape[-2] // 2, maps.shape[-1] // 2
    cropped = maps[..., : 2 * height, : 2 * width]
    return cropped.reshape(*maps.shape[:-2], height, 2, width, 2).mean(axis=(-3, -1), dtype=np.float32)


def _bilinear_weights(in_size: int, out_size: int) -> np.ndarray:
    """`(out, in)` matrix of tf.image.resize's bilinear, half-pixel-centre weights.

    Source coordinate s = (o + 0.5) * in / out - 0.5; the neighbours are
    max(floor(s), 0) and min(ceil(s), in - 1) with weight s - floor(s).
    """
    src = (np.arange(out_size, dtype=np.float64) + 0.5) * (in_size / out_size) - 0.5
    floor = np.floor(src)
    lower = np.maximum(floor, 0).astype(np.int64)
    upper = np.minimum(np.ceil(src), in_size - 1).astype(np.int64)
    frac = src - floor
    weights = np.zeros((out_size, in_size), np.float64)
    np.add.at(weights, (np.arange(out_size), lower), 1.0 - frac)
    np.add.at(weights, (np.arange(out_size), upper), frac)
    return weights.astype(np.float32)


def resize_bilinear(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of the last two axes with half-pixel centres (tf.image.resize 'bilinear')."""
    rows = _bilinear_weights(maps.shape[-2], size[0])
    cols = _bilinear_weights(maps.shape[-1], size[1])
    return np.einsum("oh,...hw,pw->...op", rows, maps, cols, optimize=True).astype(np.float32)


def msgms_map(grey_x: np.ndarray, grey_y: np.ndarray, scales: int = 4, c: float = GMS_C) -> np.ndarray:
    """Multi-scale GMS at full resolution (Eq. 5): GMS per pyramid level, upsampled, averaged.

    Channel mean and 2 x 2 pooling are both linear, so the pyramid is built on
    the grey images directly. Inputs broadcast (one image against |K| reconstructions).
    """
    size = grey_y.shape[-2:]
    total = gms_map(grey_x, grey_y, c)
    for _ in range(scales - 1):
        grey_x, grey_y = average_pool_2x2(grey_x), average_pool_2x2(grey_y)
        total = total + resize_bilinear(gms_map(grey_x, grey_y, c), size)
    return total / np.float32(scales)


def _window_sums(values: np.ndarray, axis: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Sums over a 'SAME' window along `axis` clipped to the array, and the in-array counts."""
    length = values.shape[axis]
    before = (size - 1) // 2  # TensorFlow's 'SAME': the extra pad of an even size goes after
    idx = np.arange(length)
    start = np.maximum(idx - before, 0)
    stop = np.minimum(idx - before + size, length)
    cumulative = np.cumsum(values, axis=axis, dtype=np.float64)
    zero = np.zeros_like(np.take(cumulative, [0], axis=axis))
    cumulative = np.concatenate([zero, cumulative], axis=axis)
    sums = np.take(cumulative, stop, axis=axis) - np.take(cumulative, start, axis=axis)
    return sums, (stop - start).astype(np.float64)


def mean_filter(maps: np.ndarray, size: int = 21) -> np.ndarray:
    """s_f x s_f mean filter on the last two axes, stride 1, 'SAME' (Eq. 8).

    Near the border only in-image pixels are averaged (padding is not counted),
    as tf.nn.avg_pool2d 'SAME' and ONNX AveragePool with count_include_pad=0 do.
    Box sums come from cumulative sums, one axis at a time.
    """
    sums, row_counts = _window_sums(maps, maps.ndim - 2, size)
    sums, col_counts = _window_sums(sums, maps.ndim - 1, size)
    return (sums / (row_counts[:, None] * col_counts[None, :])).astype(np.float32)


def _gaussian_blur(values: np.ndarray, size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """Separable Gaussian blur of the last two axes with reflect padding (SSIM's window)."""
    coords = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(coords**2) / (2.0 * sigma**2))
    g = (g / g.sum()).astype(np.float32)
    half = size // 2
    pad = [(0, 0)] * (values.ndim - 2) + [(half, half), (half, half)]
    p = np.pad(values, pad, mode="reflect")
    height, width = values.shape[-2:]
    rows = sum(g[i] * p[..., i : i + height, :] for i in range(size))
    return sum(g[j] * rows[..., j : j + width] for j in range(size))


def ssim_map(grey_x: np.ndarray, grey_y: np.ndarray) -> np.ndarray:
    """Full-resolution SSIM on grey images (the RIAD_SSIM ablation, Table 6).

    tf.image.ssim's constants: 11 x 11 Gaussian window, sigma 1.5, K1 = 0.01,
    K2 = 0.03, max value 1; borders reflect-padded so the map keeps the image size.
    """
    grey_x, grey_y = np.broadcast_arrays(grey_x, grey_y)
    c1, c2 = np.float32(0.01**2), np.float32(0.03**2)
    mx, my = _gaussian_blur(grey_x), _gaussian_blur(grey_y)
    sxx = _gaussian_blur(grey_x * grey_x) - mx * mx
    syy = _gaussian_blur(grey_y * grey_y) - my * my
    sxy = _gaussian_blur(grey_x * grey_y) - mx * my
    return ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))


def anomaly_map(
    images: np.ndarray,
    reconstructions: np.ndarray,
    smoothing: int = 21,
    scales: int = 4,
    c: float = GMS_C,
    score_function: str = "msgms",
) -> tuple[np.ndarray, np.ndarray]:
    """Anomaly maps and image scores (Eq. 8-10).

    Args:
        images: `(B, H, W, C)` float in [0, 1].
        reconstructions: `(|K|, B, H, W, C)`, one reconstruction per region size k.
        smoothing: mean-filter size s_f.
        scales, c: MSGMS pyramid depth and GMS constant.
        score_function: "msgms" (the paper) or "ssim" (RIAD_SSIM).

    Returns:
        `(maps (B, H, W), scores (B,))` float32.
    """
    image_grey = grey(images)[None]  # (1, B, H, W): broadcast against every k
    rec_grey = grey(reconstructions)  # (|K|, B, H, W)
    if score_function == "msgms":
        similarity = msgms_map(image_grey, rec_grey, scales, c)
    elif score_function == "ssim":
        similarity = ssim_map(image_grey, rec_grey)
    else:
        raise ValueError(f"score_function must be 'msgms' or 'ssim', got {score_function!r}")
    # Eq. 8-9: mean_k (1 - f * S_k) = 1 - f * mean_k S_k, since the mean filter f is
    # linear, so one filter pass serves every k.
    maps = 1.0 - mean_filter(similarity.mean(axis=0, dtype=np.float32), smoothing)
    return maps, maps.max(axis=(1, 2))  # Eq. 10
