"""An independent numpy reading of METHOD.md, used only by the tests to check the TensorFlow code."""

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

C = 0.0026


def grey(x):
    return x.mean(axis=-1)


def correlate_same(img, kernel):
    """2-D cross-correlation with zero padding, output the size of img. img (B, H, W)."""
    kh, kw = kernel.shape
    padded = np.pad(img, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2)))
    out = np.zeros_like(img)
    for i in range(kh):
        for j in range(kw):
            out += kernel[i, j] * padded[:, i : i + img.shape[1], j : j + img.shape[2]]
    return out


def gradient(img):
    hx = np.array([[1, 0, -1]] * 3, np.float64) / 3
    return np.sqrt(correlate_same(img, hx) ** 2 + correlate_same(img, hx.T) ** 2)


def gms(x, y):
    """x, y: (B, H, W) grey."""
    gx, gy = gradient(x), gradient(y)
    return (2 * gx * gy + C) / (gx**2 + gy**2 + C)


def pool2(img):
    b, h, w = img.shape
    return img[:, : h // 2 * 2, : w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2).mean(axis=(2, 4))


def resize_bilinear(img, out_h, out_w):
    """Half-pixel-centre bilinear resize of (B, h, w)."""

    def axis_weights(n_in, n_out):
        src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, src - lo

    r0, r1, fr = axis_weights(img.shape[1], out_h)
    c0, c1, fc = axis_weights(img.shape[2], out_w)
    rows = img[:, r0] * (1 - fr)[None, :, None] + img[:, r1] * fr[None, :, None]
    return rows[:, :, c0] * (1 - fc) + rows[:, :, c1] * fc


def msgms(x, y, scales=4):
    gx, gy = grey(x), grey(y)
    h, w = gx.shape[1:]
    total = np.zeros_like(gx)
    for _ in range(scales):
        total += resize_bilinear(gms(gx, gy), h, w)
        gx, gy = pool2(gx), pool2(gy)
    return total / scales


def msgms_loss(x, y, scales=4):
    gx, gy = grey(x), grey(y)
    per_scale = []
    for _ in range(scales):
        per_scale.append((1 - gms(gx, gy)).mean(axis=(1, 2)))
        gx, gy = pool2(gx), pool2(gy)
    return np.mean(per_scale, axis=0)


def mean_filter(maps, size):
    """Mean over the in-image pixels of each size x size window (padding not counted)."""
    pad = size // 2
    sums = sliding_window_view(np.pad(maps, ((0, 0), (pad, pad), (pad, pad))), (size, size), axis=(1, 2)).sum(
        axis=(-2, -1)
    )
    ones = np.pad(np.ones(maps.shape[1:]), pad)
    counts = sliding_window_view(ones, (size, size)).sum(axis=(-2, -1))
    return sums / counts


def anomaly_map(images, reconstructions, smoothing):
    maps = np.mean([1 - mean_filter(msgms(images, r), smoothing) for r in reconstructions], axis=0)
    return maps, maps.max(axis=(1, 2))


def assemble(outputs, masks):
    """Eq. 2: outputs (n, H, W, C) for one image, masks (n, H, W, 1)."""
    return ((1 - masks) * outputs).sum(axis=0)


def ssim_mean(x, y):
    """Mean SSIM per image: 11 x 11 Gaussian (sigma 1.5), per channel, valid region (Wang et al. 2004)."""
    coords = np.arange(11) - 5.0
    g = np.exp(-(coords**2) / (2 * 1.5**2))
    window = np.outer(g, g) / np.outer(g, g).sum()

    def blur(t):  # (B, H, W, C) -> valid region
        views = sliding_window_view(t, (11, 11), axis=(1, 2))  # (B, H-10, W-10, C, 11, 11)
        return (views * window).sum(axis=(-2, -1))

    x, y = x.astype(np.float64), y.astype(np.float64)
    c1, c2 = 0.01**2, 0.03**2
    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    ssim = (2 * mx * my + c1) * (2 * sxy + c2) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return ssim.mean(axis=(1, 2, 3))
