"""Writing an exported model with its metadata (inside it and in `MODEL.json`), and checking it against Keras."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
import tensorflow as tf

from edge.embedded import embed, embedded_payload
from edge.files import atomic_write_bytes
from edge.metadata import ModelMetadata, file_sha256, read_metadata, write_metadata
from riad_tf import __version__
from riad_tf.export.errors import ExportError
from riad_tf.export.graph import DETECTOR_OUTPUTS, INPUT_NAME, UNET_OUTPUTS

FP32_TOLERANCE = 1e-3


def write_model(
    path: Path, model: bytes, precision, quantization, scope, common: dict, key: str | None = None
) -> dict[str, Path]:
    """Writes a model file, with its metadata inside (`edge.embedded`) and beside it, all atomically.

    Args:
        path: the model file; its suffix is the format ("tflite", "onnx").
        model: the model's bytes.
        precision: "fp32", "fp16" or "int8".
        quantization: one line saying what was quantized.
        scope: the U-Net's name-scope prefix in the graph, or None.
        common: the metadata shared by every model of the export: `config`,
            `spec`, `thresholds`, `masks_file`, `bare_unet` and `preprocessing`.
        key: the kind of model in the returned dict; defaults to the format.

    Returns:
        `{key: model path, f"{key}_metadata": metadata path}`.
    """
    model_format = path.suffix[1:]
    key = key or model_format
    metadata = _metadata(path, model_format, precision, quantization, scope, **common)
    atomic_write_bytes(path, embed(model, model_format, embedded_payload(metadata)))
    metadata = dataclasses.replace(metadata, sha256=file_sha256(path))
    return {key: path, f"{key}_metadata": write_metadata(path, metadata)}


def _metadata(
    path: Path,
    model_format,
    precision,
    quantization,
    scope,
    *,
    config,
    spec,
    thresholds,
    masks_file,
    bare_unet,
    preprocessing=None,
) -> ModelMetadata:
    """The model's metadata (`edge.metadata`), its sha256 still to be measured."""
    return ModelMetadata(
        format=model_format,
        graph="unet" if bare_unet else "detector",
        precision=precision,
        quantization=quantization,
        model_file=path.name,
        sha256="",
        input_name=INPUT_NAME,
        input_shape=tuple(spec.shape.as_list()),
        input_dtype=spec.dtype.name,
        output_names=UNET_OUTPUTS if bare_unet else DETECTOR_OUTPUTS,
        config=config.to_dict(),
        thresholds=thresholds,
        masks_file=masks_file.name if masks_file else None,
        masks_sha256=file_sha256(masks_file) if masks_file else None,
        unet_scope=scope,
        preprocessing=preprocessing,
        riad_tf_version=__version__,
    )


def verify_model(path: Path, detector, probe: np.ndarray, precision: str, written: dict) -> None:
    """Runs the exported model on `probe` with the edge runner and compares with the Keras detector.

    The differences are stored in the model's metadata ("verification"). When
    the model's runtime is not installed here, it warns and checks nothing.

    Args:
        path: the exported model (its metadata beside it).
        detector: the Keras detector it was exported from.
        probe: images in the model's input size and dtype.
        precision: the model's precision; only "fp32" is held to `FP32_TOLERANCE`.
        written: the files written so far, for the error.

    Raises:
        ExportError: the model returns NaN/inf, or (fp32) differs from Keras by
            more than `FP32_TOLERANCE`.
    """
    from edge.runner import Runner

    try:
        runner = Runner.open(path)
    except ImportError as err:  # the runtime is not installed here: nothing to check with
        warnings.warn(f"{path.name}: not checked after export ({err})", stacklevel=2)
        return
    maps, scores = runner(probe)
    unit = probe.astype(np.float32) / 255.0 if probe.dtype == np.uint8 else probe
    expected_maps, expected_scores = (t.numpy() for t in detector(tf.constant(unit)))
    if not (np.all(np.isfinite(maps)) and np.all(np.isfinite(scores))):
        raise ExportError(f"{path}: the exported model returns NaN or inf; it is not usable", written)
    diff_maps = float(np.abs(maps - expected_maps).max())
    diff_scores = float(np.abs(scores - expected_scores).max())
    if precision == "fp32" and max(diff_maps, diff_scores) > FP32_TOLERANCE:
        raise ExportError(f"{path}: the exported fp32 model differs from Keras by {diff_maps:.2e} (maps)", written)
    metadata = read_metadata(path)
    verification = {"max_abs_diff_maps": diff_maps, "max_abs_diff_scores": diff_scores, "images": int(len(probe))}
    write_metadata(path, dataclasses.replace(metadata, verification=verification))
