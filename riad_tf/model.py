"""The inpainting U-Net (Sec. 3.2, Fig. 4).

Encoder of five blocks: the first at full resolution, each later one halving
the resolution with a 4 x 4 stride-2 convolution; every block is
conv + BN + ReLU then 3 x 3 conv + BN + ReLU. The decoder mirrors it: a 4 x 4
stride-2 transposed convolution, concatenation with the encoder feature of the
same resolution (the skip connection), and two 3 x 3 conv + BN + ReLU. A final
3 x 3 convolution to C channels and a sigmoid keep outputs in [0, 1].
About 29 M parameters at the default widths (64, 128, 256, 512, 512).
"""

from __future__ import annotations

from typing import Sequence

import keras
from keras import layers

# Batch norm keeps moving statistics with PyTorch's defaults, not Keras's
# (momentum 0.99, epsilon 1e-3). With 0.99 the statistics average over the last
# ~100 steps; a real category trains ~25 steps per epoch with fast-changing
# weights, so they lagged far behind and the inference-mode model (every score,
# threshold and export) was worse than chance on real data. 0.9 follows the
# weights within ~10 steps (issue #13; docs/accuracy.md).
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def _conv_bn_relu(x, filters: int, kernel_size: int, strides: int, name: str):
    x = layers.Conv2D(filters, kernel_size, strides=strides, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _encoder_block(x, filters: int, downsample: bool, name: str):
    if downsample:
        x = _conv_bn_relu(x, filters, 4, 2, f"{name}_a")
    else:
        x = _conv_bn_relu(x, filters, 3, 1, f"{name}_a")
    return _conv_bn_relu(x, filters, 3, 1, f"{name}_b")


def _decoder_block(x, skip, filters: int, name: str):
    x = layers.Conv2DTranspose(filters, 4, strides=2, padding="same", name=f"{name}_up")(x)
    if skip is not None:
        x = layers.Concatenate(name=f"{name}_skip")([x, skip])
    x = _conv_bn_relu(x, filters, 3, 1, f"{name}_a")
    return _conv_bn_relu(x, filters, 3, 1, f"{name}_b")


def build_unet(
    input_shape: Sequence[int] = (256, 256, 3),
    widths: Sequence[int] = (64, 128, 256, 512, 512),
    skip_connections: bool = True,
    name: str = "riad_unet",
) -> keras.Model:
    """Builds the RIAD inpainting network (Fig. 4).

    Args:
        input_shape: (height, width, channels); height and width divisible by 16.
            Height and width may be None for a size-agnostic model.
        widths: channels of the five encoder levels, finest first.
        skip_connections: False removes every encoder-decoder skip (RIAD_ns).
        name: model name.

    Returns:
        A functional `keras.Model` mapping `(B, H, W, C)` in [0, 1] to a
        reconstruction of the same shape in [0, 1] (sigmoid output).

    Example:

    >>> net = build_unet((32, 32, 3), widths=(4, 8, 8, 16, 16))
    >>> net.output_shape
    (None, 32, 32, 3)
    """
    widths = tuple(int(w) for w in widths)
    if len(widths) != 5:
        raise ValueError(f"widths must list 5 levels, got {widths}")
    height, width, channels = input_shape
    for size in (height, width):
        if size is not None and size % 16:
            raise ValueError(f"input size {height}x{width} must be divisible by 16")

    inputs = keras.Input(shape=tuple(input_shape), name="masked_image")
    x = inputs
    features = []
    for level, filters in enumerate(widths):
        x = _encoder_block(x, filters, downsample=level > 0, name=f"enc{level + 1}")
        features.append(x)
    for level in range(len(widths) - 2, -1, -1):
        skip = features[level] if skip_connections else None
        x = _decoder_block(x, skip, widths[level], name=f"dec{level + 1}")
    x = layers.Conv2D(channels, 3, padding="same", name="out_conv")(x)
    # The sigmoid runs in float32 even under a mixed-precision policy.
    outputs = layers.Activation("sigmoid", dtype="float32", name="reconstruction")(x)
    return keras.Model(inputs, outputs, name=name)
