"""The few CUDA runtime calls TensorRT's Python API leaves to the caller, through ctypes.

TensorRT 10 takes device pointers for its inputs, outputs and calibration
batches. Rather than depend on pycuda or cuda-python (often missing on a
Jetson), this module calls `libcudart` (part of every CUDA and JetPack
install) directly: allocate, copy, stream, free. Nothing here runs at import.

Example:

>>> cuda = CudaRuntime()                                   # doctest: +SKIP
>>> buffer = DeviceBuffer(cuda, 1024)                      # doctest: +SKIP
>>> buffer.upload(np.zeros(256, np.float32)); buffer.free()  # doctest: +SKIP
"""

from __future__ import annotations

import ctypes
import ctypes.util

import numpy as np

from edge.errors import RuntimeUnavailable

_LIBRARY_NAMES = ("libcudart.so", "libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0", "cudart64_12.dll")
_HOST_TO_DEVICE, _DEVICE_TO_HOST = 1, 2


class CudaError(RuntimeUnavailable):
    """A CUDA runtime call failed, or the runtime library is missing."""


class CudaRuntime:
    """`libcudart`, loaded on construction.

    Raises:
        CudaError: when no CUDA runtime library can be loaded.
    """

    def __init__(self):
        names = list(_LIBRARY_NAMES)
        found = ctypes.util.find_library("cudart")
        if found:
            names.insert(0, found)
        for name in names:
            try:
                self._lib = ctypes.CDLL(name)
                break
            except OSError:
                continue
        else:
            raise CudaError("the CUDA runtime library (libcudart) was not found")
        self._lib.cudaGetErrorString.restype = ctypes.c_char_p
        self._lib.cudaMalloc.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t]
        self._lib.cudaFree.argtypes = [ctypes.c_void_p]
        self._lib.cudaMemcpy.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        self._lib.cudaStreamCreate.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
        self._lib.cudaStreamSynchronize.argtypes = [ctypes.c_void_p]
        self._lib.cudaStreamDestroy.argtypes = [ctypes.c_void_p]

    def _check(self, status: int, call: str) -> None:
        if status != 0:
            message = self._lib.cudaGetErrorString(status).decode(errors="replace")
            raise CudaError(f"{call} failed: {message} (CUDA error {status})")

    def device_count(self) -> int:
        count = ctypes.c_int(0)
        status = self._lib.cudaGetDeviceCount(ctypes.byref(count))
        return count.value if status == 0 else 0

    def malloc(self, nbytes: int) -> int:
        pointer = ctypes.c_void_p()
        self._check(self._lib.cudaMalloc(ctypes.byref(pointer), max(int(nbytes), 1)), "cudaMalloc")
        return int(pointer.value)

    def free(self, pointer: int) -> None:
        self._check(self._lib.cudaFree(ctypes.c_void_p(pointer)), "cudaFree")

    def upload(self, pointer: int, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array)
        self._check(
            self._lib.cudaMemcpy(ctypes.c_void_p(pointer), array.ctypes.data, array.nbytes, _HOST_TO_DEVICE),
            "cudaMemcpy (host to device)",
        )

    def download(self, pointer: int, array: np.ndarray) -> None:
        """Fills the C-contiguous `array` from device memory."""
        self._check(
            self._lib.cudaMemcpy(array.ctypes.data, ctypes.c_void_p(pointer), array.nbytes, _DEVICE_TO_HOST),
            "cudaMemcpy (device to host)",
        )

    def stream_create(self) -> int:
        stream = ctypes.c_void_p()
        self._check(self._lib.cudaStreamCreate(ctypes.byref(stream)), "cudaStreamCreate")
        return int(stream.value or 0)

    def stream_synchronize(self, stream: int) -> None:
        self._check(self._lib.cudaStreamSynchronize(ctypes.c_void_p(stream)), "cudaStreamSynchronize")

    def stream_destroy(self, stream: int) -> None:
        self._check(self._lib.cudaStreamDestroy(ctypes.c_void_p(stream)), "cudaStreamDestroy")


class DeviceBuffer:
    """A block of device memory of at least `nbytes`, grown on demand."""

    def __init__(self, cuda: CudaRuntime, nbytes: int):
        self._cuda = cuda
        self.nbytes = int(nbytes)
        self.pointer = cuda.malloc(self.nbytes)

    def reserve(self, nbytes: int) -> None:
        if nbytes > self.nbytes:
            self.free()
            self.nbytes = int(nbytes)
            self.pointer = self._cuda.malloc(self.nbytes)

    def upload(self, array: np.ndarray) -> None:
        self.reserve(array.nbytes)
        self._cuda.upload(self.pointer, array)

    def download(self, array: np.ndarray) -> np.ndarray:
        self._cuda.download(self.pointer, array)
        return array

    def free(self) -> None:
        if self.pointer:
            self._cuda.free(self.pointer)
            self.pointer = 0
