"""An `.onnx` model behind the session interface, on ONNX Runtime.

The execution providers are ONNX Runtime's available local ones in its order
of preference (TensorRT, CUDA, CPU on a GPU build; CPU otherwise) unless given.

Example:

>>> session = OnnxSession("riad.onnx", threads=4)                    # doctest: +SKIP
>>> session.run(images)["scores"].shape                              # doctest: +SKIP
(1,)
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from edge.errors import InputError, RuntimeUnavailable, one_line

_ORT_TYPES = {"tensor(float)": "float32", "tensor(uint8)": "uint8", "tensor(float16)": "float16"}
# `--provider` names and ONNX Runtime's execution providers (the CPU one always follows as the fallback).
PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
}


def execution_providers(name: str | None) -> list[str] | None:
    """ONNX Runtime's providers for a `--provider` name, or None for every available one.

    Raises:
        RuntimeUnavailable: the installed ONNX Runtime lacks the provider; the message names what it has
            (CPU and GPU builds of ONNX Runtime are separate wheels: docs/deployment.md).
    """
    if name is None:
        return None
    import onnxruntime as ort

    wanted = PROVIDERS[name]
    available = ort.get_available_providers()
    if wanted not in available:
        raise RuntimeUnavailable(
            f"--provider {name}: this ONNX Runtime ({ort.__version__}) has {', '.join(available)}; "
            f"{wanted} needs another build (docs/deployment.md, 'Runtimes')"
        )
    return [wanted] + (["CPUExecutionProvider"] if wanted != "CPUExecutionProvider" else [])


class OnnxSession:
    """Runs an `.onnx` model; implements `edge.session.Session`.

    Args:
        path: the model file.
        threads: intra-op CPU threads (None: ONNX Runtime's default, one per core).
        providers: execution providers; None takes every available local one.

    Attributes:
        input_name, output_names, input_shape `(batch or None, H, W, C)`, input_dtype.
    """

    backend = "onnxruntime"

    def __init__(self, path: str | os.PathLike, threads: int | None = None, providers: Sequence[str] | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        if providers is None:  # every local provider; the Azure one calls remote endpoints
            providers = [p for p in ort.get_available_providers() if p != "AzureExecutionProvider"]
        try:
            self._session = ort.InferenceSession(str(path), sess_options=options, providers=list(providers))
        except Exception as err:  # onnxruntime raises its own types (protobuf parse errors, Fail, ...)
            raise InputError(f"{path}: ONNX Runtime cannot load this model: {one_line(err)}") from None
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise InputError(f"{path}: expected one input, found {[i.name for i in inputs]}")
        self.input_name = inputs[0].name
        self.input_shape = tuple(d if isinstance(d, int) else None for d in inputs[0].shape)
        self.input_dtype = _ORT_TYPES.get(inputs[0].type, inputs[0].type)
        self.output_names = tuple(o.name for o in self._session.get_outputs())
        self.delegate = self._session.get_providers()[0]

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """One inference: `{output name: array}` for an input batch."""
        values = self._session.run(list(self.output_names), {self.input_name: batch})
        return dict(zip(self.output_names, values))
