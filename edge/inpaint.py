"""Reconstruction by inpainting in numpy, around a bare U-Net (Algorithm 3, Eq. 1-2).

For every image and every region size k, the n masked copies I_i = M_Si * I go
through the network; each output keeps only the cells it had to inpaint:

    I_r,k = sum_i (1 - M_Si) * f(M_Si * I)        (Eq. 2)

The masks are the fixed inference partitions exported beside the U-Net
(`(|K|, n, H, W, 1)`, 1 = kept), so the device reproduces the training side's
`riad_tf.detector.Detector` exactly. The copies are image-major, then k, then i.

Example:

>>> masks = np.ones((2, 3, 4, 4, 1), np.uint8); masks[:, 0] = 0  # toy masks
>>> copies = masked_copies(np.ones((1, 4, 4, 3), np.float32), masks)
>>> copies.shape
(6, 4, 4, 3)
"""

from __future__ import annotations

import numpy as np


def check_masks(masks: np.ndarray, ks, n: int, image_size, source: str = "masks") -> np.ndarray:
    """Checks inference masks against the config and Eq. 1; returns them as float32.

    Raises:
        ValueError: naming `source` when the shape is wrong or a pixel is not
            removed in exactly one of the n masks.
    """
    expected = (len(ks), n, *image_size, 1)
    if masks.shape != expected:
        raise ValueError(f"{source}: masks have shape {masks.shape}, expected {expected} (|K|, n, H, W, 1)")
    if not np.isin(masks, (0, 1)).all():
        raise ValueError(f"{source}: masks must hold only 0 (removed) and 1 (kept)")
    masks = masks.astype(np.float32)
    if not np.all((1.0 - masks).sum(axis=1) == 1.0):  # Eq. 1
        raise ValueError(f"{source}: not a partition: some pixel is not removed in exactly one mask (Eq. 1)")
    return masks


def masked_copies(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """All masked copies M_Si * I: `(B, H, W, C)` x `(|K|, n, H, W, 1)` -> `(B * |K| * n, H, W, C)`.

    Keeps the images' dtype (uint8 inputs stay uint8: masking only zeroes pixels).
    """
    copies = images[:, None, None] * masks[None].astype(images.dtype)
    return copies.reshape(-1, *images.shape[1:])


def assemble(outputs: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Eq. 2 for network outputs of `masked_copies`: `(B * |K| * n, H, W, C)` -> `(|K|, B, H, W, C)`."""
    num_k, n = masks.shape[:2]
    outputs = outputs.astype(np.float32, copy=False).reshape(-1, num_k, n, *outputs.shape[1:])
    reconstructions = ((1.0 - masks.astype(np.float32))[None] * outputs).sum(axis=2)  # (B, |K|, H, W, C)
    return reconstructions.transpose(1, 0, 2, 3, 4)
