"""TensorRT: the engine built from the exported ONNX, here or, failing that, on the device.

The engine building itself is `edge.trt_build` (the device uses it too); this
module decides where it happens and writes what the device needs.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from edge import trt as edge_trt
from edge import trt_build
from edge.files import atomic_write_bytes
from riad_tf.export.errors import ExportError


def export_engine(onnx_path: Path, precision: str, representative, written: dict) -> dict[str, Path]:
    """Builds the TensorRT engine here if possible, else writes what the device needs and raises.

    Args:
        onnx_path: the exported float32 ONNX (its metadata beside it).
        precision: "fp32", "fp16" or "int8".
        representative: int8 only: calibration images at the model's size and
            dtype (also saved to `ONNX-STEM_calibration/images.npy`).
        written: the files written so far; updated with the new ones before raising.

    Returns:
        `{kind: path}` of what was written: "calibration" (int8), "engine", "engine_metadata".

    Raises:
        ExportError: TensorRT or a GPU is missing here (the device's build
            commands are then written, "trt_instructions"), or the build failed.
    """
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
            engine, engine_metadata = trt_build.build_engine(
                onnx_path, precision=precision, calibration=representative if precision == "int8" else None
            )
        except RuntimeError as err:  # TensorRT's parser or builder; the ONNX is still usable
            written.update(new)
            raise ExportError(f"TensorRT engine build failed: {str(err).splitlines()[0]}", written) from err
        return {**new, "engine": engine, "engine_metadata": engine_metadata}
    calib_name = calib_dir.name if calib_dir else None
    instructions = trt_build.write_build_instructions(onnx_path, precision, reason, calib_name)
    new["trt_instructions"] = instructions
    written.update(new)
    raise ExportError(
        f"no TensorRT engine built here ({reason}); wrote {onnx_path.name}"
        + (f", {calib_dir.name}/" if calib_dir else "")
        + f" and the device's build commands to {instructions}",
        written,
    )
