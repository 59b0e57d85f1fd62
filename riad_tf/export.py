"""Export a trained RIAD detector for edge devices: TFLite, ONNX and TensorRT.

The exported graph is the whole of RIAD's inference (Algorithm 3), traced from
`riad_tf.detector.Detector`: images `(B, H, W, C)` in [0, 1] (or uint8 0-255,
divided by 255 in the graph) -> anomaly maps `(B, H, W)` and scores `(B,)`.
The n x |K| seeded partitions are constants of the graph, all masked copies go
through the U-Net as one batch, and the assembly (Eq. 2), MSGMS (Eq. 3-5), mean
filter (Eq. 8) and the mean over K (Eq. 9) follow, so the device needs no RIAD
code to get a map. With `bare_unet=True` only the U-Net is exported, with the
masks beside it, and `edge.runner.Runner` does the rest in numpy.

Beside each model goes `MODEL.json` (`edge.metadata`): input size, channels
and dtype, the training config (K, n, seed, smoothing), the calibrated
thresholds, precision, format, output names and the model's sha256.

Precision:
- TFLite "fp32"; "fp16": float16 weights (CPU kernels compute in float32,
  the GPU delegate may use float16); "int8" with `representative_images`:
  the U-Net is fully integer-quantized, calibrated on them, while masking,
  assembly and scoring stay float32 (GMS divides small gradient magnitudes,
  Eq. 4, which 8 bits cannot hold); "int8" without them: dynamic-range
  quantization (int8 weights, float activations).
- ONNX: `{name}.onnx` is always float32 (TensorRT's source: `precision`
  applies to the engine built from it with `trt=True`, which keeps the
  non-U-Net layers in FP32). "int8" with `representative_images` (and no
  `trt`) also writes `{name}_int8.onnx` for ONNX Runtime on CPUs: the U-Net's
  nodes statically quantized (QDQ, per-channel 7-bit int8 weights, uint8
  activations with min-max ranges from the images), the rest float32.

Every exported model is run once at export time (LiteRT / ONNX Runtime, when
installed) against the Keras detector: a model with NaN/inf outputs, or an
fp32 model more than 1e-3 away, raises `ExportError`; the differences are
stored in the metadata ("verification").

Example:

>>> written = export_run("runs/bottle", "export", formats=("tflite", "onnx"))   # doctest: +SKIP
>>> sorted(written)                                                              # doctest: +SKIP
['onnx', 'onnx_metadata', 'tflite', 'tflite_metadata']
"""

from __future__ import annotations

import dataclasses
import io
import re
import tempfile
import warnings
from pathlib import Path
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from edge import trt as edge_trt
from edge.images import to_model_input
from edge.inpaint import masked_copies
from edge.files import atomic_write_bytes
from edge.metadata import ModelMetadata, file_sha256, read_metadata, write_metadata
from riad_tf import __version__
from riad_tf.run import load_detector, load_thresholds

FORMATS = ("tflite", "onnx")
PRECISIONS = ("fp32", "fp16", "int8")
ONNX_OPSET = 17  # TensorRT 8.6 and 10 parse it
MAX_CALIBRATION_IMAGES = 128
FP32_TOLERANCE = 1e-3
DETECTOR_OUTPUTS = ("maps", "scores")
UNET_OUTPUTS = ("reconstruction",)
INPUT_NAME = "images"


class ExportError(ValueError):
    """An export that cannot be completed; `written` holds the files already written."""

    def __init__(self, message: str, written: dict | None = None):
        super().__init__(message)
        self.written = dict(written or {})


def export_run(
    run_dir,
    out_dir,
    *,
    formats: Sequence[str] = FORMATS,
    precision: str = "fp32",
    batch: int | None = 1,
    uint8_input: bool = False,
    bare_unet: bool = False,
    representative_images: np.ndarray | None = None,
    trt: bool = False,
) -> dict[str, Path]:
    """Exports a training run's detector (`riad-tf export RUN ...`).

    Loads `RUN/model.keras`, `RUN/config.yaml` and `RUN/thresholds.json` (which
    may be absent before calibration) and calls `export_detector`; the
    arguments are the same.

    Raises:
        FileNotFoundError: RUN is not a trained run.
        ExportError, ValueError: see `export_detector`.
    """
    detector = load_detector(run_dir)
    return export_detector(
        detector,
        out_dir,
        formats=formats,
        precision=precision,
        batch=batch,
        uint8_input=uint8_input,
        bare_unet=bare_unet,
        representative_images=representative_images,
        trt=trt,
        thresholds=load_thresholds(run_dir),
    )


def export_detector(
    detector,
    out_dir,
    *,
    formats: Sequence[str] = FORMATS,
    precision: str = "fp32",
    batch: int | None = 1,
    uint8_input: bool = False,
    bare_unet: bool = False,
    representative_images: np.ndarray | None = None,
    trt: bool = False,
    thresholds: dict | None = None,
    name: str = "riad",
    verify: bool = True,
) -> dict[str, Path]:
    """Exports a `Detector` (or its bare U-Net) for the device.

    Args:
        detector: a `riad_tf.detector.Detector` (trained or not).
        out_dir: output folder (created).
        formats: any of "tflite", "onnx".
        precision: "fp32", "fp16" or "int8" (see the module docstring).
        batch: fixed batch of images, or None for a dynamic batch. A bare
            U-Net's batch is that many images' masked copies (batch x n x |K|).
        uint8_input: the model takes uint8 0-255 and divides by 255 in-graph.
        bare_unet: export only the U-Net, plus the masks as `.npy`.
        representative_images: `(N, H, W[, C])` training images (uint8 or float
            in [0, 1], any size: they are resized like the device's input) for
            int8 calibration and the export-time check.
        trt: also build a TensorRT engine from the ONNX (ONNX is then always
            written). Where TensorRT or a GPU is missing, the ONNX, the
            calibration images and the device's build commands are written and
            `ExportError` is raised saying so.
        thresholds: calibrated thresholds for the metadata (None: uncalibrated).
        name: file-name stem.
        verify: run each exported model once and compare with Keras.

    Returns:
        `{kind: path}` of what was written: "tflite", "tflite_metadata",
        "onnx", "onnx_metadata", "masks", "calibration", "engine",
        "engine_metadata", "trt_instructions" (each only when written).

    Raises:
        ValueError: bad arguments (the message says which).
        ExportError: a conversion failed, an exported model gives NaN/inf or
            disagrees with Keras, or (trt=True) no engine could be built here.
    """
    formats = _check_arguments(formats, precision, batch, trt)
    config = detector.config
    if not detector.built:  # Keras exports only built models; one call builds it
        detector(tf.zeros((1, *config.input_shape)))
    representative = _prepare_images(representative_images, config, uint8_input)
    if precision == "int8" and trt and representative is None:
        raise ValueError("an int8 TensorRT engine needs representative_images for its calibration")
    onnx_int8 = "onnx" in formats and precision == "int8" and representative is not None and not trt
    if "onnx" in formats and precision != "fp32" and not trt and not onnx_int8:
        warnings.warn(f"the ONNX model is float32; precision {precision!r} applies to TFLite, to TensorRT engines"
                      " and, with representative_images, to an int8 ONNX")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = _input_spec(config, batch, uint8_input, bare_unet)
    stem = f"{name}_unet" if bare_unet else name
    written: dict[str, Path] = {}
    masks_file = None
    if bare_unet:
        masks_file = _write_masks(detector, out_dir / f"{stem}.masks.npy")
        written["masks"] = masks_file
    common = dict(config=config, spec=spec, thresholds=thresholds, masks_file=masks_file, bare_unet=bare_unet)
    calibration = _calibration_inputs(representative, detector, bare_unet)

    if "tflite" in formats:
        model, quantization = _convert_tflite(detector, spec, precision, calibration, bare_unet)
        written.update(_write_model(out_dir / f"{stem}_{precision}.tflite", model, precision, quantization, None, common))
    if "onnx" in formats:
        model, scope = _convert_onnx(detector, spec, bare_unet)
        written.update(_write_model(out_dir / f"{stem}.onnx", model, "fp32", "none: float32", scope, common))
        if onnx_int8:
            if scope is None and not bare_unet:
                raise ExportError(f"int8: cannot find the U-Net's layers ({detector.unet.name}) in the ONNX graph", written)
            model, quantization = _quantize_onnx(model, None if bare_unet else scope, calibration, spec.shape[0])
            written.update(_write_model(out_dir / f"{stem}_int8.onnx", model, "int8", quantization, scope, common, key="onnx_int8"))
    if verify:
        probe = representative[:4] if representative is not None else _probe_images(config, uint8_input)
        for kind in ("tflite", "onnx", "onnx_int8"):
            if kind in written:
                _verify(written[kind], detector, probe, "fp32" if kind == "onnx" else precision, written)
    if trt:
        written.update(_export_engine(written["onnx"], precision, representative, written))
    return written


# ----------------------------------------------------------------------------
# Arguments and inputs


def _check_arguments(formats, precision, batch, trt) -> tuple[str, ...]:
    if isinstance(formats, str):
        formats = (formats,)
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ValueError(f"unknown export format(s) {sorted(unknown)}; choose from {FORMATS}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if batch is not None and (not isinstance(batch, (int, np.integer)) or batch < 1):
        raise ValueError(f"batch must be a positive int or None (dynamic), got {batch!r}")
    formats = tuple(f for f in FORMATS if f in formats or (f == "onnx" and trt))
    if not formats:
        raise ValueError("nothing to export: give formats (tflite, onnx) or trt=True")
    return formats


def _prepare_images(images, config, uint8_input: bool) -> np.ndarray | None:
    """Representative images -> the model's input size, channels and dtype (the device's preprocessing)."""
    if images is None:
        return None
    images = np.asarray(images)
    if images.ndim not in (3, 4) or len(images) == 0:
        raise ValueError(f"representative_images must be a non-empty (N, H, W[, C]) array, got shape {images.shape}")
    images = images[:MAX_CALIBRATION_IMAGES]
    return to_model_input(list(images), config.image_size, config.channels, "uint8" if uint8_input else "float32")


def _probe_images(config, uint8_input: bool) -> np.ndarray:
    """Deterministic smooth test images for the export-time check when no real ones are given."""
    height, width = config.image_size
    rows, cols = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
    rng = np.random.default_rng(0)
    images = []
    for phase in (0.0, 1.3):
        base = 0.5 + 0.3 * np.sin(6 * rows + 4 * cols + phase)
        noisy = base[..., None] + 0.05 * rng.standard_normal((height, width, config.channels))
        images.append(np.clip(noisy, 0, 1).astype(np.float32))
    return to_model_input(images, config.image_size, config.channels, "uint8" if uint8_input else "float32")


def _input_spec(config, batch, uint8_input: bool, bare_unet: bool) -> tf.TensorSpec:
    if bare_unet and batch is not None:
        batch = batch * len(config.ks) * config.n if config.inpainting else batch
    dtype = tf.uint8 if uint8_input else tf.float32
    return tf.TensorSpec([batch, *config.input_shape], dtype, name=INPUT_NAME)


def _serving_fn(detector, spec: tf.TensorSpec, bare_unet: bool):
    """The exported computation: uint8 -> [0, 1] in-graph, then the detector (or its U-Net)."""

    def serve(images):
        if spec.dtype == tf.uint8:
            images = tf.cast(images, tf.float32) / 255.0
        if bare_unet:
            return {UNET_OUTPUTS[0]: tf.cast(detector.unet(images, training=False), tf.float32)}
        maps, scores = detector(images)
        return dict(zip(DETECTOR_OUTPUTS, (maps, scores)))

    return serve


def _calibration_inputs(representative, detector, bare_unet: bool) -> np.ndarray | None:
    """What the exported model sees during int8 calibration: images, or masked copies for a bare U-Net."""
    if representative is None or not bare_unet:
        return representative
    if not detector.config.inpainting:
        return representative
    copies = masked_copies(representative, detector.masks)
    step = max(1, len(copies) // MAX_CALIBRATION_IMAGES)
    return copies[::step][:MAX_CALIBRATION_IMAGES]


def _write_masks(detector, path: Path) -> Path:
    """The fixed inference partitions `(|K|, n, H, W, 1)` as uint8 .npy (1 = pixel kept)."""
    buffer = io.BytesIO()
    np.save(buffer, detector.masks.astype(np.uint8))
    return atomic_write_bytes(path, buffer.getvalue())


def _unet_scope(names, unet_name: str) -> str | None:
    """The name-scope prefix of the U-Net's nodes in a converted graph (e.g. `riad_detector_1/riad_unet_1/`)."""
    pattern = re.compile(rf"^(.*?(?:^|/){re.escape(unet_name)}(?:_\d+)?/)")
    for node_name in names:
        match = pattern.match(node_name)
        if match:
            return match.group(1)
    return None


# ----------------------------------------------------------------------------
# TFLite


def _saved_model(detector, spec: tf.TensorSpec, bare_unet: bool, directory: Path) -> Path:
    """A SavedModel with one `serving_default` signature (Keras 3's ExportArchive freezes cleanly)."""
    archive = keras.export.ExportArchive()
    archive.track(detector.unet if bare_unet else detector)
    archive.add_endpoint("serving_default", _serving_fn(detector, spec, bare_unet), input_signature=[spec])
    archive.write_out(str(directory), verbose=False)
    return directory


def _representative_dataset(images: np.ndarray, spec: tf.TensorSpec):
    batch = spec.shape[0] or 1
    if len(images) < batch:
        images = np.resize(images, (batch, *images.shape[1:]))

    def generate():
        for start in range(0, len(images) - batch + 1, batch):
            yield [images[start : start + batch]]

    return generate


def _tflite_tensor_names(model: bytes) -> list[tuple[str, list[str]]]:
    """(op name, output tensor names) of every op of a TFLite model."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model)
    names = {t["index"]: t["name"] for t in interpreter.get_tensor_details()}
    return [(op["op_name"], [names[i] for i in op["outputs"]]) for op in interpreter._get_ops_details()]


def _convert_tflite(detector, spec, precision: str, calibration, bare_unet: bool) -> tuple[bytes, str]:
    """Returns (model bytes, one line saying what was quantized)."""
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
            if calibration is None:
                dynamic = converter()
                dynamic.optimizations = [tf.lite.Optimize.DEFAULT]
                return dynamic.convert(), "dynamic-range int8: int8 weights, float32 activations"
            return _full_integer_unet(converter, detector.unet.name, spec, calibration, bare_unet)
        except ExportError:
            raise
        except Exception as err:  # the converter raises many types; report one line
            raise ExportError(f"TFLite conversion failed: {str(err).splitlines()[0] if str(err) else repr(err)}") from err


def _full_integer_unet(converter, unet_name: str, spec, calibration, bare_unet: bool) -> tuple[bytes, str]:
    """int8 U-Net, calibrated; for the whole graph every op outside the U-Net stays float32.

    The whole graph uses TFLite's selective quantization: the float model's ops
    outside the U-Net's name scope are denylisted in the QuantizationDebugger.
    """
    quantizing = converter()
    quantizing.optimizations = [tf.lite.Optimize.DEFAULT]
    quantizing.representative_dataset = _representative_dataset(calibration, spec)
    count = f"calibrated on {len(calibration)} {'masked copies' if bare_unet else 'images'}"
    if bare_unet:
        return quantizing.convert(), f"full-integer int8 U-Net (float32 input/output), {count}"
    ops = _tflite_tensor_names(converter().convert())
    scope = _unet_scope((name for _, outputs in ops for name in outputs), unet_name)
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


# ----------------------------------------------------------------------------
# ONNX


def _convert_onnx(detector, spec: tf.TensorSpec, bare_unet: bool) -> tuple[bytes, str | None]:
    """Frozen graph -> tf2onnx (opset 17) -> ONNX bytes with inputs/outputs named as in the metadata."""
    try:
        import onnx
        import tf2onnx
        from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2
    except ImportError as err:
        raise ExportError(f"ONNX export needs tf2onnx and onnx ({err}); pip install tf2onnx onnx") from None

    serve = _serving_fn(detector, spec, bare_unet)
    outputs = UNET_OUTPUTS if bare_unet else DETECTOR_OUTPUTS
    def serve_tuple(images):
        results = serve(images)
        return tuple(results[k] for k in outputs)

    function = tf.function(serve_tuple, input_signature=[spec], autograph=False)
    # Freezing turns variables and captured constants (the Prewitt kernels) into graph constants.
    frozen = convert_variables_to_constants_v2(function.get_concrete_function())
    renames = {frozen.inputs[0].name: INPUT_NAME, **{t.name: k for t, k in zip(frozen.outputs, outputs)}}
    try:
        model, _ = tf2onnx.convert.from_graph_def(
            frozen.graph.as_graph_def(),
            input_names=[frozen.inputs[0].name],
            output_names=[t.name for t in frozen.outputs],
            opset=ONNX_OPSET,
            tensors_to_rename=renames,
        )
    except Exception as err:  # tf2onnx raises many types; report one line
        raise ExportError(f"ONNX conversion failed: {str(err).splitlines()[0] if str(err) else repr(err)}") from err
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = "batch"
    onnx.checker.check_model(model)
    scope = None if bare_unet else _unet_scope((node.name for node in model.graph.node), detector.unet.name)
    return model.SerializeToString(), scope


def _quantize_onnx(model: bytes, scope: str | None, calibration: np.ndarray, batch: int | None) -> tuple[bytes, str]:
    """int8 ONNX for ONNX Runtime: the U-Net's nodes quantized statically (QDQ), the rest float32.

    Args:
        model: the float32 ONNX.
        scope: the U-Net's name-scope prefix in a whole-detector graph; None for a bare U-Net.
        calibration: what the model takes (images, or masked copies for a bare U-Net).
        batch: the model's fixed batch, None for a dynamic one.

    Returns:
        (model bytes, one line saying what was quantized).
    """
    try:
        import onnx
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as err:
        raise ExportError(f"int8 ONNX needs onnxruntime ({err}); pip install onnxruntime") from None
    try:
        with tempfile.TemporaryDirectory(prefix="riad-onnx-int8-") as tmp:
            source, prepared, quantized = (Path(tmp) / name for name in ("fp32.onnx", "prepared.onnx", "int8.onnx"))
            source.write_bytes(model)
            # ONNX shape inference and ORT graph optimisation (BatchNorm folded into Conv); the
            # symbolic shape inference cannot follow the masking and scoring ops.
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
            graph = onnx.load(str(prepared)).graph
            unet_nodes = [node.name for node in graph.node] if scope is None else _onnx_unet_nodes(graph, scope)
            quantize_static(
                str(prepared), str(quantized), _CalibrationFeed(calibration, batch),
                quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                # 7-bit weights: x86 CPUs without VNNI multiply uint8 x int8 with VPMADDUBSW, which
                # adds two products into a saturating int16 (2 x 255 x 127 overflows it, 2 x 255 x 63
                # does not). On magnetic tile 8-bit weights cost 7.1 image-AUROC points, 7-bit 0.9.
                per_channel=True, reduce_range=True, nodes_to_quantize=unet_nodes,
            )
            result = quantized.read_bytes()
    except Exception as err:  # onnxruntime.quantization raises many types; report one line
        raise ExportError(f"int8 ONNX quantization failed: {str(err).splitlines()[0] if str(err) else repr(err)}") from err
    if scope is None:
        return result, f"full int8 U-Net (QDQ, per-channel 7-bit int8 weights, uint8 activations), calibrated on {len(calibration)} masked copies"
    return result, (f"int8 U-Net (QDQ, per-channel 7-bit int8 weights, uint8 activations), calibrated on {len(calibration)} "
                    "images; masking, assembly (Eq. 2) and scoring (Eq. 3-10) float32")


def _onnx_unet_nodes(graph, scope: str) -> list[str]:
    """Names of the U-Net's nodes in a whole-detector ONNX graph.

    tf2onnx keeps the TensorFlow name scope on most nodes but gives some it
    rewrites (convolutions among them) generated names; so the U-Net is every
    node under `scope` plus every node on a path from one of them to another.
    """
    producer = {out: i for i, node in enumerate(graph.node) for out in node.output}
    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(graph.node):
        for name in node.input:
            consumers.setdefault(name, []).append(i)
    scoped = {i for i, node in enumerate(graph.node) if node.name.startswith(scope)}

    def reachable(step) -> set[int]:
        seen, todo = set(), list(scoped)
        while todo:
            for j in step(graph.node[todo.pop()]):
                if j not in seen:
                    seen.add(j)
                    todo.append(j)
        return seen

    after = reachable(lambda node: (j for out in node.output for j in consumers.get(out, ())))
    before = reachable(lambda node: (producer[name] for name in node.input if name in producer))
    return [node.name for i, node in enumerate(graph.node) if i in scoped or (i in after and i in before)]


class _CalibrationFeed:
    """onnxruntime's calibration data reader: one model batch per `get_next` (the last one filled up from the first)."""

    def __init__(self, calibration: np.ndarray, batch: int | None):
        step = batch or 1
        padded = np.concatenate([calibration, calibration[: -len(calibration) % step]])
        chunks = np.split(padded, len(padded) // step)
        self._chunks = iter(tqdm(chunks, desc="int8 ONNX calibration", unit="batch", leave=False, disable=None))

    def get_next(self) -> dict | None:
        chunk = next(self._chunks, None)
        return None if chunk is None else {INPUT_NAME: chunk}


# ----------------------------------------------------------------------------
# Metadata, verification, TensorRT


def _write_model(path: Path, model: bytes, precision, quantization, scope, common: dict, key: str | None = None) -> dict[str, Path]:
    """Writes a model file and its metadata, both atomically: `{key: .., f"{key}_metadata": ..}`.

    The format is the file's suffix ("tflite", "onnx"); `key` defaults to it.
    """
    model_format = path.suffix[1:]
    key = key or model_format
    atomic_write_bytes(path, model)
    return {key: path, f"{key}_metadata": _write_metadata(path, model_format, precision, quantization, scope, **common)}


def _write_metadata(path: Path, model_format, precision, quantization, scope, *, config, spec, thresholds, masks_file, bare_unet):
    metadata = ModelMetadata(
        format=model_format,
        graph="unet" if bare_unet else "detector",
        precision=precision,
        quantization=quantization,
        model_file=path.name,
        sha256=file_sha256(path),
        input_name=INPUT_NAME,
        input_shape=tuple(spec.shape.as_list()),
        input_dtype=spec.dtype.name,
        output_names=UNET_OUTPUTS if bare_unet else DETECTOR_OUTPUTS,
        config=config.to_dict(),
        thresholds=thresholds,
        masks_file=masks_file.name if masks_file else None,
        masks_sha256=file_sha256(masks_file) if masks_file else None,
        unet_scope=scope,
        riad_tf_version=__version__,
    )
    return write_metadata(path, metadata)


def _verify(path: Path, detector, probe: np.ndarray, precision: str, written: dict) -> None:
    """Runs the exported model on `probe` with the edge runner and compares with the Keras detector."""
    from edge.runner import Runner

    try:
        runner = Runner.open(path)
    except ImportError as err:  # the runtime is not installed here: nothing to check with
        warnings.warn(f"{path.name}: not checked after export ({err})")
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


def _export_engine(onnx_path: Path, precision: str, representative, written: dict) -> dict[str, Path]:
    """Builds the TensorRT engine here if possible, else writes what the device needs and raises."""
    new: dict[str, Path] = {}
    calib_dir = None
    if precision == "int8":
        calib_dir = onnx_path.with_name(f"{onnx_path.stem}_calibration")
        buffer = io.BytesIO()
        np.save(buffer, representative)
        new["calibration"] = atomic_write_bytes(calib_dir / "images.npy", buffer.getvalue())
    reason = edge_trt.unavailable_reason()
    if reason is None:
        try:
            engine, engine_metadata = edge_trt.build_engine(
                onnx_path, precision=precision, calibration=representative if precision == "int8" else None
            )
        except RuntimeError as err:  # TensorRT's parser or builder; the ONNX is still usable
            written.update(new)
            raise ExportError(f"TensorRT engine build failed: {str(err).splitlines()[0]}", written) from err
        return {**new, "engine": engine, "engine_metadata": engine_metadata}
    instructions = edge_trt.write_build_instructions(onnx_path, precision, reason, calib_dir.name if calib_dir else None)
    new["trt_instructions"] = instructions
    written.update(new)
    raise ExportError(
        f"no TensorRT engine built here ({reason}); wrote {onnx_path.name}"
        + (f", {calib_dir.name}/" if calib_dir else "")
        + f" and the device's build commands to {instructions}",
        written,
    )
