"""What RIAD costs, and what the machine can do: FLOPs of the U-Net and the machine's peak.

- `unet_flops` counts FLOPs analytically from the Keras layers of a built U-Net
  (2 x multiply-accumulates of every Conv2D, Conv2DTranspose and Dense; batch
  norm, activations, masking and scoring are elementwise and left out, a few
  per cent at most); `graph_flops` checks it against TensorFlow's profiler on
  the frozen graph of one pass (which also counts the elementwise ops);
  `riad_flops` multiplies by the n x |K| passes of Algorithm 3.
- `machine_peak`: dense matmul GFLOP/s, float32 as the best of `tf.matmul` and
  numpy's BLAS, bfloat16 from `tf.matmul`.

`riad_tf.benchmark` sets achieved speeds against both.

Example:

>>> from riad_tf.config import RiadConfig
>>> from riad_tf.model import build_unet
>>> cfg = RiadConfig(image_size=(32, 32), widths=(4, 8, 8, 16, 16), ks=(2, 4))
>>> riad_flops(cfg, build_unet(cfg.input_shape, cfg.unet_widths))["passes_per_image"]
6
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from edge.bench import timed_calls as timings
from riad_tf.config import RiadConfig
from riad_tf.model import build_unet


def layer_flops(layer) -> int:
    """FLOPs (2 x multiply-accumulates) of one call of a Conv2D, Conv2DTranspose or Dense layer on one input.

    Conv2D: 2 x H_out x W_out x C_out x (kh x kw x C_in).
    Conv2DTranspose: every input pixel scatters a kh x kw x C_out patch,
    2 x H_in x W_in x C_in x kh x kw x C_out (padding crops outputs, not work).
    Dense: 2 x inputs x units per position. Bias adds are not counted. Other layers: 0.
    """
    if isinstance(layer, keras.layers.Conv2DTranspose):
        _, height, width, channels_in = layer.input.shape
        kh, kw = layer.kernel_size
        return 2 * height * width * channels_in * kh * kw * layer.filters
    if isinstance(layer, keras.layers.Conv2D):
        _, height, width, channels_in = layer.input.shape
        _, out_h, out_w, _ = layer.output.shape
        kh, kw = layer.kernel_size
        return 2 * out_h * out_w * layer.filters * kh * kw * channels_in // layer.groups
    if isinstance(layer, keras.layers.Dense):
        positions = int(np.prod(layer.input.shape[1:-1] or [1]))
        return 2 * positions * layer.input.shape[-1] * layer.units
    return 0


def unet_flops(unet: keras.Model) -> int:
    """FLOPs of one forward pass of a functional model on one input, summed over its layers (`layer_flops`).

    Example:

    >>> unet_flops(build_unet((32, 32, 3), widths=(4, 8, 8, 16, 16))) > 0
    True
    """
    total = 0
    for layer in unet.layers:
        if isinstance(layer, keras.Model):
            total += unet_flops(layer)
        else:
            total += layer_flops(layer)
    return int(total)


def graph_flops(model: keras.Model) -> int:
    """FLOPs of one forward pass on one input, from TensorFlow's profiler on the frozen inference graph.

    Counts every op the profiler knows (convolutions, and also batch norm, bias
    adds and activations), so it is a little above `unet_flops`.
    """
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    spec = tf.TensorSpec([1, *model.input_shape[1:]], tf.float32)
    function = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    graph = convert_variables_to_constants_v2(function).graph
    return int(tf.compat.v1.profiler.profile(graph=graph, options=options).total_float_ops)


def riad_flops(config: RiadConfig, unet: keras.Model | None = None, profile: bool = False) -> dict:
    """FLOPs of RIAD for a config: per U-Net pass, per image at inference and in training.

    Inference runs n x |K| passes per image (Algorithm 3); a training step runs n
    passes per image (Algorithm 2), and forward + backward is counted as 3 x forward.

    Args:
        profile: also count one pass with `graph_flops` ("graph_per_pass").

    Returns:
        `{"per_pass", "passes_per_image", "per_image", "train_per_image", "method"}`
        (+ "graph_per_pass").
    """
    unet = unet or build_unet(config.input_shape, config.unet_widths, config.skip_connections)
    per_pass = unet_flops(unet)
    passes = len(config.ks) * config.n if config.inpainting else 1
    train_passes = config.n if config.inpainting else 1
    return {
        "per_pass": per_pass,
        "passes_per_image": passes,
        "per_image": per_pass * passes,
        "train_per_image": 3 * per_pass * train_passes,
        "method": "analytic: 2 x MACs of Conv2D/Conv2DTranspose/Dense layers (elementwise ops not counted); training = 3 x forward",
        **({"graph_per_pass": graph_flops(unet)} if profile else {}),
    }


def matmul_peak(dtype: str = "float32", size: int = 2048, iters: int = 10, warmup: int = 2) -> float:
    """Dense square matmul GFLOP/s (2 x size^3 per product) on TensorFlow's threads.

    Example:

    >>> matmul_peak("float32", size=256, iters=2) > 0
    True
    """
    a = tf.random.stateless_uniform((size, size), seed=(0, 1), dtype=tf.float32)
    b = tf.random.stateless_uniform((size, size), seed=(0, 2), dtype=tf.float32)
    a, b = tf.cast(a, dtype), tf.cast(b, dtype)

    @tf.function
    def product(x, y):
        return tf.reduce_sum(tf.cast(tf.matmul(x, y)[:1, :1], tf.float32))

    seconds = timings(lambda: product(a, b).numpy(), warmup, iters)
    return round(2 * size**3 / float(np.median(seconds)) / 1e9, 1)


def blas_peak(size: int = 2048, iters: int = 10, warmup: int = 2, threads: int | None = None) -> float:
    """Dense float32 square matmul GFLOP/s of numpy's BLAS (OpenBLAS in the PyPI wheels).

    A second view of the machine's limit: on some CPUs the BLAS beats
    TensorFlow's own kernels, and the peak should be what the hardware can do.
    `threads` limits the BLAS like the measured paths (None: all cores).
    """
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    a, b = rng.random((size, size), dtype=np.float32), rng.random((size, size), dtype=np.float32)
    with threadpool_limits(limits=threads, user_api="blas"):
        seconds = timings(lambda: a @ b, warmup, iters)
    return round(2 * size**3 / float(np.median(seconds)) / 1e9, 1)


def machine_peak(size: int = 2048, threads: int | None = None) -> dict:
    """The float32 peak (the best of `tf.matmul` and numpy's BLAS) and the bfloat16 `tf.matmul` peak."""
    tf_fp32, blas = matmul_peak("float32", size), blas_peak(size, threads=threads)
    return {
        "float32": max(tf_fp32, blas),
        "tf_float32": tf_fp32,
        "blas_float32": blas,
        "bfloat16": matmul_peak("bfloat16", size),
        "size": size,
    }
