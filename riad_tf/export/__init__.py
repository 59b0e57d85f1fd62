"""Export a trained RIAD detector for edge devices: TFLite, ONNX and TensorRT, and for Triton servers.

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
  quantization (int8 weights, float activations); "int16x8" (a bare U-Net
  only, with `representative_images`): int16 activations, int8 weights.
- ONNX: `{name}.onnx` is always float32 (TensorRT's source: `precision`
  applies to the engine built from it with `trt=True`, which keeps the
  non-U-Net layers in FP32). "int8" with `representative_images` (and no
  `trt`) also writes `{name}_int8.onnx` for ONNX Runtime on CPUs: the U-Net's
  nodes statically quantized as `int8_recipe` says (`onnx.Int8Recipe`; by
  default QDQ, per-channel 7-bit int8 weights, uint8 activations with min-max
  ranges from the images), the rest float32.

Every exported model is run once at export time (LiteRT / ONNX Runtime, when
installed) against the Keras detector: a model with NaN/inf outputs, or an
fp32 model more than 1e-3 away, raises `ExportError`; the differences are
stored in the metadata ("verification"). Every fp16 or int8 model is also
compared with float32 on real images (`check_images`: `riad-tf export` takes
the run's held-out good and its defective test images) by
`riad_tf.accuracy_check`: the map change and, with defects, the image and pixel
AUROC of both go into `verification.accuracy`, and a model over the
`tolerance` is removed and refused with `ExportError` unless `keep_inaccurate`.

Modules:
- `detector`: `export_detector`, `export_run`, their arguments and images;
- `graph`: the exported graph's input, serving function and U-Net scope;
- `tflite`, `onnx`: conversion and quantization for each format;
- `metadata`: writing each model with its metadata, and the export-time check;
- `tensorrt`: the engine built from the ONNX (with `edge.trt_build`);
- `triton`: `export_triton`, a Triton Inference Server model repository (docs/triton.md);
- `errors`: `ExportError`.

Example:

>>> written = export_run("runs/bottle", "export", formats=("tflite", "onnx"))   # doctest: +SKIP
>>> sorted(written)                                                              # doctest: +SKIP
['onnx', 'onnx_metadata', 'tflite', 'tflite_metadata']
"""

from riad_tf.export.detector import FORMATS, MAX_CALIBRATION_IMAGES, PRECISIONS, export_detector, export_run
from riad_tf.export.errors import ExportError
from riad_tf.export.graph import DETECTOR_OUTPUTS, INPUT_NAME, UNET_OUTPUTS
from riad_tf.export.metadata import FP32_TOLERANCE
from riad_tf.export.onnx import ONNX_OPSET
from riad_tf.export.triton import export_triton

__all__ = [
    "DETECTOR_OUTPUTS",
    "FORMATS",
    "FP32_TOLERANCE",
    "INPUT_NAME",
    "MAX_CALIBRATION_IMAGES",
    "ONNX_OPSET",
    "PRECISIONS",
    "UNET_OUTPUTS",
    "ExportError",
    "export_detector",
    "export_run",
    "export_triton",
]
