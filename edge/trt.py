"""TensorRT: whether it is available here, and running a serialized engine (TensorRT 10 API).

`tensorrt` is imported only inside these functions: the module imports on any
machine, and `unavailable_reason()` says why an engine cannot be built or run
here. Building engines (and the commands that build them on the device) is
`edge.trt_build`.

Example:

>>> session = TensorRTSession("riad_fp16.engine")                    # doctest: +SKIP
>>> session.run(images)["maps"].shape                                 # doctest: +SKIP
(1, 256, 256)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edge.cuda import CudaError, CudaRuntime, DeviceBuffer
from edge.errors import RuntimeUnavailable

INSTALL_HINT = (
    "on a Jetson it comes with JetPack (apt install python3-libnvinfer); on an x86 machine with an "
    "NVIDIA GPU: pip install tensorrt --extra-index-url https://pypi.nvidia.com"
)


class TensorRTUnavailable(RuntimeUnavailable):
    """TensorRT or an NVIDIA GPU is missing here; the message says which and what to do."""


def _import_tensorrt():
    """The `tensorrt` module; raises `TensorRTUnavailable` (with how to install it) when it is missing."""
    try:
        import tensorrt
    except ImportError as err:
        raise TensorRTUnavailable(f"the tensorrt Python package is not installed ({err}); {INSTALL_HINT}") from None
    return tensorrt


def unavailable_reason() -> str | None:
    """None when an engine can be built here; otherwise why not (one line)."""
    try:
        _import_tensorrt()
        if CudaRuntime().device_count() < 1:
            return "no NVIDIA GPU is visible to the CUDA runtime"
    except (TensorRTUnavailable, CudaError) as err:
        return str(err)
    return None


class TensorRTSession:
    """Runs a serialized engine (`.engine` / `.plan`); implements `edge.session.Session`.

    Attributes:
        input_name, output_names, input_shape `(batch or None, H, W, C)`,
        input_dtype, max_batch (the profile's largest batch of a dynamic engine).
    """

    backend = "tensorrt"
    delegate = "tensorrt"

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        trt = _import_tensorrt()
        self._cuda = CudaRuntime()
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if self._engine is None:
            raise RuntimeError(
                f"{path}: TensorRT could not load the engine (built by another TensorRT version or GPU?)"
            )
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if len(inputs) != 1:
            raise ValueError(f"{path}: expected one input tensor, found {inputs}")
        self.input_name = inputs[0]
        self.output_names = tuple(n for n in names if n not in inputs)
        shape = tuple(self._engine.get_tensor_shape(self.input_name))
        self.input_shape = tuple(None if d < 0 else int(d) for d in shape)
        self.input_dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(self.input_name))).name
        self.max_batch = self.input_shape[0]
        if self.max_batch is None:
            self.max_batch = int(self._engine.get_tensor_profile_shape(self.input_name, 0)[2][0])
        self._dtypes = {n: np.dtype(trt.nptype(self._engine.get_tensor_dtype(n))) for n in names}
        self._buffers = {n: DeviceBuffer(self._cuda, 1) for n in names}
        self._stream = self._cuda.stream_create()

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """One inference: `{output name: array}` for an input batch of at most `max_batch`."""
        batch = np.ascontiguousarray(batch, dtype=self._dtypes[self.input_name])
        self._context.set_input_shape(self.input_name, batch.shape)
        self._buffers[self.input_name].upload(batch)
        outputs = {}
        for name in self.output_names:
            outputs[name] = np.empty(tuple(self._context.get_tensor_shape(name)), self._dtypes[name])
            self._buffers[name].reserve(outputs[name].nbytes)
        for name, buffer in self._buffers.items():
            self._context.set_tensor_address(name, buffer.pointer)
        if not self._context.execute_async_v3(self._stream):
            raise RuntimeError("TensorRT execution failed")
        self._cuda.stream_synchronize(self._stream)
        return {name: self._buffers[name].download(array) for name, array in outputs.items()}

    def __del__(self):
        for buffer in getattr(self, "_buffers", {}).values():
            try:
                buffer.free()
            except CudaError:
                pass
