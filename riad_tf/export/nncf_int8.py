"""int8 ONNX by NNCF's quantization with accuracy control: the layers that cost the most stay float32.

`quantize_accuracy_controlled` hands the float32 ONNX to NNCF
(`nncf.quantize_with_accuracy_control`, which takes an `onnx.ModelProto`): it
quantizes the U-Net's nodes (per-channel symmetric weights, QDQ), with the
ranges described at `advanced_parameters`, scores real
tuning images (`riad_tf.accuracy_check.CheckImages`) with the result and,
while the accuracy is off by more than the tolerance, puts back in float32 the
layers whose quantization costs the most. The metric it watches is
`tolerance_share`: the largest of the map error and the image and pixel AUROC
drops against float32, each as a share of its tolerance, so "within tolerance"
means the same here as in the export's own check, which runs after on other
images (`riad_tf.export.detector` gives NNCF every other check image and
judges on the rest).

Needs the `nncf` package (the `[int8]` extra).

Example:

>>> record = {"map_error": 0.25, "image_auroc": {"float32": 0.75, "model": 0.7421875}}
>>> tolerance_share(record, Tolerance(max_auroc_drop=1.0, max_map_error=0.5))  # the AUROC drop: 0.78 of 1 point
0.78125
"""

from __future__ import annotations

import logging

import numpy as np

from riad_tf.accuracy_check import CheckImages, Tolerance, accuracy_record
from riad_tf.export.errors import ExportError
from riad_tf.export.graph import INPUT_NAME
from riad_tf.export.onnx import onnx_unet_nodes
from riad_tf.export.qdq_layout import fusable_qdq
from riad_tf.export.subpixel import subpixel_conv_transposes

log = logging.getLogger(__name__)

# The graph layouts of NNCF's int8 ONNX, named by the runtime that runs it faster, and how the metadata says it.
LAYOUTS = {
    "onnxruntime": "in the layout ONNX Runtime fuses into int8 kernels",
    "openvino": "in NNCF's own layout, for OpenVINO",
}


def tolerance_share(record: dict, tolerance: Tolerance) -> float:
    """The largest change of `record` (`accuracy_record`) as a share of `tolerance`: 0 for float32, 1 at its edge."""
    shares = [record["map_error"] / tolerance.max_map_error]
    for key in ("image_auroc", "pixel_auroc"):
        if key in record:
            drop = 100 * (record[key]["float32"] - record[key]["model"])
            shares.append(max(drop, 0.0) / tolerance.max_auroc_drop)
    return float(max(shares))


def run_onnx(model, images: np.ndarray, batch: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Maps and scores of an `onnx.ModelProto` detector on `images`, in ONNX Runtime, `batch` at a time (None: 1)."""
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    step = batch or 1
    maps, scores = [], []
    for start in range(0, len(images), step):
        chunk = images[start : start + step]
        filled = np.concatenate([chunk, images[: step - len(chunk)]]) if len(chunk) < step else chunk
        chunk_maps, chunk_scores = session.run(None, {INPUT_NAME: filled})
        maps.append(chunk_maps[: len(chunk)])
        scores.append(np.reshape(chunk_scores, -1)[: len(chunk)])
    return np.concatenate(maps), np.concatenate(scores)


def advanced_parameters():
    """NNCF's quantization settings for RIAD's U-Net, where they differ from NNCF's defaults.

    - Activation ranges from the smallest and largest value over all calibration
      images. NNCF's default for per-tensor activations averages each image's
      extremes, which clips every image brighter than the average. On the
      magnetic-tile model (configs/magnetic_tile.yaml) NNCF's first int8
      model was 21 tolerances off float32 with NNCF's ranges and 1.3 with
      these, and NNCF put back in float32 12 of 23 operations instead of 2
      (docs/deployment.md).
    - 7-bit weight ranges in every layer (`OverflowFix.ENABLE`), as in
      `riad_tf.export.onnx.Int8Recipe`: x86 CPUs without VNNI saturate the
      16-bit sums of full 8-bit weights, and the model may run on one.
    """
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    return AdvancedQuantizationParameters(
        activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX, overflow_fix=OverflowFix.ENABLE
    )


def quantize_accuracy_controlled(
    model: bytes,
    scope: str,
    calibration: np.ndarray,
    batch: int | None,
    tuning: CheckImages,
    tolerance: Tolerance,
    layout: str = "onnxruntime",
) -> tuple[bytes, str]:
    """int8 ONNX detector whose accuracy on `tuning` stays within `tolerance` of float32, or float32 layers put back.

    Args:
        model: the float32 ONNX detector (images -> maps, scores).
        scope: the U-Net's name-scope prefix in the graph (`riad_tf.export.onnx.onnx_unet_nodes`); every
            other node stays float32.
        calibration: images the model takes, to set the activation ranges.
        batch: the model's fixed batch, None for a dynamic one.
        tuning: real images at the model's input size and dtype (held-out good, and defective when the run has
            them), the only ones NNCF's choices are measured on.
        tolerance: how far the int8 model may move (`Tolerance`).
        layout: "onnxruntime": the result rewritten into the layout ONNX Runtime
            fuses into int8 kernels (`riad_tf.export.qdq_layout.fusable_qdq`: the
            same numbers up to rounding); "openvino": NNCF's own, which OpenVINO
            runs faster.

    Returns:
        (model bytes, one line saying what was quantized).

    Raises:
        ExportError: nncf is missing, or the quantization failed.
    """
    try:
        import nncf
        import onnx
    except ImportError as err:
        raise ExportError(f"int8 with accuracy control needs nncf ({err}); pip install 'riad-tf[int8]'") from None
    if layout not in LAYOUTS:
        raise ExportError(f"unknown int8 layout {layout!r}; one of {', '.join(LAYOUTS)}")
    proto = onnx.load_from_string(model)
    subpixel_conv_transposes(proto)  # the decoder's upsampling in operators with int8 kernels
    unet = set(onnx_unet_nodes(proto.graph, scope))  # after the rewrite: its nodes are the U-Net's too
    images = tuning.all()
    reference_maps, reference_scores = run_onnx(proto, images, batch)

    def share_kept(
        candidate, _items
    ) -> float:  # NNCF's metric: higher is better; float32 gives 1, not 0 (NNCF divides)
        maps, scores = run_onnx(candidate, images, batch)
        return 1.0 - tolerance_share(accuracy_record(maps, scores, reference_maps, reference_scores, tuning), tolerance)

    step = batch or 1
    chunks = [calibration[i : i + step] for i in range(0, len(calibration) - step + 1, step)]
    try:
        quantized = nncf.quantize_with_accuracy_control(
            proto,
            nncf.Dataset(chunks, lambda chunk: {INPUT_NAME: chunk}),
            nncf.Dataset([None]),  # `share_kept` scores every tuning image itself
            validation_fn=share_kept,
            max_drop=1.0,  # one tolerance, as in the export check that judges it on other images
            drop_type=nncf.DropType.ABSOLUTE,
            subset_size=len(chunks),
            ignored_scope=nncf.IgnoredScope(names=[node.name for node in proto.graph.node if node.name not in unet]),
            advanced_quantization_parameters=advanced_parameters(),
        )
    except Exception as err:  # nncf raises many types; report one line
        message = str(err).splitlines()[0] if str(err) else repr(err)
        raise ExportError(f"int8 ONNX quantization with accuracy control failed: {message}") from err
    kept_float = _float_layers(quantized, unet)
    if layout == "onnxruntime":
        fusable_qdq(quantized)
    return quantized.SerializeToString(), (
        f"int8 U-Net by NNCF with accuracy control (QDQ, per-channel symmetric 7-bit int8 weights, min-max "
        f"activation ranges; {LAYOUTS[layout]}), calibrated on "
        f"{len(calibration)} images and tuned on {tuning.count} real ones; "
        + (f"{len(kept_float)} U-Net nodes left float32; " if kept_float else "")
        + "masking, assembly (Eq. 2) and scoring (Eq. 3-10) float32"
    )


def _float_layers(model, unet: set[str]) -> list[str]:
    """The U-Net's convolutions that no DequantizeLinear feeds: those NNCF left (or put back) in float32."""
    dequantized = {out for node in model.graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    return [
        node.name
        for node in model.graph.node
        if node.name in unet and node.op_type == "Conv" and not any(i in dequantized for i in node.input)
    ]
