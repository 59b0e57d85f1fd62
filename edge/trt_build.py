"""TensorRT: building an engine from the exported ONNX (TensorRT 10 API), or the commands that build it.

An engine is specific to the GPU and the TensorRT version that built it, so it
is built on the device (a Jetson's JetPack ships TensorRT and its Python
package). `build_engine` parses the ONNX, builds an FP32, FP16 or INT8 engine
and writes `ENGINE.json` (the ONNX metadata with format "tensorrt");
`write_engine_metadata` writes it for an engine that trtexec built. On a
machine without TensorRT, `build_commands` and `write_build_instructions` give
the device's commands instead.

Precision: with FP16 or INT8 the U-Net's layers may run in reduced precision,
while every other layer (masking, assembly Eq. 2, MSGMS Eq. 3-5, mean filter
Eq. 8) is asked to stay in FP32 (`PREFER_PRECISION_CONSTRAINTS`), because GMS
divides small gradient magnitudes (Eq. 4) and loses its meaning in 8 bits.
INT8 from a float32 ONNX uses entropy calibration on representative images (a
calibration cache is written beside the engine and reused, TensorRT's implicit
quantization). INT8 from an int8 QDQ ONNX (`riad-tf export --precision int8
--int8-activations symmetric`) is explicit quantization: the scales are in the
model, so no calibration is needed; TensorRT takes only symmetric int8
activations (zero point 0), so a QDQ ONNX with uint8 ones is refused.

`tensorrt` is imported only inside `build_engine` (through `edge.trt`): the
module imports on any machine, and `edge.trt.unavailable_reason()` says why an
engine cannot be built here. Running an engine is `edge.trt.TensorRTSession`.

Example:

>>> build_engine("riad.onnx", "riad_fp16.engine", precision="fp16")   # doctest: +SKIP
(PosixPath('riad_fp16.engine'), PosixPath('riad_fp16.engine.json'))
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import shutil
from pathlib import Path

import numpy as np

from edge.cuda import CudaRuntime, DeviceBuffer
from edge.errors import ConfigError, InputError, RuntimeUnavailable
from edge.files import atomic_write_bytes
from edge.inpaint import masked_copies
from edge.metadata import ModelMetadata, file_sha256, read_metadata, write_metadata
from edge.trt import _import_tensorrt

TRTEXEC = "/usr/src/tensorrt/bin/trtexec"  # where JetPack puts it


def engine_path_for(onnx_path: str | os.PathLike, precision: str) -> Path:
    """`riad.onnx` -> `riad_fp16.engine` beside it."""
    onnx_path = Path(onnx_path)
    return onnx_path.with_name(f"{onnx_path.stem}_{precision}.engine")


def default_max_batch(metadata: ModelMetadata) -> int:
    """Largest batch of a dynamic-batch engine: 8 images (their masked copies for a bare U-Net)."""
    return 8 * (len(metadata.ks) * metadata.n if metadata.graph == "unet" else 1)


def build_commands(
    onnx_path: str | os.PathLike,
    precision: str,
    calib_dir: str | os.PathLike | None = None,
    engine_path: str | os.PathLike | None = None,
) -> dict[str, str]:
    """The commands that build the engine on the device, run from the ONNX's folder.

    Returns:
        `{"riad-edge": ..., "trtexec": ..., "trtexec-metadata": ...}`: the
        `riad-edge build-engine` line (recommended: it keeps scoring in FP32 and
        writes the metadata), the equivalent `trtexec` line, and the
        `riad-edge engine-metadata` line that describes a trtexec-built engine.
    """
    onnx_path = Path(onnx_path)
    metadata = read_metadata(onnx_path, verify=False)
    engine = Path(engine_path).name if engine_path else engine_path_for(onnx_path, precision).name
    onnx = onnx_path.name
    flags = {"fp32": [], "fp16": ["--fp16"], "int8": ["--int8"]}[precision]
    riad_edge = ["riad-edge", "build-engine", onnx, *flags]
    calibrated = precision == "int8" and not explicit_int8(metadata)  # a QDQ ONNX holds its scales
    if calibrated:
        riad_edge += ["--calib", str(calib_dir) if calib_dir else "CALIBRATION_DIR"]
    riad_edge += ["--output", engine]
    trtexec = [TRTEXEC, f"--onnx={onnx}", f"--saveEngine={engine}"]
    trtexec += {"fp32": [], "fp16": ["--fp16"], "int8": ["--int8", "--fp16"]}[precision]
    if calibrated:
        trtexec.append(f"--calib={engine}.calib.cache")
    if metadata.batch is None:
        _, height, width, channels = metadata.input_shape
        size = f"{height}x{width}x{channels}"
        top = default_max_batch(metadata)
        trtexec += [
            f"--minShapes={metadata.input_name}:1x{size}",
            f"--optShapes={metadata.input_name}:{top}x{size}",
            f"--maxShapes={metadata.input_name}:{top}x{size}",
        ]
    describe = ["riad-edge", "engine-metadata", engine, "--onnx", onnx, "--precision", precision]
    return {
        "riad-edge": shlex.join(riad_edge),
        "trtexec": shlex.join(trtexec),
        "trtexec-metadata": shlex.join(describe),
    }


def write_build_instructions(
    onnx_path: str | os.PathLike, precision: str, reason: str, calib_dir: str | os.PathLike | None = None
) -> Path:
    """Writes `ONNX.trt-build.txt`: why no engine was built here and the commands for the device."""
    onnx_path = Path(onnx_path)
    commands = build_commands(onnx_path, precision, calib_dir)
    metadata = read_metadata(onnx_path, verify=False)
    files = [onnx_path.name, onnx_path.name + ".json"]
    if metadata.masks_file:
        files.append(metadata.masks_file)
    if calib_dir:
        files.append(f"{calib_dir}/")
    lines = [
        f"# TensorRT engine ({precision}) for {onnx_path.name}: not built here: {reason}.",
        "# An engine is specific to its GPU and TensorRT version: build it on the device.",
        f"# 1. Copy to the device: {' '.join(files)}",
        "# 2. In that folder, with riad-tf installed (pip install .[edge]) and JetPack's TensorRT:",
        commands["riad-edge"],
        "# or with TensorRT's own tool (scoring layers are not pinned to FP32 this way;"
        + (" INT8 needs the calibration cache that the riad-edge command writes;" if precision == "int8" else "")
        + " then describe the engine for riad-edge):",
        commands["trtexec"],
        commands["trtexec-metadata"],
        "# 3. Run it:",
        shlex.join(["riad-edge", "infer", engine_path_for(onnx_path, precision).name, "IMAGES..."]),
        "",
    ]
    path = onnx_path.with_name(onnx_path.name + ".trt-build.txt")
    atomic_write_bytes(path, "\n".join(lines).encode())
    return path


def _calibrator_class(trt):
    """An entropy calibrator (TensorRT's IInt8EntropyCalibrator2) over numpy batches."""

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self, batches: list[np.ndarray], cache_path: Path):
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._batches = batches
            self._cache_path = cache_path
            self._cuda = CudaRuntime()
            self._buffer = DeviceBuffer(self._cuda, max((b.nbytes for b in batches), default=1))
            self._next = 0

        def get_batch_size(self):
            return int(self._batches[0].shape[0]) if self._batches else 1

        def get_batch(self, names):
            if self._next >= len(self._batches):
                return None
            self._buffer.upload(self._batches[self._next])
            self._next += 1
            return [self._buffer.pointer]

        def read_calibration_cache(self):
            return self._cache_path.read_bytes() if self._cache_path.is_file() else None

        def write_calibration_cache(self, cache):
            atomic_write_bytes(self._cache_path, bytes(cache))

    return Calibrator


def _calibration_batches(images: np.ndarray, metadata: ModelMetadata, model_dir: Path, batch: int) -> list[np.ndarray]:
    """Representative images -> network-input batches of exactly `batch` (masked copies for a U-Net)."""
    if metadata.graph == "unet":
        masks = np.load(model_dir / metadata.masks_file)
        images = masked_copies(images, masks)
    usable = len(images) // batch * batch
    if usable == 0:
        raise InputError(f"INT8 calibration needs at least {batch} network inputs, got {len(images)}")
    return [np.ascontiguousarray(images[i : i + batch]) for i in range(0, usable, batch)]


def _keep_scoring_in_fp32(trt, network, unet_scope: str) -> int:
    """Asks every float layer outside the U-Net to run in FP32; returns how many."""
    pinned = 0
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if unet_scope in layer.name:
            continue
        outputs = [layer.get_output(j) for j in range(layer.num_outputs)]
        if not outputs or any(t.dtype not in (trt.float32, trt.float16) for t in outputs):
            continue
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            layer.set_output_type(j, trt.float32)
        pinned += 1
    return pinned


def build_engine(
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike | None = None,
    *,
    precision: str = "fp16",
    calibration: np.ndarray | None = None,
    max_batch: int | None = None,
    workspace_mb: int = 2048,
) -> tuple[Path, Path]:
    """Builds a serialized TensorRT engine from an exported ONNX and writes its metadata.

    Args:
        onnx_path: the exported `.onnx` (its `.onnx.json` must be beside it).
        engine_path: where to write; default `ONNX-STEM_PRECISION.engine` beside it.
        precision: "fp32", "fp16" or "int8".
        calibration: INT8 only: representative images at the model's size and
            input dtype `(N, H, W, C)`; None reuses `ENGINE.calib.cache`.
        max_batch: largest batch of a dynamic-batch ONNX (optimisation profile
            1 .. max_batch); default `default_max_batch`.
        workspace_mb: TensorRT's workspace memory pool.

    Returns:
        `(engine path, metadata path)`.

    Raises:
        TensorRTUnavailable: tensorrt or the GPU is missing.
        RuntimeError: the ONNX does not parse or the build fails (TensorRT's messages).
        ValueError: bad arguments, e.g. INT8 with neither images nor a cache.
    """
    trt = _import_tensorrt()
    onnx_path = Path(onnx_path)
    metadata, engine_path, cache_path = _checked_build(onnx_path, engine_path, precision, calibration)

    builder, network = _parsed_network(trt, onnx_path)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    batch = _batch_profile(builder, config, metadata, precision, max_batch)
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
        if metadata.unet_scope:
            _keep_scoring_in_fp32(trt, network, metadata.unet_scope)
            config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
    calibrator = None  # referenced until the build ends
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
    if precision == "int8" and not explicit_int8(metadata):
        batches = [] if calibration is None else _calibration_batches(calibration, metadata, onnx_path.parent, batch)
        calibrator = _calibrator_class(trt)(batches, cache_path)
        config.int8_calibrator = calibrator

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeUnavailable(f"{onnx_path}: TensorRT could not build the engine (see its messages above)")
    atomic_write_bytes(engine_path, bytes(serialized))
    return engine_path, write_engine_metadata(engine_path, onnx_path, precision)


def explicit_int8(metadata) -> bool:
    """Whether the exported ONNX is an int8 QDQ model (TensorRT's explicit quantization: no calibration)."""
    return metadata.precision == "int8"


def _checked_build(onnx_path: Path, engine_path, precision: str, calibration):
    """(the ONNX's metadata, the engine's path, its calibration cache's path), after checking the arguments."""
    if precision not in ("fp32", "fp16", "int8"):
        raise ConfigError(f"precision must be fp32, fp16 or int8, got {precision!r}")
    metadata = read_metadata(onnx_path)
    if metadata.format != "onnx":
        raise InputError(f"{onnx_path}: build-engine takes an exported .onnx, not a {metadata.format} model")
    engine_path = Path(engine_path) if engine_path else engine_path_for(onnx_path, precision)
    cache_path = engine_path.with_name(engine_path.name + ".calib.cache")
    if explicit_int8(metadata):
        if precision != "int8":
            raise ConfigError(f"{onnx_path}: an int8 QDQ model builds an INT8 engine only (--int8)")
        if "symmetric" not in metadata.quantization:
            raise InputError(
                f"{onnx_path}: its int8 activations are uint8, which TensorRT does not take; export it with "
                "--int8-activations symmetric, or build from the float32 ONNX with --calib"
            )
        return metadata, engine_path, cache_path
    if precision == "int8" and calibration is None and not cache_path.is_file():
        raise InputError(f"INT8 needs representative images (--calib) or a calibration cache at {cache_path}")
    return metadata, engine_path, cache_path


def _parsed_network(trt, onnx_path: Path):
    """(builder, network) of the ONNX; `InputError` with the parser's messages when it does not parse."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise InputError(f"{onnx_path}: TensorRT's ONNX parser failed: {errors}")
    return builder, network


def _batch_profile(builder, config, metadata, precision: str, max_batch: int | None) -> int:
    """The engine's batch: the ONNX's fixed one, or for a dynamic batch an optimisation profile 1 .. max_batch."""
    if metadata.batch is not None:
        return metadata.batch
    batch = int(max_batch or default_max_batch(metadata))
    shape = metadata.input_shape[1:]
    profile = builder.create_optimization_profile()
    profile.set_shape(metadata.input_name, (1, *shape), (batch, *shape), (batch, *shape))
    config.add_optimization_profile(profile)
    if precision == "int8" and not explicit_int8(metadata):
        config.set_calibration_profile(profile)
    return batch


def write_engine_metadata(engine_path: str | os.PathLike, onnx_path: str | os.PathLike, precision: str) -> Path:
    """Writes `ENGINE.json` for an engine built from an exported ONNX (by `build_engine` or trtexec).

    A bare U-Net's masks file is copied beside the engine when the engine lives elsewhere.
    """
    engine_path, onnx_path = Path(engine_path), Path(onnx_path)
    source = read_metadata(onnx_path)
    if source.masks_file and engine_path.parent.resolve() != onnx_path.parent.resolve():
        shutil.copyfile(onnx_path.parent / source.masks_file, engine_path.parent / source.masks_file)
    quantization = {
        "fp32": "none: FP32 engine",
        "fp16": "FP16 kernels allowed in the U-Net; the other layers are asked to stay FP32",
        "int8": "INT8 U-Net (entropy calibration), FP16 fallback; the other layers are asked to stay FP32",
    }[precision]
    metadata = dataclasses.replace(
        source,
        format="tensorrt",
        precision=precision,
        quantization=quantization,
        model_file=engine_path.name,
        sha256=file_sha256(engine_path),
        verification=None,
        notes=f"built from {onnx_path.name} (sha256 {source.sha256[:12]}...)",
    )
    return write_metadata(engine_path, metadata)
