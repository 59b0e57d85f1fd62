"""Reconstruction by inpainting (Algorithm 1, Eq. 2).

Each masked copy I_i = M_Si * I goes through the network; each output keeps only
the cells it had to inpaint, and the pieces add up to the reconstruction:

    I_r = sum_i (1 - M_Si) * f(M_Si * I)        (Eq. 2)

All n copies go through the network as one batch, or, as the public PyTorch
recipe trains, one network call per mask (batch-norm statistics per copy).
"""

from __future__ import annotations

import tensorflow as tf


def _batched(masks):
    """`(n, H, W, 1)` masks shared by all images -> `(1, n, H, W, 1)`; `(B, n, H, W, 1)` unchanged."""
    masks = tf.cast(tf.convert_to_tensor(masks), tf.float32)
    return masks[None] if masks.shape.rank == 4 else masks


def mask_images(images, masks):
    """All masked copies I_i = M_Si * I, image-major: `(B * n, H, W, C)`.

    Args:
        images: `(B, H, W, C)`.
        masks: `(n, H, W, 1)` shared by all images, or `(B, n, H, W, 1)`.
    """
    images = tf.cast(tf.convert_to_tensor(images), tf.float32)
    masked = images[:, None] * _batched(masks)  # (B, n, H, W, C)
    return tf.reshape(masked, tf.concat([[-1], tf.shape(images)[1:]], axis=0))


def assemble(outputs, masks):
    """Eq. 2 on network outputs `(B * n, H, W, C)` for masks `(n, H, W, 1)` or `(B, n, H, W, 1)`."""
    masks = _batched(masks)
    n = tf.shape(masks)[1]
    shape = tf.shape(outputs)
    outputs = tf.reshape(outputs, tf.concat([[-1, n], shape[1:]], axis=0))
    return tf.reduce_sum((1.0 - masks) * outputs, axis=1)


def reconstruct(model, images, masks, training: bool = False):
    """Reconstructs `images` by inpainting the cells removed by each mask (Eq. 2).

    Args:
        model: the inpainting network, `(N, H, W, C) -> (N, H, W, C)`.
        images: `(B, H, W, C)` in [0, 1].
        masks: `(n, H, W, 1)` shared by all images, or `(B, n, H, W, 1)`.
        training: passed to the model (batch-norm mode). All B * n masked
            copies go through it as one batch.

    Returns:
        `(B, H, W, C)` float32 reconstructions.

    Example:

    >>> from riad_tf.masks import grid_masks
    >>> from riad_tf.model import build_unet
    >>> net = build_unet((32, 32, 3), widths=(4, 8, 8, 16, 16))
    >>> reconstruct(net, tf.zeros((2, 32, 32, 3)), grid_masks(32, 32, 4, seed=0)).shape
    TensorShape([2, 32, 32, 3])
    """
    outputs = model(mask_images(images, masks), training=training)
    return assemble(tf.cast(outputs, tf.float32), masks)
