"""Exporting a detector: the arguments, the images it needs, and the steps for each format.

`export_detector` checks its arguments, builds the detector, prepares the
representative images, then converts (`riad_tf.export.tflite`,
`riad_tf.export.onnx`), writes each model with its metadata and checks it
(`riad_tf.export.metadata`), and builds the TensorRT engine
(`riad_tf.export.tensorrt`).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import tensorflow as tf

from edge.errors import ConfigError
from edge.files import atomic_write_bytes, check_writable
from edge.images import to_model_input
from edge.inpaint import masked_copies
from riad_tf.accuracy_check import CheckImages, Tolerance, check_accuracy
from riad_tf.export.errors import ExportError
from riad_tf.export.graph import input_spec
from riad_tf.export.metadata import verify_model, write_model
from riad_tf.export.onnx import Int8Recipe, convert_onnx, quantize_onnx
from riad_tf.export.tensorrt import export_engine
from riad_tf.export.tflite import convert_tflite
from riad_tf.run import load_detector, load_preprocessing, load_thresholds, record_exports

FORMATS = ("tflite", "onnx")
PRECISIONS = ("fp32", "fp16", "int8", "int16x8")
MAX_CALIBRATION_IMAGES = 128
log = logging.getLogger(__name__)


def export_run(run_dir, out_dir, *, record: bool = True, **options) -> dict[str, Path]:
    """Exports a training run's detector (`riad-tf export RUN ...`).

    Loads `RUN/model.keras`, `RUN/config.yaml`, `RUN/thresholds.json` (which
    may be absent before calibration) and `RUN/preprocessing.json`, and calls
    `export_detector` with the run's thresholds and preprocessing. The models
    written (also those of an export that fails later, such as a `--trt` here
    without TensorRT) go into the run's `exports.json` (`riad_tf.run.record_exports`),
    so that `riad-tf calibrate` can name them.

    Args:
        run_dir: the training run.
        out_dir: output folder (created).
        record: record the models in the run (not for a folder they will be moved from).
        **options: the fields of `ExportOptions` but `thresholds` and
            `preprocessing`, which come from the run.

    Returns:
        `{kind: path}` of what was written (see `export_detector`).

    Raises:
        FileNotFoundError: RUN is not a trained run.
        ExportError, ValueError: see `export_detector`.
    """
    check_writable(out_dir)  # before the conversions, not after them
    detector = load_detector(run_dir)
    recorded = dict(thresholds=load_thresholds(run_dir), preprocessing=load_preprocessing(run_dir))
    try:
        written = export_detector(detector, out_dir, **recorded, **options)
    except ExportError as err:
        if record:
            record_exports(run_dir, _models(err.written))
        raise
    if record:
        record_exports(run_dir, _models(written))
    return written


def _models(written: dict[str, Path]) -> list[Path]:
    """The model files among what an export wrote: those with metadata of their own."""
    return [path for kind, path in written.items() if f"{kind}_metadata" in written]


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    """What `export_detector` writes, and how.

    Args:
        formats: any of "tflite", "onnx".
        precision: "fp32", "fp16", "int8" or "int16x8" (see the `riad_tf.export` docstring).
        batch: fixed batch of images, or None for a dynamic batch. A bare
            U-Net's batch is that many images' masked copies (batch x n x |K|).
        uint8_input: the model takes uint8 0-255 and divides by 255 in-graph.
        bare_unet: export only the U-Net, plus the masks as `.npy`.
        representative_images: `(N, H, W[, C])` training images (uint8 or float
            in [0, 1], any size: they are resized like the device's input) for
            int8 calibration and the export-time check.
        trt: also build a TensorRT engine from the ONNX (ONNX is then always
            written). Where TensorRT or a GPU is missing, the ONNX, the
            calibration images and the device's build commands are written and
            `ExportError` is raised saying so.
        thresholds: calibrated thresholds for the metadata (None: uncalibrated).
        preprocessing: the training images' native size (`riad_tf.run.load_preprocessing`).
        name: file-name stem.
        verify: run each exported model once and compare with Keras.
        check_images: real images (`riad_tf.accuracy_check.CheckImages`) on
            which every fp16 or int8 model is compared with float32; None
            skips that check with a warning. With NNCF's int8 and no
            `tuning_images`, NNCF tunes on every other one and every model
            of the export is judged on the rest.
        tolerance: how far such a model may move (`Tolerance`) before the
            export refuses it.
        keep_inaccurate: keep a model over the tolerance, with a warning.
        int8_recipe: how the ONNX U-Net is quantized (`riad_tf.export.onnx.Int8Recipe`).
        tuning_images: the real images NNCF's accuracy control tunes on
            (quantizer "nncf"). None: every other image of `check_images`,
            and the export's check judges the int8 model on the rest, which
            NNCF never saw.
    """

    formats: Sequence[str] = FORMATS
    precision: str = "fp32"
    batch: int | None = 1
    uint8_input: bool = False
    bare_unet: bool = False
    representative_images: np.ndarray | None = None
    trt: bool = False
    thresholds: dict | None = None
    preprocessing: dict | None = None
    name: str = "riad"
    verify: bool = True
    check_images: CheckImages | None = None
    tolerance: Tolerance = Tolerance()
    keep_inaccurate: bool = False
    int8_recipe: Int8Recipe = Int8Recipe()
    tuning_images: CheckImages | None = None


def export_detector(detector, out_dir, **options) -> dict[str, Path]:
    """Exports a `Detector` (or its bare U-Net) for the device.

    Args:
        detector: a `riad_tf.detector.Detector` (trained or not).
        out_dir: output folder (created).
        **options: the fields of `ExportOptions`.

    Returns:
        `{kind: path}` of what was written: "tflite", "tflite_metadata",
        "onnx", "onnx_metadata", "masks", "calibration", "engine",
        "engine_metadata", "trt_instructions" (each only when written).

    Raises:
        ValueError: bad arguments (the message says which).
        ExportError: a conversion failed, an exported model gives NaN/inf or
            disagrees with Keras, or (trt=True) no engine could be built here.
    """
    opts = ExportOptions(**options)
    formats, precision, bare_unet = opts.formats, opts.precision, opts.bare_unet
    formats = _check_arguments(formats, precision, opts.batch, opts.trt)
    if precision == "int16x8" and (formats != ("tflite",) or not bare_unet or opts.representative_images is None):
        raise ConfigError(
            "int16x8 is a TFLite bare U-Net precision (--tflite --bare-unet, calibrated on representative images): "
            "the edge runner then masks and scores in float32"
        )
    config = detector.config
    if not detector.built:  # Keras exports only built models; one call builds it
        detector(tf.zeros((1, *config.input_shape)))
    representative = _prepare_images(opts.representative_images, config, opts.uint8_input, MAX_CALIBRATION_IMAGES)
    onnx_int8 = _onnx_int8(formats, precision, representative, opts.trt)
    if opts.check_images is not None or opts.tuning_images is not None:  # once, for NNCF and the accuracy check
        opts = _split_check_images(opts, config, nncf=onnx_int8 and opts.int8_recipe.quantizer == "nncf")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = input_spec(config, opts.batch, opts.uint8_input, bare_unet)
    stem = f"{opts.name}_unet" if bare_unet else opts.name
    written: dict[str, Path] = {}
    if bare_unet:
        written["masks"] = _write_masks(detector, out_dir / f"{stem}.masks.npy")
    common = dict(config=config, spec=spec, thresholds=opts.thresholds, preprocessing=opts.preprocessing)
    common.update(masks_file=written.get("masks"), bare_unet=bare_unet)
    calibration = _calibration_inputs(representative, detector, bare_unet)
    if "tflite" in formats:
        log.info(f"export: converting to TFLite ({precision})")
        model, quantization = convert_tflite(detector, spec, precision, calibration, bare_unet)
        path = out_dir / f"{stem}_{precision}.tflite"
        written.update(write_model(path, model, precision, quantization, None, common))
    if "onnx" in formats:
        _write_onnx(detector, out_dir / f"{stem}.onnx", onnx_int8, calibration, common, written, opts)
    if opts.verify:
        probe = representative[:4] if representative is not None else _probe_images(config, opts.uint8_input)
        _verify_written(written, detector, probe, precision)
    if precision != "fp32":
        _check_reduced_precision(written, detector, opts)
    if opts.trt:
        log.info("export: TensorRT engine")
        written.update(export_engine(written["onnx"], precision, representative, written))
    return written


def _verify_written(written: dict, detector, probe: np.ndarray, precision: str) -> None:
    """Runs each written model on `probe` and compares it with the Keras detector (`verify_model`)."""
    for kind in ("tflite", "onnx", "onnx_int8"):
        if kind in written:
            log.info(f"export: checking {written[kind].name} against the Keras detector")
            verify_model(written[kind], detector, probe, "fp32" if kind == "onnx" else precision, written)


def _check_reduced_precision(written: dict, detector, opts: ExportOptions) -> None:
    """The accuracy check of every fp16/int8 model written (`riad_tf.accuracy_check`); a refused one is removed."""
    from edge.metadata import read_metadata, write_metadata
    from edge.runner import Runner

    reduced = [kind for kind in ("tflite", "onnx_int8") if kind in written]
    if not reduced:
        return
    if opts.check_images is None:
        log.warning("export: no real images to check the reduced-precision models on; check them yourself")
        return
    images = opts.check_images
    for kind in reduced:
        path = written[kind]
        try:
            runner = Runner.open(path)
        except ImportError as err:  # the runtime is not installed here
            warnings.warn(f"{path.name}: accuracy not checked ({err})", stacklevel=3)
            continue
        log.info(f"export: checking {path.name} against float32 on {images.count} real images")
        try:
            record = check_accuracy(runner, detector, images, opts.tolerance, path.name, opts.keep_inaccurate)
        except ExportError as err:
            for key in (kind, f"{kind}_metadata"):
                written.pop(key).unlink(missing_ok=True)
            raise ExportError(str(err), written) from None
        metadata = read_metadata(path)
        verification = {**(metadata.verification or {}), "accuracy": record}
        write_metadata(path, dataclasses.replace(metadata, verification=verification))


def _split_check_images(opts: ExportOptions, config, nncf: bool) -> ExportOptions:
    """`opts` with its check images at the model's input; for NNCF, tuning images apart from the judging ones.

    NNCF's accuracy control keeps the int8 model that does best on what it
    tunes on, so a check on the same images would only say that it fitted
    them (on magnetic tile it did, and lost 5 AUPRO points on the test set).
    """
    check = None if opts.check_images is None else _prepared_images(opts.check_images, config, opts.uint8_input)
    if not nncf:
        return dataclasses.replace(opts, check_images=check)
    if opts.tuning_images is not None:
        return dataclasses.replace(
            opts, check_images=check, tuning_images=_prepared_images(opts.tuning_images, config, opts.uint8_input)
        )
    if check is None:
        return opts
    tuning, judging = check.halves()
    if min(len(tuning.good), len(judging.good)) == 0 or (check.defective is not None and len(check.defective) < 2):
        raise ConfigError(
            "int8 with accuracy control splits the check images in two, and needs at least 2 good ones "
            "(and 2 defective ones where there are any)"
        )
    log.info(f"export: NNCF tunes on {tuning.count} of the check images; the other {judging.count} judge its model")
    return dataclasses.replace(opts, check_images=judging, tuning_images=tuning)


def _prepared_images(given: CheckImages, config, uint8_input: bool) -> CheckImages:
    """`given` at the model's input size and dtype."""
    defective = _prepare_images(given.defective, config, uint8_input)
    return dataclasses.replace(
        given,
        good=_prepare_images(given.good, config, uint8_input),
        defective=defective,
        masks=None if given.masks is None or defective is None else given.masks[: len(defective)],
    )


def _onnx_int8(formats, precision: str, representative, trt: bool) -> bool:
    """Whether the ONNX gets an int8 copy (quantized in ONNX Runtime); warns when a precision cannot apply to it."""
    if precision == "int8" and trt and representative is None:
        raise ConfigError("an int8 TensorRT engine needs representative_images for its calibration")
    onnx_int8 = "onnx" in formats and precision == "int8" and representative is not None and not trt
    if "onnx" in formats and precision != "fp32" and not trt and not onnx_int8:
        warnings.warn(
            f"the ONNX model is float32; precision {precision!r} applies to TFLite, to TensorRT engines"
            " and, with representative_images, to an int8 ONNX",
            stacklevel=3,
        )
    return onnx_int8


def _write_onnx(
    detector, path: Path, int8: bool, calibration, common: dict, written: dict, opts: ExportOptions
) -> None:
    """The float32 ONNX at `path`, and with `int8` its int8 copy beside it (`opts.int8_recipe`); adds them to `written`."""
    log.info("export: converting to ONNX")
    spec, bare_unet = common["spec"], common["bare_unet"]
    model, scope = convert_onnx(detector, spec, bare_unet)
    written.update(write_model(path, model, "fp32", "none: float32", scope, common))
    if not int8:
        return
    if scope is None and not bare_unet:
        raise ExportError(f"int8: cannot find the U-Net's layers ({detector.unet.name}) in the ONNX graph", written)
    log.info(f"export: quantizing the ONNX U-Net to int8 on {len(calibration)} calibration inputs")
    if opts.int8_recipe.quantizer == "nncf":
        model, quantization = _nncf_int8(model, scope, calibration, spec.shape[0], opts, written)
    else:
        model, quantization = quantize_onnx(
            model, None if bare_unet else scope, calibration, spec.shape[0], opts.int8_recipe
        )
    int8_path = path.with_name(f"{path.stem}_int8.onnx")
    written.update(write_model(int8_path, model, "int8", quantization, scope, common, key="onnx_int8"))


def _nncf_int8(model: bytes, scope, calibration, batch, opts: ExportOptions, written: dict):
    """`riad_tf.export.nncf_int8.quantize_accuracy_controlled` on the whole detector, tuned on `opts.tuning_images`."""
    from riad_tf.export.nncf_int8 import quantize_accuracy_controlled

    if opts.tuning_images is None or opts.bare_unet:
        raise ExportError("int8 with accuracy control needs the whole detector and real images to tune it on", written)
    return quantize_accuracy_controlled(
        model, scope, calibration, batch, opts.tuning_images, opts.tolerance, layout=opts.int8_recipe.layout
    )


def _check_arguments(formats, precision, batch, trt) -> tuple[str, ...]:
    """Checks export_detector's arguments; returns the formats to write, in `FORMATS` order (ONNX when `trt`)."""
    if isinstance(formats, str):
        formats = (formats,)
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ConfigError(f"unknown export format(s) {sorted(unknown)}; choose from {FORMATS}")
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if batch is not None and (not isinstance(batch, (int, np.integer)) or batch < 1):
        raise ConfigError(f"batch must be a positive int or None (dynamic), got {batch!r}")
    formats = tuple(f for f in FORMATS if f in formats or (f == "onnx" and trt))
    if not formats:
        raise ConfigError("nothing to export: give formats (tflite, onnx) or trt=True")
    return formats


def _prepare_images(images, config, uint8_input: bool, limit: int | None = None) -> np.ndarray | None:
    """Images -> the model's input size, channels and dtype (the device's preprocessing), the first `limit` of them."""
    if images is None:
        return None
    images = np.asarray(images)
    if images.ndim not in (3, 4) or len(images) == 0:
        raise ConfigError(f"representative_images must be a non-empty (N, H, W[, C]) array, got shape {images.shape}")
    images = images[:limit]
    return to_model_input(list(images), config.image_size, config.channels, "uint8" if uint8_input else "float32")


def _probe_images(config, uint8_input: bool) -> np.ndarray:
    """Deterministic smooth test images for the export-time check when no real ones are given."""
    height, width = config.image_size
    rows, cols = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
    rng = np.random.default_rng(0)
    images = []
    for phase in (0.0, 1.3):
        base = 0.5 + 0.3 * np.sin(6 * rows + 4 * cols + phase)
        noisy = base[..., None] + 0.05 * rng.standard_normal((height, width, config.channels))
        images.append(np.clip(noisy, 0, 1).astype(np.float32))
    return to_model_input(images, config.image_size, config.channels, "uint8" if uint8_input else "float32")


def _calibration_inputs(representative, detector, bare_unet: bool) -> np.ndarray | None:
    """What the exported model sees during int8 calibration: images, or masked copies for a bare U-Net."""
    if representative is None or not bare_unet:
        return representative
    if not detector.config.inpainting:
        return representative
    copies = masked_copies(representative, detector.masks)
    step = max(1, len(copies) // MAX_CALIBRATION_IMAGES)
    return copies[::step][:MAX_CALIBRATION_IMAGES]


def _write_masks(detector, path: Path) -> Path:
    """The fixed inference partitions `(|K|, n, H, W, 1)` as uint8 .npy (1 = pixel kept)."""
    buffer = io.BytesIO()
    np.save(buffer, detector.masks.astype(np.uint8))
    return atomic_write_bytes(path, buffer.getvalue())
