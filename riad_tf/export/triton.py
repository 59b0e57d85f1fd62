"""A Triton Inference Server model repository from a training run (`riad-tf export RUN --triton REPO`).

The model is the whole-detector ONNX (float32 weights, dynamic batch) served by
Triton's ONNX Runtime backend:

    REPO/NAME/config.pbtxt        the Triton model configuration
    REPO/NAME/model.onnx.json     the edge metadata (`edge.metadata`): thresholds, config,
                                  input dtype; its model_file is "1/model.onnx"
    REPO/NAME/1/model.onnx        version 1, the only one served

`config.pbtxt` is written from the exported ONNX model itself (input and
output names, element types, per-image dims), so the two cannot disagree.
Triton returns the raw maps and scores; verdicts need the thresholds in the
metadata, applied by the client (docs/triton.md).

Example:

>>> written = export_triton("runs/bottle", "models", model_name="bottle", instance_kind="cpu")  # doctest: +SKIP
>>> written["triton_model"]                                                                    # doctest: +SKIP
PosixPath('models/bottle/1/model.onnx')
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from edge.errors import ConfigError, OutputError, one_line
from edge.files import atomic_write_text, check_writable
from edge.metadata import read_metadata, write_metadata
from riad_tf.export.detector import export_run
from riad_tf.export.errors import ExportError

VERSION = "1"
MODEL_FILE = "model.onnx"
CONFIG_FILE = "config.pbtxt"
PLATFORM = "onnxruntime_onnx"
INSTANCE_KINDS = {"gpu": "KIND_GPU", "cpu": "KIND_CPU"}
# Export options that apply to a Triton model; the rest (formats, batch, bare U-Net, TensorRT) are fixed here.
TRITON_OPTIONS = ("uint8_input", "verify")
# ONNX TensorProto element type -> Triton data type.
_TRITON_TYPES = {1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 6: "TYPE_INT32", 7: "TYPE_INT64", 10: "TYPE_FP16"}
_MODEL_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def export_triton(
    run_dir,
    repository,
    *,
    model_name: str = "riad",
    max_batch: int = 8,
    instance_kind: str = "gpu",
    max_queue_delay_us: int = 1000,
    preferred_batch_sizes: tuple[int, ...] | None = None,
    **options,
) -> dict[str, Path]:
    """Exports a training run as a model of a Triton model repository.

    Re-running into the same repository replaces the model: version 1 is
    swapped whole (the old folder renamed away, the new one renamed in), then
    the metadata and `config.pbtxt` are rewritten atomically. Other models in
    the repository are left alone.

    Args:
        run_dir: the training run.
        repository: the model repository (created).
        model_name: the model's folder and Triton name.
        max_batch: `max_batch_size`: the most images Triton puts in one call.
        instance_kind: "gpu" (KIND_GPU) or "cpu" (KIND_CPU, for servers without a GPU).
        max_queue_delay_us: how long the dynamic batcher may hold a request to fill a batch.
        preferred_batch_sizes: batch sizes the dynamic batcher aims for; None:
            the powers of two from 2 up to `max_batch`, and `max_batch`.
        **options: `uint8_input` (the model takes uint8 0-255) and `verify`
            (check the ONNX against Keras), as in `export_detector`.

    Returns:
        `{"triton_config": ..., "triton_model": ..., "triton_metadata": ...}`: the paths written.

    Raises:
        ConfigError: a bad name, batch, instance kind or option.
        OutputError: the repository cannot be written.
        ExportError, FileNotFoundError: see `export_run`.
    """
    batcher = _check_arguments(model_name, max_batch, instance_kind, max_queue_delay_us, preferred_batch_sizes, options)
    model_dir = _model_folder(repository, model_name)
    # Staged inside the model folder (same file system, so the renames are atomic); Triton ignores
    # folders whose names are not version numbers.
    with tempfile.TemporaryDirectory(dir=model_dir, prefix=".export-") as staging:
        written = export_run(run_dir, staging, record=False, formats=("onnx",), batch=None, name="model", **options)
        exported = written["onnx"]
        config_text = model_config(exported, model_name, max_batch, INSTANCE_KINDS[instance_kind], batcher)
        metadata = read_metadata(exported)
        version = Path(staging) / VERSION
        version.mkdir()
        os.replace(exported, version / MODEL_FILE)  # the version folder holds the model alone
        _replace_version(version, model_dir / VERSION)
    model = model_dir / VERSION / MODEL_FILE
    served = dataclasses.replace(metadata, model_file=f"{VERSION}/{MODEL_FILE}")  # the path from this JSON
    return {
        "triton_model": model,
        "triton_metadata": write_metadata(model_dir / MODEL_FILE, served),
        "triton_config": atomic_write_text(model_dir / CONFIG_FILE, config_text),
    }


def _model_folder(repository, model_name: str) -> Path:
    """The model's folder in the repository, created; `OutputError` when it cannot be written."""
    check_writable(repository)
    model_dir = Path(repository) / model_name
    try:
        model_dir.mkdir(exist_ok=True)
    except OSError as err:
        raise OutputError(f"{model_dir}: cannot make the model folder: {one_line(err)}") from None
    return model_dir


def model_config(onnx_path, model_name: str, max_batch: int, kind: str, batcher: tuple) -> str:
    """The `config.pbtxt` text of an ONNX model with a dynamic first (batch) dimension.

    Args:
        onnx_path: the ONNX model; its inputs and outputs give the names, types and dims.
        model_name: the Triton model name.
        max_batch: `max_batch_size`.
        kind: "KIND_GPU" or "KIND_CPU".
        batcher: (preferred batch sizes, max queue delay in microseconds).

    Returns:
        The configuration (protobuf text format of Triton's `ModelConfig`).

    Raises:
        ExportError: onnx is missing, or a tensor has a fixed batch or a type Triton cannot take.
    """
    try:
        import onnx
    except ImportError as err:
        raise ExportError(f"a Triton model needs onnx ({err}); pip install onnx") from None
    graph = onnx.load(str(onnx_path)).graph
    constants = {tensor.name for tensor in graph.initializer}
    inputs = [_tensor_config(value) for value in graph.input if value.name not in constants]
    outputs = [_tensor_config(value) for value in graph.output]
    preferred, delay = batcher
    lines = [
        f"name: {_quoted(model_name)}",
        f"platform: {_quoted(PLATFORM)}",
        f"max_batch_size: {max_batch}",
        f"version_policy: {{ specific: {{ versions: [ {VERSION} ] }} }}",
        "input [",
        ",\n".join(inputs),
        "]",
        "output [",
        ",\n".join(outputs),
        "]",
        "dynamic_batching {",
        *([f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]"] if preferred else []),
        f"  max_queue_delay_microseconds: {delay}",
        "}",
        "instance_group [",
        "  {",
        "    count: 1",
        f"    kind: {kind}",
        "  }",
        "]",
    ]
    return "\n".join(lines) + "\n"


def _tensor_config(value) -> str:
    """One input or output of `config.pbtxt`: name, type, dims without the batch (a [batch] tensor: dims [1], reshaped)."""
    tensor = value.type.tensor_type
    dims = list(tensor.shape.dim)
    if not dims or dims[0].HasField("dim_value"):
        raise ExportError(f"ONNX tensor {value.name!r}: the first dimension is not a dynamic batch; Triton batches it")
    if tensor.elem_type not in _TRITON_TYPES:
        raise ExportError(f"ONNX tensor {value.name!r}: element type {tensor.elem_type} has no Triton data type here")
    sizes = [dim.dim_value if dim.HasField("dim_value") else -1 for dim in dims[1:]]
    lines = [
        "  {",
        f"    name: {_quoted(value.name)}",
        f"    data_type: {_TRITON_TYPES[tensor.elem_type]}",
        f"    dims: [ {', '.join(map(str, sizes or [1]))} ]",
        *(["    reshape: { shape: [ ] }"] if not sizes else []),
        "  }",
    ]
    return "\n".join(lines)


def _quoted(text: str) -> str:
    """A protobuf text-format string (its escapes for quotes and backslashes are JSON's)."""
    return json.dumps(text, ensure_ascii=False)


def _check_arguments(model_name, max_batch, instance_kind, max_queue_delay_us, preferred, options) -> tuple:
    """Checks export_triton's arguments; returns (preferred batch sizes, max queue delay)."""
    unknown = set(options) - set(TRITON_OPTIONS)
    if unknown:
        raise ConfigError(
            f"a Triton model is the float32 whole-detector ONNX with a dynamic batch; {sorted(unknown)} "
            f"do not apply (only {list(TRITON_OPTIONS)})"
        )
    if not isinstance(model_name, str) or not _MODEL_NAME.match(model_name):
        raise ConfigError(f"Triton model name must be letters, digits, '_', '-', '.' (not first), got {model_name!r}")
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise ConfigError(f"Triton max_batch must be a positive int, got {max_batch!r}")
    if instance_kind not in INSTANCE_KINDS:
        raise ConfigError(f"Triton instance kind must be one of {sorted(INSTANCE_KINDS)}, got {instance_kind!r}")
    if isinstance(max_queue_delay_us, bool) or not isinstance(max_queue_delay_us, int) or max_queue_delay_us < 0:
        raise ConfigError(f"Triton max_queue_delay_us must be an int >= 0, got {max_queue_delay_us!r}")
    if preferred is None:
        preferred = [size for size in {2**i for i in range(1, max_batch.bit_length())} | {max_batch} if size > 1]
    if any(not isinstance(size, int) or not 1 <= size <= max_batch for size in preferred):
        raise ConfigError(f"Triton preferred batch sizes must lie in 1..{max_batch}, got {list(preferred)}")
    return tuple(sorted(set(preferred))), max_queue_delay_us


def _replace_version(staged: Path, version_dir: Path) -> None:
    """Puts the staged version folder in place of `version_dir`, removing the old one and whatever it held."""
    retired = staged.with_name(f"{version_dir.name}.retired")
    try:
        if version_dir.exists():
            os.replace(version_dir, retired)
        os.replace(staged, version_dir)
    except OSError as err:
        raise OutputError(f"{version_dir}: cannot replace the model version: {one_line(err)}") from None
    shutil.rmtree(retired, ignore_errors=True)
