"""The exported graph: its input, its computation and where the U-Net sits in it.

Every format is traced from the same serving function (`serving_fn`), so the
TFLite, ONNX and TensorRT models take and return the same named tensors.
"""

from __future__ import annotations

import re

import tensorflow as tf

DETECTOR_OUTPUTS = ("maps", "scores")
UNET_OUTPUTS = ("reconstruction",)
INPUT_NAME = "images"


def input_spec(config, batch, uint8_input: bool, bare_unet: bool) -> tf.TensorSpec:
    """The exported model's input.

    Args:
        config: the detector's `RiadConfig`.
        batch: images per call, or None for a dynamic batch.
        uint8_input: take uint8 0-255 instead of float32 in [0, 1].
        bare_unet: a bare U-Net takes the masked copies: batch x n x |K| of them.

    Returns:
        A `tf.TensorSpec` named `INPUT_NAME`.
    """
    if bare_unet and batch is not None:
        batch = batch * len(config.ks) * config.n if config.inpainting else batch
    dtype = tf.uint8 if uint8_input else tf.float32
    return tf.TensorSpec([batch, *config.input_shape], dtype, name=INPUT_NAME)


def serving_fn(detector, spec: tf.TensorSpec, bare_unet: bool):
    """The exported computation: uint8 -> [0, 1] in-graph, then the detector (or its U-Net).

    Args:
        detector: a built `riad_tf.detector.Detector`.
        spec: the input (`input_spec`).
        bare_unet: run only the U-Net.

    Returns:
        A function of the images that returns `{output name: tensor}`.
    """

    def serve(images):
        if spec.dtype == tf.uint8:
            images = tf.cast(images, tf.float32) / 255.0
        if bare_unet:
            return {UNET_OUTPUTS[0]: tf.cast(detector.unet(images, training=False), tf.float32)}
        maps, scores = detector(images)
        return dict(zip(DETECTOR_OUTPUTS, (maps, scores)))

    return serve


def unet_scope(names, unet_name: str) -> str | None:
    """The name-scope prefix of the U-Net's nodes in a converted graph (e.g. `riad_detector_1/riad_unet_1/`).

    Args:
        names: node (or tensor) names of the converted graph.
        unet_name: the Keras name of the U-Net.

    Returns:
        The prefix, or None when no name is under the U-Net.
    """
    pattern = re.compile(rf"^(.*?(?:^|/){re.escape(unet_name)}(?:_\d+)?/)")
    for node_name in names:
        match = pattern.match(node_name)
        if match:
            return match.group(1)
    return None
