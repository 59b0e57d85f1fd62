"""An exported `.onnx` model behind the session interface, on OpenVINO (Intel CPUs and iGPUs).

OpenVINO reads the ONNX file itself: nothing is converted ahead of time. On a
CPU, OpenVINO computes in bfloat16 by default where the CPU has it (AMX,
AVX512-BF16); `precision="f32"` (the default here) keeps the exported model's
float32 scores, `"bf16"` (or `"f16"` on a GPU) trades a little accuracy for
speed (docs/deployment.md, "Runtimes", has the measurement).

Example:

>>> session = OpenVinoSession("riad.onnx", device="CPU", threads=4)   # doctest: +SKIP
>>> session.run(images)["scores"].shape                              # doctest: +SKIP
(1,)
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from edge.errors import ConfigError, InputError, RuntimeUnavailable, one_line

PRECISIONS = ("f32", "bf16", "f16")
_OV_TYPES = {"f32": "float32", "u8": "uint8", "f16": "float16"}


@dataclasses.dataclass(frozen=True)
class OpenVinoSettings:
    """Where and how OpenVINO runs a model.

    Args:
        device: an OpenVINO device name: "CPU", "GPU" (an Intel iGPU), "AUTO", ...
        precision: the inference precision: "f32", "bf16" or "f16".
    """

    device: str = "CPU"
    precision: str = "f32"

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ConfigError(f"OpenVINO precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")


class OpenVinoSession:
    """Runs an `.onnx` model on OpenVINO; implements `edge.session.Session`.

    Args:
        path: the ONNX model file.
        threads: CPU inference threads (None: OpenVINO's default).
        settings: `OpenVinoSettings` (device and precision).

    Raises:
        RuntimeUnavailable: OpenVINO is not installed, or lacks the device.
        InputError: OpenVINO cannot read or compile the model.
    """

    backend = "openvino"

    def __init__(self, path: str | os.PathLike, threads: int | None = None, settings: OpenVinoSettings | None = None):
        try:
            import openvino
        except ImportError:
            raise RuntimeUnavailable(f"{path}: OpenVINO is not installed (pip install 'riad-tf[openvino]')") from None
        settings = settings or OpenVinoSettings()
        try:
            core = openvino.Core()
        except Exception as err:  # a broken installation or plugin configuration
            raise RuntimeUnavailable(f"OpenVINO cannot start: {one_line(err)}") from None
        family = settings.device.split(".")[0].split(":")[0]
        if family not in ("AUTO", "MULTI", "HETERO") and family not in {
            d.split(".")[0] for d in core.available_devices
        }:
            raise RuntimeUnavailable(
                f"OpenVINO device {settings.device!r} is not here; this machine has {', '.join(core.available_devices)}"
            )
        config = {"INFERENCE_PRECISION_HINT": settings.precision}
        if threads and family == "CPU":
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            compiled = core.compile_model(core.read_model(str(path)), settings.device, config)
        except Exception as err:  # OpenVINO raises RuntimeError with its own multi-line text
            raise InputError(f"{path}: OpenVINO cannot load this model: {one_line(err)}") from None
        if len(compiled.inputs) != 1:
            raise InputError(f"{path}: expected one input, found {len(compiled.inputs)}")
        port = compiled.inputs[0]
        self.input_name = port.get_any_name()
        self.input_shape = tuple(d.get_length() if d.is_static else None for d in port.get_partial_shape())
        self.input_dtype = _OV_TYPES.get(port.get_element_type().get_type_name(), str(port.get_element_type()))
        self._outputs = {_tensor_name(output): output for output in compiled.outputs}
        self.output_names = tuple(self._outputs)
        self.delegate = f"{settings.device}/{settings.precision}"
        self._request = compiled.create_infer_request()

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """One inference: `{output name: array}` for an input batch."""
        results = self._request.infer({self.input_name: np.ascontiguousarray(batch)})
        return {name: np.array(results[output]) for name, output in self._outputs.items()}


def _tensor_name(port) -> str:
    """The output's ONNX name: OpenVINO may keep several names for one tensor; the shortest is the graph's own."""
    return min(port.get_names(), key=len)
