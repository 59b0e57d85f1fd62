"""TFLite: SavedModel -> `.tflite` in fp32, fp16 or int8 (dynamic range or a full-integer U-Net)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from riad_tf.export.errors import ExportError
from riad_tf.export.graph import serving_fn, unet_scope


def convert_tflite(detector, spec, precision: str, calibration, bare_unet: bool) -> tuple[bytes, str]:
    """Converts the detector (or its U-Net) to TFLite.

    Args:
        detector: a built `riad_tf.detector.Detector`.
        spec: the input (`riad_tf.export.graph.input_spec`).
        precision: "fp32", "fp16", "int8" or "int16x8" (a bare U-Net only).
        calibration: what the model takes during int8 calibration (images, or
            masked copies for a bare U-Net); None gives dynamic-range int8.
        bare_unet: convert only the U-Net.

    Returns:
        (model bytes, one line saying what was quantized).

    Raises:
        ExportError: the converter failed.
    """
    with tempfile.TemporaryDirectory(prefix="riad-export-") as tmp:
        saved = _saved_model(detector, spec, bare_unet, Path(tmp) / "saved_model")

        def converter():
            return tf.lite.TFLiteConverter.from_saved_model(str(saved))

        try:
            if precision == "fp32":
                return converter().convert(), "none: float32"
            if precision == "fp16":
                fp16 = converter()
                fp16.optimizations = [tf.lite.Optimize.DEFAULT]
                fp16.target_spec.supported_types = [tf.float16]
                return fp16.convert(), "float16 weights; float32 compute on CPU"
            if precision == "int16x8":
                return _int16x8_unet(converter(), spec, calibration)
            if calibration is None:
                dynamic = converter()
                dynamic.optimizations = [tf.lite.Optimize.DEFAULT]
                return dynamic.convert(), "dynamic-range int8: int8 weights, float32 activations"
            return _full_integer_unet(converter, detector.unet.name, spec, calibration, bare_unet)
        except ExportError:
            raise
        except Exception as err:  # the converter raises many types; report one line
            message = str(err).splitlines()[0] if str(err) else repr(err)
            raise ExportError(f"TFLite conversion failed: {message}") from err


def _saved_model(detector, spec: tf.TensorSpec, bare_unet: bool, directory: Path) -> Path:
    """A SavedModel with one `serving_default` signature (Keras 3's ExportArchive freezes cleanly)."""
    archive = keras.export.ExportArchive()
    archive.track(detector.unet if bare_unet else detector)
    archive.add_endpoint("serving_default", serving_fn(detector, spec, bare_unet), input_signature=[spec])
    archive.write_out(str(directory), verbose=False)
    return directory


def _representative_dataset(images: np.ndarray, spec: tf.TensorSpec):
    """The converter's calibration data: a generator of model batches (repeating images to fill one)."""
    batch = spec.shape[0] or 1
    if len(images) < batch:
        images = np.resize(images, (batch, *images.shape[1:]))

    def generate():
        for start in range(0, len(images) - batch + 1, batch):
            yield [images[start : start + batch]]

    return generate


def _int16x8_unet(quantizing, spec, calibration) -> tuple[bytes, str]:
    """The bare U-Net with int16 activations and int8 weights (TFLite's 16x8 mode), float32 input and output.

    16-bit activations keep the resolution that a per-tensor 8-bit range loses
    on dense outputs (TFLite documents the mode for denoising and
    super-resolution models); the U-Net's concatenations no longer force their
    inputs onto one coarse 8-bit scale.
    """
    quantizing.optimizations = [tf.lite.Optimize.DEFAULT]
    quantizing.representative_dataset = _representative_dataset(calibration, spec)
    quantizing.target_spec.supported_ops = [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
    line = f"16x8 U-Net: int16 activations, int8 weights, calibrated on {len(calibration)} masked copies"
    return quantizing.convert(), line


def _tflite_tensor_names(model: bytes) -> list[tuple[str, list[str]]]:
    """(op name, output tensor names) of every op of a TFLite model."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model)
    names = {t["index"]: t["name"] for t in interpreter.get_tensor_details()}
    return [(op["op_name"], [names[i] for i in op["outputs"]]) for op in interpreter._get_ops_details()]


def _full_integer_unet(converter, unet_name: str, spec, calibration, bare_unet: bool) -> tuple[bytes, str]:
    """int8 U-Net, calibrated; for the whole graph every op outside the U-Net stays float32.

    The whole graph uses TFLite's selective quantization: the float model's ops
    outside the U-Net's name scope are denylisted in the QuantizationDebugger.

    Args:
        converter: a function returning a fresh `TFLiteConverter` of the float model.
        unet_name: the Keras name of the U-Net.
        spec: the input.
        calibration: what the model takes during calibration.
        bare_unet: the model is the bare U-Net (quantized whole).

    Returns:
        (model bytes, one line saying what was quantized).
    """
    quantizing = converter()
    quantizing.optimizations = [tf.lite.Optimize.DEFAULT]
    quantizing.representative_dataset = _representative_dataset(calibration, spec)
    count = f"calibrated on {len(calibration)} {'masked copies' if bare_unet else 'images'}"
    if bare_unet:
        return quantizing.convert(), f"full-integer int8 U-Net (float32 input/output), {count}"
    ops = _tflite_tensor_names(converter().convert())
    scope = unet_scope((name for _, outputs in ops for name in outputs), unet_name)
    if scope is None:
        raise ExportError(f"int8: cannot find the U-Net's layers ({unet_name}) in the converted graph")
    float_nodes = [name for _, outputs in ops for name in outputs if not name.startswith(scope)]
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=quantizing,
        debug_dataset=_representative_dataset(calibration, spec),
        debug_options=tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=float_nodes),
    )
    quantization = f"int8 U-Net (full-integer), {count}; masking, assembly (Eq. 2) and scoring (Eq. 3-10) float32"
    return debugger.get_nondebug_quantized_model(), quantization
