"""ONNX: tf2onnx conversion, and int8 quantization of the U-Net with ONNX Runtime.

The `onnx`, `tf2onnx` and `onnxruntime` libraries are imported inside the
functions (absolute imports: this module, `riad_tf.export.onnx`, does not
shadow the `onnx` library).
"""

from __future__ import annotations

import dataclasses
import re
import tempfile
from pathlib import Path

import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from riad_tf.export.errors import ExportError
from riad_tf.export.graph import DETECTOR_OUTPUTS, INPUT_NAME, UNET_OUTPUTS, serving_fn, unet_scope
from riad_tf.export.subpixel import subpixel_onnx

ONNX_OPSET = 17  # TensorRT 8.6 and 10 parse it


def convert_onnx(detector, spec: tf.TensorSpec, bare_unet: bool) -> tuple[bytes, str | None]:
    """Frozen graph -> tf2onnx (opset 17) -> ONNX bytes with inputs/outputs named as in the metadata.

    Args:
        detector: a built `riad_tf.detector.Detector`.
        spec: the input (`riad_tf.export.graph.input_spec`).
        bare_unet: convert only the U-Net.

    Returns:
        (model bytes, the U-Net's name-scope prefix in the graph; None for a
        bare U-Net or when it cannot be found).

    Raises:
        ExportError: tf2onnx or onnx is missing, or the conversion failed.
    """
    try:
        import onnx
        import tf2onnx
        from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2
    except ImportError as err:
        raise ExportError(f"ONNX export needs tf2onnx and onnx ({err}); pip install tf2onnx onnx") from None

    serve = serving_fn(detector, spec, bare_unet)
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
    scope = None if bare_unet else unet_scope((node.name for node in model.graph.node), detector.unet.name)
    return model.SerializeToString(), scope


@dataclasses.dataclass(frozen=True)
class Int8Recipe:
    """How the ONNX U-Net is quantized to int8 (`quantize_onnx`).

    Args:
        ranges: how activation ranges come from the calibration inputs:
            "minmax", "percentile" (`percentile` of |values|) or "entropy".
        percentile: the percentile of the "percentile" ranges.
        weight_bits: 7 (safe on x86 CPUs without VNNI, whose uint8 x int8
            instruction saturates 16-bit sums of full 8-bit weights) or 8.
        symmetric_activations: int8 activations symmetric around 0 (what
            TensorRT's explicit quantization expects) instead of uint8 ones.
        float_layers: starts of Keras layer names of the U-Net (`riad_tf.model`)
            whose nodes stay float32, e.g. `("enc1", "out_conv")`.
        quantizer: "onnxruntime" (`quantize_onnx`, with the fields above) or
            "nncf": NNCF's quantization with accuracy control on the export's
            check images (`riad_tf.export.nncf_int8`; the fields above do not apply).
        layout: NNCF's model only: "onnxruntime" rewrites its QDQ graph into the
            layout ONNX Runtime fuses into int8 kernels (`riad_tf.export.qdq_layout`),
            "openvino" keeps NNCF's own, which OpenVINO runs faster.
    """

    ranges: str = "minmax"
    percentile: float = 99.999
    weight_bits: int = 7
    symmetric_activations: bool = False
    float_layers: tuple[str, ...] = ()
    quantizer: str = "onnxruntime"
    layout: str = "onnxruntime"

    def describe(self) -> str:
        """One line for the metadata's `quantization`."""
        activations = "int8 symmetric" if self.symmetric_activations else "uint8"
        ranges = f"percentile {self.percentile}" if self.ranges == "percentile" else self.ranges
        line = f"QDQ, per-channel {self.weight_bits}-bit int8 weights, {activations} activations, {ranges} ranges"
        if self.float_layers:
            line += f"; float32 layers: {', '.join(self.float_layers)}"
        return line


def quantize_onnx(
    model: bytes, scope: str | None, calibration: np.ndarray, batch: int | None, recipe: Int8Recipe = Int8Recipe()
) -> tuple[bytes, str]:
    """int8 ONNX for ONNX Runtime: the U-Net's nodes quantized statically (QDQ), the rest float32.

    Its transposed convolutions are first rewritten as sub-pixel convolutions
    (`riad_tf.export.subpixel`), which have int8 kernels.

    Args:
        model: the float32 ONNX.
        scope: the U-Net's name-scope prefix in a whole-detector graph; None for a bare U-Net.
        calibration: what the model takes (images, or masked copies for a bare U-Net).
        batch: the model's fixed batch, None for a dynamic one.
        recipe: ranges, bits and the layers left in float32 (`Int8Recipe`).

    Returns:
        (model bytes, one line saying what was quantized).

    Raises:
        ExportError: onnxruntime is missing, or the quantization failed.
    """
    try:
        import onnx
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as err:
        raise ExportError(f"int8 ONNX needs onnxruntime ({err}); pip install onnxruntime") from None
    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}
    methods["entropy"] = CalibrationMethod.Entropy
    if recipe.ranges not in methods or recipe.weight_bits not in (7, 8):
        raise ExportError(f"unknown int8 recipe {recipe}")
    try:
        with tempfile.TemporaryDirectory(prefix="riad-onnx-int8-") as tmp:
            source, prepared, quantized = (Path(tmp) / name for name in ("fp32.onnx", "prepared.onnx", "int8.onnx"))
            source.write_bytes(subpixel_onnx(model))  # the decoder's upsampling in operators with int8 kernels
            # ONNX shape inference and ORT graph optimisation (BatchNorm folded into Conv); the
            # symbolic shape inference cannot follow the masking and scoring ops.
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
            graph = onnx.load(str(prepared)).graph
            unet_nodes = [node.name for node in graph.node] if scope is None else onnx_unet_nodes(graph, scope)
            kept_float = set(layer_nodes(graph, recipe.float_layers))
            quantize_static(
                str(prepared),
                str(quantized),
                _CalibrationFeed(calibration, batch),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QInt8 if recipe.symmetric_activations else QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
                reduce_range=recipe.weight_bits == 7,
                nodes_to_quantize=[name for name in unet_nodes if name not in kept_float],
                calibrate_method=methods[recipe.ranges],
                extra_options={
                    "ActivationSymmetric": recipe.symmetric_activations,
                    "CalibPercentile": recipe.percentile,
                },
            )
            result = quantized.read_bytes()
    except Exception as err:  # onnxruntime.quantization raises many types; report one line
        message = str(err).splitlines()[0] if str(err) else repr(err)
        raise ExportError(f"int8 ONNX quantization failed: {message}") from err
    if scope is None:
        return result, f"full int8 U-Net ({recipe.describe()}), calibrated on {len(calibration)} masked copies"
    return result, (
        f"int8 U-Net ({recipe.describe()}), calibrated on {len(calibration)} images; "
        "masking, assembly (Eq. 2) and scoring (Eq. 3-10) float32"
    )


def layer_nodes(graph, layers) -> list[str]:
    """Names of the ONNX nodes of the Keras layers whose names start with one of `layers`.

    tf2onnx renames some nodes (convolutions become `Conv__123`) but their
    weights keep the layer's name scope, so a node belongs to `enc1_a_conv`
    when its name or one of its constant inputs has an `/enc1_a_conv_1/`
    part (not its other inputs: the next layer's convolution reads
    `enc1_a_relu`'s output); `enc1` names every layer of the first encoder block.
    """
    if not layers:
        return []
    pattern = re.compile(r"/(?:" + "|".join(re.escape(layer) for layer in layers) + r")\w*/")
    constants = {tensor.name for tensor in graph.initializer}
    return [
        node.name
        for node in graph.node
        if any(pattern.search(name) for name in (node.name, *(i for i in node.input if i in constants)))
    ]


def onnx_unet_nodes(graph, scope: str) -> list[str]:
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
        """The next `{input name: batch}`, or None when the calibration data is used up."""
        chunk = next(self._chunks, None)
        return None if chunk is None else {INPUT_NAME: chunk}
