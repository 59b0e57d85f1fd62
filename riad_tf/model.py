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

from riad_tf.config import KERNEL_INITS

# Batch norm keeps moving statistics with PyTorch's defaults, not Keras's
# (momentum 0.99, epsilon 1e-3). With 0.99 the statistics average over the last
# ~100 steps; a real category trains ~25 steps per epoch with fast-changing
# weights, so they lagged far behind and the inference-mode model (every score,
# threshold and export) was worse than chance on real data. 0.9 follows the
# weights within ~10 steps (issue #13; docs/accuracy.md).
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

# How the convolution kernels start (config `kernel_init`). Under batch norm a
# kernel's scale sets how large each Adam step is relative to it, so the two
# train differently at the same rate (docs/accuracy.md):
# - "glorot": Keras's default, uniform in +-sqrt(6 / (fan_in + fan_out));
# - "pytorch": PyTorch's default for convolutions, uniform in +-1/sqrt(fan_in),
#   about 1.7x smaller for the 3 x 3 convolutions here.
# The choices are riad_tf.config.KERNEL_INITS.


def kernel_initializer(kernel_init: str) -> keras.initializers.Initializer:
    """A fresh initializer for one layer's kernel: `kernel_init` is one of `KERNEL_INITS`."""
    if kernel_init == "glorot":
        return keras.initializers.GlorotUniform()
    if kernel_init == "pytorch":
        return keras.initializers.VarianceScaling(1 / 3, "fan_in", "uniform")  # limit sqrt(3 * 1/3 / fan_in)
    raise ValueError(f"kernel_init must be one of {', '.join(KERNEL_INITS)}; got {kernel_init!r}")


def _conv_bn_relu(x, filters: int, kernel_size: int, strides: int, name: str, init: str):
    x = layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        use_bias=False,
        kernel_initializer=kernel_initializer(init),
        name=f"{name}_conv",
    )(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _encoder_block(x, filters: int, downsample: bool, name: str, init: str):
    if downsample:
        x = _conv_bn_relu(x, filters, 4, 2, f"{name}_a", init)
    else:
        x = _conv_bn_relu(x, filters, 3, 1, f"{name}_a", init)
    return _conv_bn_relu(x, filters, 3, 1, f"{name}_b", init)


def _decoder_block(x, skip, filters: int, name: str, init: str):
    x = layers.Conv2DTranspose(
        filters, 4, strides=2, padding="same", kernel_initializer=kernel_initializer(init), name=f"{name}_up"
    )(x)
    if skip is not None:
        x = layers.Concatenate(name=f"{name}_skip")([x, skip])
    x = _conv_bn_relu(x, filters, 3, 1, f"{name}_a", init)
    return _conv_bn_relu(x, filters, 3, 1, f"{name}_b", init)


def build_unet(
    input_shape: Sequence[int] = (256, 256, 3),
    widths: Sequence[int] = (64, 128, 256, 512, 512),
    skip_connections: bool = True,
    name: str = "riad_unet",
    kernel_init: str = "glorot",
) -> keras.Model:
    """Builds the RIAD inpainting network (Fig. 4).

    Args:
        input_shape: (height, width, channels); height and width divisible by 16.
            Height and width may be None for a size-agnostic model.
        widths: channels of the five encoder levels, finest first.
        skip_connections: False removes every encoder-decoder skip (RIAD_ns).
        name: model name.
        kernel_init: how the convolution kernels start, "glorot" (Keras's
            default) or "pytorch" (PyTorch's); see `KERNEL_INITS`.

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
    kernel_initializer(kernel_init)  # a bad name fails before any layer is built
    height, width, channels = input_shape
    for size in (height, width):
        if size is not None and size % 16:
            raise ValueError(f"input size {height}x{width} must be divisible by 16")

    inputs = keras.Input(shape=tuple(input_shape), name="masked_image")
    x = inputs
    features = []
    for level, filters in enumerate(widths):
        x = _encoder_block(x, filters, downsample=level > 0, name=f"enc{level + 1}", init=kernel_init)
        features.append(x)
    for level in range(len(widths) - 2, -1, -1):
        skip = features[level] if skip_connections else None
        x = _decoder_block(x, skip, widths[level], name=f"dec{level + 1}", init=kernel_init)
    x = layers.Conv2D(channels, 3, padding="same", kernel_initializer=kernel_initializer(kernel_init), name="out_conv")(
        x
    )
    # The sigmoid runs in float32 even under a mixed-precision policy.
    outputs = layers.Activation("sigmoid", dtype="float32", name="reconstruction")(x)
    return keras.Model(inputs, outputs, name=name)
