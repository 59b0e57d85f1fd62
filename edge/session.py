"""The runtime-session interface: one loaded model on one runtime, a batch in, named outputs out.

`edge.litert.LiteRTSession` (`.tflite`), `edge.onnxrt.OnnxSession` (`.onnx`)
and `edge.trt.TensorRTSession` (`.engine` / `.plan`) implement it;
`edge.runner.open_session` picks one by the file's extension and
`edge.runner.Runner` does the rest (batching, masks, scoring) with only these
members. A session is opened as `SessionClass(path, threads)`.

Two members are optional, and the runner reads them with `getattr`:

- `max_batch` (int): the largest batch the model accepts (a TensorRT engine's
  optimisation profile); the runner never sends more.
- `activation_memory_factor` (int): how many times the usual activation memory
  the runtime needs per input (LiteRT: 3); the runner sizes its batches for it.

Example:

>>> from edge.runner import open_session                              # doctest: +SKIP
>>> isinstance(open_session("riad_fp32.tflite"), Session)             # doctest: +SKIP
True
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Session(Protocol):
    """A model loaded on a runtime (LiteRT, ONNX Runtime, OpenVINO, TensorRT), run one batch at a time.

    `isinstance(obj, Session)` checks only that the members exist, not their types.
    """

    backend: str
    """The runtime: "litert", "onnxruntime", "openvino" or "tensorrt"."""

    delegate: str
    """What runs the model within the runtime: LiteRT's "xnnpack" or "none", ONNX Runtime's
    first execution provider, OpenVINO's "DEVICE/precision", or "tensorrt"."""

    input_name: str
    """The name of the model's single input tensor."""

    output_names: tuple[str, ...]
    """The names of the model's outputs, the keys of what `run` returns."""

    input_shape: tuple[int | None, ...]
    """The input's shape `(batch, H, W, C)`; the batch is None for a dynamic-batch model."""

    input_dtype: str
    """The input's numpy dtype name: "float32" or "uint8"."""

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """One inference.

        Args:
            batch: `(B, H, W, C)` of `input_dtype`; B equals a fixed batch, or
                is at most `max_batch` where the session has one.

        Returns:
            `{output name: array}` for every name of `output_names`.
        """
        ...
