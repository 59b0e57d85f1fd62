"""The `riad-tf` command line: train, evaluate, predict, export, demo, benchmark.

Each command parses its options and calls one job (`riad_tf.jobs`,
`riad_tf.export`, `riad_tf.benchmark`); the work happens there. Every command
reads one `RiadConfig` (a YAML file plus command-line overrides) and the run
directory stores it, so export and the edge runtime see the values training used.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

# TensorFlow's C++ start-up chatter (CPU features, missing CUDA) hides the tool's own output;
# errors still surface as Python exceptions. -v shows it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import contextlib
import logging

import click
import yaml

from edge.cli_options import (
    POSITIVE_INT,
    FiniteFloat,
    bundled_options,
    echo_records,
    friendly_errors,
    int_list,
    map_options,
    setup_logging,
    size_mode,
    size_mode_options,
    verbosity_options,
)
from edge.files import atomic_write_text
from edge.metadata import PRECISIONS
from riad_tf.accuracy_check import ACCURACY_CONTROL_IMAGES, CHECK_IMAGES, Tolerance
from riad_tf.config import MIXED_PRECISION, STRATEGIES, RiadConfig

_friendly_errors = friendly_errors  # one line and an exit status per kind of error (edge/errors.py)
log = logging.getLogger("riad_tf.cli")


@contextlib.contextmanager
def _native_stderr_silenced():
    """Sends what native code writes to file descriptor 2 to /dev/null inside the block."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _start_tensorflow(verbose: int, threads: int | None = None, strategy: str | None = None):
    """Imports TensorFlow and runs one op; without -v its C++ start-up lines and converter chatter stay hidden.

    TensorFlow 2.21 writes them through absl before TF_CPP_MIN_LOG_LEVEL takes effect, so they are
    silenced at the file-descriptor level, only while TensorFlow starts. Thread settings and a
    `tf.distribute` strategy (`strategy`: a config's name) must come before the first op, so they
    are made here too.

    Returns:
        The strategy made, or None.
    """
    import riad_tf  # noqa: F401  (CPU defaults before TensorFlow)

    log.info("starting TensorFlow (a few seconds)")
    made = None
    with contextlib.nullcontext() if verbose else _native_stderr_silenced():
        import tensorflow as tf

        _set_tensorflow_threads(threads)
        if strategy is not None:
            from riad_tf.distribute import make_strategy

            made = make_strategy(strategy)
        tf.constant(0.0).numpy()  # the eager context's own start-up lines
    if not verbose:
        tf.get_logger().setLevel(logging.ERROR)
        for name in ("tf2onnx", "absl"):
            logging.getLogger(name).setLevel(logging.ERROR)
    return made


def _verbosity() -> int:
    return click.get_current_context().find_root().params.get("verbose", 0)


class _TensorFlowCommand(click.Command):
    """A command that needs TensorFlow: started (quietly) once its options have parsed, so --help stays fast."""

    def invoke(self, ctx):
        _start_tensorflow(_verbosity())
        return super().invoke(ctx)


def _json_option(command):
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON summary on stdout.")(command)


def _folders(name: str, help: str, multiple: bool = True):
    return (name,), dict(multiple=multiple, type=click.Path(exists=True, file_okay=False), help=help)


# The data set, for `train` and `evaluate`: the command receives the values as one dict, `data`.
_data_options = bundled_options(
    "data",
    [
        (
            ("--data", "data_path"),
            dict(
                type=click.Path(exists=True, file_okay=False),
                help="Data-set folder (MVTec category, magnetic-tile root, or a video data set).",
            ),
        ),
        (
            ("--layout",),
            dict(
                type=click.Choice(["auto", "mvtec", "magnetic_tile", "folders", "ped2", "avenue", "video"]),
                default="auto",
                show_default=True,
                help="Image layouts, or video: ped2, avenue, video (train/, test/, labels.csv); see docs/video.md.",
            ),
        ),
        _folders("--normal", "Folder of good images (folders layout; repeatable)."),
        _folders("--abnormal", "Folder of defective images (repeatable)."),
        _folders("--masks", "Folder of masks NAME_mask.png or NAME.png (default: beside the images).", multiple=False),
        _folders("--test-normal", "Folder of good test images (default: a share of --normal)."),
        (
            ("--skip-unreadable",),
            dict(is_flag=True, help="Skip unreadable images (and say how many) instead of stopping."),
        ),
    ],
)

# Config values `train` takes as options of their own (any other: --set): one dict, `overrides`.
_training_options = bundled_options(
    "overrides",
    [
        (("--epochs",), dict(type=int, help="Training epochs (config 'epochs').")),
        (("--batch-size",), dict(type=int, help="Images per step and replica (config 'batch_size').")),
        (
            ("--learning-rate",),
            dict(type=float, help="Peak Adam learning rate of the schedule (config 'learning_rate')."),
        ),
        (("--image-size",), dict(type=int, help="Square input size (divisible by 16).")),
        (
            ("--scale",),
            dict(
                type=float,
                help="Train on random --image-size crops of the images resized by this (1.0: native pixels) and "
                "score every image in tiles at that scale (config 'scale'; docs/linescan.md).",
            ),
        ),
        (
            ("--strategy",),
            dict(
                type=click.Choice(STRATEGIES),
                help="Where to train (config 'strategy'); --batch-size is per replica. See docs/distributed.md.",
            ),
        ),
        (
            ("--mixed-precision",),
            dict(
                type=click.Choice(MIXED_PRECISION),
                help="Training precision (config 'mixed_precision'); auto: float16 on GPUs, bfloat16 on CPUs with "
                "AMX/AVX512-BF16 or with --xla, else float32.",
            ),
        ),
        (("--xla/--no-xla",), dict(default=None, help="Compile the training step with XLA (config 'xla').")),
    ],
)


def _data_spec(data: dict) -> dict | None:
    """The data set the data options name, or None when they name none (the run's own is used)."""
    from riad_tf.data import data_spec

    if not (data["data_path"] or data["normal"]):
        return None
    keys = ("data_path", "layout", "normal", "abnormal", "masks", "test_normal")
    return data_spec(*(data[k] for k in keys))


def _parse_sets(pairs) -> dict:
    values = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--set")
        try:
            values[key.strip()] = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise click.BadParameter(
                f"{pair!r}: not a YAML value ({str(err).splitlines()[0]})", param_hint="--set"
            ) from None
    return values


def _config_from_options(config_path, overrides: dict) -> RiadConfig:
    config = RiadConfig.load(config_path) if config_path else RiadConfig()
    return config.with_overrides({k: v for k, v in overrides.items() if v is not None})


@click.group()
@click.version_option(package_name="riad-tf")
@verbosity_options
def main(verbose, quiet):
    """RIAD: reconstruction-by-inpainting anomaly detection (Zavrtanik et al. 2020).

    Human messages go to stderr, machine output (JSON) to stdout.
    """
    setup_logging(verbose, quiet)


@main.command()
@click.option(
    "--config", "config_path", type=click.Path(exists=True, dir_okay=False), help="YAML config (see configs/)."
)
@_data_options
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Run directory (re-run to resume).")
@_training_options
@click.option(
    "--set", "sets", multiple=True, metavar="KEY=VALUE", help="Any config value, e.g. --set ks=[2,4] (repeatable)."
)
@click.option("--no-progress", is_flag=True, help="No live bar; one line per epoch (always so off a terminal).")
@_json_option
@_friendly_errors
def train(config_path, data, out, overrides, sets, no_progress, as_json):
    """Train on good images, then calibrate thresholds on held-out good images.

    \b
    Example:
      riad-tf train --config configs/default.yaml --data path/to/mvtec/bottle --out runs/bottle
      riad-tf train --normal good/ --out runs/part --set epochs=50
    """
    from riad_tf.jobs import train_job
    from riad_tf.run import MODEL_FILE

    if overrides["image_size"]:
        overrides["image_size"] = (overrides["image_size"],) * 2
    config = _config_from_options(config_path, {**overrides, **_parse_sets(sets)})
    strategy = _start_tensorflow(_verbosity(), strategy=config.strategy)
    thresholds = train_job(config, _data_spec(data), out, not no_progress, data["skip_unreadable"], strategy=strategy)
    if thresholds is None:
        return  # a non-chief worker of a multi-worker job
    log.info(f"model: {Path(out) / MODEL_FILE}")
    log.info(
        f"threshold: {thresholds['image']:.5f} (images and regions; false-positive rate at most "
        f"{thresholds['supported_fpr']:.3g} for a target of {config.target_fpr:g}, from {thresholds['num_images']} "
        "held-out good images)"
    )
    if "false_alarms_per_1000_lines" in thresholds:
        log.info(
            f"on a line: at most about {thresholds['false_alarms_per_1000_lines']:.3g} false alarms per 1000 lines "
            f"at the training scale (calibration images {thresholds['lines_per_image']:.0f} lines tall)"
        )
    if as_json:
        click.echo(json.dumps({"run": str(out), "model": str(Path(out) / MODEL_FILE), "thresholds": thresholds}))


@main.command(cls=_TensorFlowCommand)
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@_data_options
@click.option("--out", type=click.Path(file_okay=False), help="Output folder (default RUN/eval).")
@click.option("--batch-size", type=POSITIVE_INT, default=4, show_default=True, help="Images per detector call.")
@click.option("--no-report", is_flag=True, help="Metrics only, no HTML report.")
@_json_option
@_friendly_errors
def evaluate(run_dir, data, out, batch_size, no_report, as_json):
    """Image AUROC, pixel AUROC, AUPRO and F1 on the test images, overall and per defect type.

    \b
    Example:
      riad-tf evaluate runs/bottle        # writes runs/bottle/eval/report/index.html
    """
    from riad_tf.jobs import evaluate_job
    from riad_tf.run import METRICS_TABLE_FILE, REPORT_DIR, eval_dir

    out = Path(out or eval_dir(run_dir))
    summary = evaluate_job(
        run_dir,
        _data_spec(data),
        out,
        batch_size=batch_size,
        report=not no_report,
        skip_unreadable=data["skip_unreadable"],
    )
    log.info((out / METRICS_TABLE_FILE).read_text().rstrip())
    if not no_report:
        log.info(f"report: {out / REPORT_DIR / 'index.html'}")
    if as_json:
        click.echo(json.dumps(summary))
    return summary


@main.command(cls=_TensorFlowCommand)
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True))
@map_options
@click.option("--batch-size", type=POSITIVE_INT, default=4, show_default=True, help="Images per detector call.")
@size_mode_options
@click.option(
    "--image-threshold", type=FiniteFloat(), default=None, help="Override the calibrated image (and region) threshold."
)
@_friendly_errors
def predict(run_dir, images, maps_dir, float_maps, batch_size, tile, resize, image_threshold):
    """Score images: one JSON line per image, as `riad-edge infer` writes them.

    Each line holds path and score; with a threshold `anomalous`, `threshold`,
    its source and the `regions` above it (boxes in image pixels). An image that
    cannot be scored gets a line with `error`; the others are still scored, and
    the exit status is 1 at the end. IMAGES may be files or folders.

    \b
    Example:
      riad-tf predict runs/bottle new/*.png --maps-dir maps
    """
    from edge.images import find_images
    from riad_tf.jobs import predict_images

    records = predict_images(
        run_dir, find_images(images), maps_dir, batch_size, size_mode(tile, resize), image_threshold, float_maps
    )
    echo_records(records)


@main.command(cls=_TensorFlowCommand)
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--good",
    multiple=True,
    required=True,
    type=click.Path(exists=True),
    help="Good images (files or folders) training never saw; repeatable.",
)
@click.option(
    "--target-fpr",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=None,
    help="False-positive rate to keep (default: the run's target_fpr).",
)
@click.option(
    "--min-region-area",
    type=click.IntRange(min=1),
    default=None,
    help="Smallest anomalous region in pixels (default: the run's).",
)
@click.option("--batch-size", type=POSITIVE_INT, default=4, show_default=True, help="Images per detector call.")
@_json_option
@_friendly_errors
def calibrate(run_dir, good, target_fpr, min_region_area, batch_size, as_json):
    """New thresholds from good images, without retraining (docs/method.md, "Thresholds").

    Says what changed and, for each model exported from the run that is still
    there, the `riad-edge set-thresholds` command that brings it up to date
    (docs/deployment.md, "Recalibration").

    \b
    Example:
      riad-tf calibrate runs/bottle --good more_good_parts/ --target-fpr 0.01
    """
    from riad_tf.jobs import calibrate_job

    summary = calibrate_job(run_dir, [Path(p) for p in good], target_fpr, min_region_area, batch_size)
    for line in _recalibration_lines(summary):
        log.info(line)
    if as_json:
        click.echo(json.dumps(summary))


def _recalibration_lines(summary: dict) -> list[str]:
    """The human lines of `riad-tf calibrate`: the thresholds before and after, then the exports to update."""

    def change(key: str) -> str:
        old, new = summary[key]["old"], summary[key]["new"]
        return f"{key} threshold {'none' if old is None else f'{old:.6g}'} -> {new:.6g}"

    lines = [
        f"{summary['thresholds_file']}: {change('image')}, {change('region')} (target false-positive rate "
        f"{summary['target_fpr']:g}, {summary['num_images']} good images)"
    ]
    commands = summary["commands"]
    if commands:
        lines.append(
            f"{len(commands)} model(s) exported from this run still hold the old thresholds; update each, and every "
            "copy deployed elsewhere, with:"
        )
        lines += [f"  {command}" for command in commands]
    else:
        lines.append(
            "no model exported from this run is on record here; update any exported before with: "
            f"riad-edge set-thresholds MODEL --from {summary['run']}"
        )
    return lines


@main.command(cls=_TensorFlowCommand)
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--out", type=click.Path(file_okay=False), help="Folder for the models and their metadata (--tflite/--onnx/--trt)."
)
@click.option("--tflite", is_flag=True, help="TensorFlow Lite model.")
@click.option("--onnx", is_flag=True, help="ONNX model (TensorRT's parser accepts it).")
@click.option("--trt", is_flag=True, help="TensorRT engine (needs tensorrt and an NVIDIA GPU here).")
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default="fp32",
    show_default=True,
    help="Weights and activations (int8 and int16x8 calibrate on the run's training images; int16x8 is for "
    "--tflite --bare-unet; docs/deployment.md).",
)
@click.option(
    "--fixed-batch",
    type=click.IntRange(min=0),
    default=1,
    show_default=True,
    help="The model's fixed batch; 0 for a dynamic batch.",
)
@click.option("--uint8-input", is_flag=True, help="Take uint8 images (0-255) instead of float [0, 1].")
@click.option("--bare-unet", is_flag=True, help="Export only the U-Net; the edge runner does masks and scoring.")
@click.option(
    "--triton",
    type=click.Path(file_okay=False),
    help="Triton model repository: the float32 ONNX, dynamic batch, with its config.pbtxt (docs/triton.md).",
)
@click.option("--triton-name", default="riad", show_default=True, help="The model's name in the Triton repository.")
@click.option(
    "--triton-instance",
    type=click.Choice(["gpu", "cpu"]),
    default="gpu",
    show_default=True,
    help="Where Triton runs it.",
)
@click.option("--triton-max-batch", type=POSITIVE_INT, default=8, show_default=True, help="Triton's max_batch_size.")
@click.option(
    "--max-auroc-drop",
    type=click.FloatRange(0, 100),
    default=Tolerance.max_auroc_drop,
    show_default=True,
    help="fp16/int8: the most image or pixel AUROC (points) the model may lose against float32 on the run's images.",
)
@click.option(
    "--max-map-error",
    type=click.FloatRange(0),
    default=Tolerance.max_map_error,
    show_default=True,
    help="fp16/int8: the largest mean map change, as a share of the mean float32 map.",
)
@click.option("--keep-inaccurate", is_flag=True, help="Keep an fp16/int8 model over those tolerances (with a warning).")
@click.option(
    "--check-images",
    type=POSITIVE_INT,
    default=None,
    help="fp16/int8: the most held-out good and the most defective images, each, the export check scores "
    f"[default: {CHECK_IMAGES}; {ACCURACY_CONTROL_IMAGES} with --int8-quantizer nncf, which tunes on half of them].",
)
@click.option(
    "--int8-quantizer",
    type=click.Choice(["onnxruntime", "nncf"]),
    default="onnxruntime",
    show_default=True,
    help="int8 ONNX: ONNX Runtime's static quantization, or NNCF's with accuracy control (layers that cost more "
    "than the tolerances above stay float32; the [int8] extra).",
)
@click.option(
    "--int8-activations",
    type=click.Choice(["uint8", "symmetric"]),
    default="uint8",
    show_default=True,
    help="int8 ONNX by onnxruntime: uint8 activations, or int8 symmetric ones (the QDQ model TensorRT's explicit "
    "quantization builds from: riad-edge build-engine).",
)
@click.option(
    "--int8-layout",
    type=click.Choice(["onnxruntime", "openvino"]),
    default="onnxruntime",
    show_default=True,
    help="int8 ONNX by nncf: the layout ONNX Runtime fuses into int8 kernels, or NNCF's own, which OpenVINO runs "
    "faster (docs/deployment.md).",
)
@_json_option
@_friendly_errors
def export(
    run_dir,
    out,
    tflite,
    onnx,
    trt,
    precision,
    fixed_batch,
    uint8_input,
    bare_unet,
    triton,
    triton_name,
    triton_instance,
    triton_max_batch,
    max_auroc_drop,
    max_map_error,
    keep_inaccurate,
    check_images,
    int8_quantizer,
    int8_activations,
    int8_layout,
    as_json,
):
    """Export the whole RIAD inference for the device (TFLite, ONNX, TensorRT) or a Triton server.

    \b
    Example:
      riad-tf export runs/bottle --tflite --onnx --out deploy/bottle
      riad-tf export runs/bottle --onnx --precision int8 --out deploy/bottle-int8
      riad-tf export runs/bottle --onnx --precision int8 --int8-quantizer nncf --out deploy/bottle-int8
      riad-tf export runs/bottle --onnx --precision int8 --int8-quantizer nncf --int8-layout openvino --out deploy/ov
    """
    from riad_tf.export import export_run, export_triton
    from riad_tf.export.onnx import Int8Recipe
    from riad_tf.run import representative_images

    formats = tuple(name for name, on in (("tflite", tflite), ("onnx", onnx)) if on)
    if not formats and not trt and not triton:
        raise click.UsageError("choose at least one of --tflite, --onnx, --trt, --triton")
    if (formats or trt) and not out:
        raise click.UsageError("--tflite, --onnx and --trt need --out")
    if triton and (bare_unet or (precision != "fp32" and not formats and not trt)):
        raise click.UsageError("--triton serves the whole float32 detector; --bare-unet and --precision do not apply")
    if int8_layout != "onnxruntime" and int8_quantizer != "nncf":
        raise click.UsageError("--int8-layout lays out NNCF's model: it needs --int8-quantizer nncf")
    written = {}
    if triton:  # first: a --trt export stops with an error where this machine has no TensorRT
        written |= export_triton(
            run_dir,
            triton,
            model_name=triton_name,
            max_batch=triton_max_batch,
            instance_kind=triton_instance,
            uint8_input=uint8_input,
        )
    if formats or trt:
        representative = representative_images(run_dir) if precision in ("int8", "int16x8") else None
        written |= export_run(
            run_dir,
            out,
            formats=formats,
            precision=precision,
            batch=fixed_batch or None,
            uint8_input=uint8_input,
            bare_unet=bare_unet,
            trt=trt,
            representative_images=representative,
            check_images=_check_images(run_dir, check_images, int8_quantizer) if precision != "fp32" else None,
            tolerance=Tolerance(max_auroc_drop, max_map_error),
            keep_inaccurate=keep_inaccurate,
            int8_recipe=Int8Recipe(
                symmetric_activations=int8_activations == "symmetric", quantizer=int8_quantizer, layout=int8_layout
            ),
        )
    for kind, path in written.items():
        log.info(f"{kind}: {path}")
    if as_json:
        click.echo(json.dumps({k: str(v) for k, v in written.items()}))


def _check_images(run_dir, limit: int | None, int8_quantizer: str):
    """The export check's images: up to `limit` held-out good and defective ones each (None: the default)."""
    from riad_tf.run import check_images

    if limit is None:  # more for NNCF, which tunes on half of them
        limit = ACCURACY_CONTROL_IMAGES if int8_quantizer == "nncf" else CHECK_IMAGES
    return check_images(run_dir, limit)


@main.command(cls=_TensorFlowCommand)
@click.option("--out", type=click.Path(file_okay=False), default="riad-demo", show_default=True, help="Demo folder.")
@click.option("--epochs", type=POSITIVE_INT, default=None, help="Override the demo's epochs.")
@click.option("--no-progress", is_flag=True, help="No live bar; one line per epoch (always so off a terminal).")
@_friendly_errors
def demo(out, epochs, no_progress):
    """Synthetic inspection data -> train a small model -> evaluate -> HTML report.

    \b
    Example:
      riad-tf demo --out riad-demo      # a few minutes on a laptop CPU
    """
    from riad_tf.jobs import demo_job

    paths = demo_job(Path(out), epochs=epochs, progress=not no_progress)
    click.echo(json.dumps({k: str(v) for k, v in paths.items()}, indent=2))


def _set_tensorflow_threads(threads: int | None) -> None:
    """TensorFlow's intra-op threads (inter-op 1, so ops do not compete for cores); a no-op once TensorFlow runs."""
    import tensorflow as tf

    if not threads:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(int(threads))
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        log.warning("note: TensorFlow is already initialised; its thread settings stay as they are")


class _BenchmarkCommand(click.Command):
    """Sets TensorFlow's threads (`--threads`) before TensorFlow starts, then starts it as `_TensorFlowCommand`."""

    def invoke(self, ctx):
        _start_tensorflow(_verbosity(), ctx.params.get("threads"))
        return super().invoke(ctx)


@main.command(cls=_BenchmarkCommand)
@click.option(
    "--config", "config_path", type=click.Path(exists=True, dir_okay=False), help="YAML config (default: the paper's)."
)
@click.option("--image-size", type=int, help="Square input size (default: the config's, 256).")
@click.option("--widths", help="U-Net widths, e.g. 64,128,256,512,512 (default: the config's).")
@click.option(
    "--width-multiplier", type=float, help="Config 'width_multiplier': scales every width (operating points)."
)
@click.option("--batch-sizes", "batches", default="1,4", show_default=True, help="Images per call, comma-separated.")
@click.option(
    "--paths",
    default="keras,xla,onnx",
    show_default=True,
    help="Any of keras,xla,onnx,onnx-int8,tflite-fp32,tflite-fp16,tflite-int8.",
)
@click.option("--iters", type=POSITIVE_INT, default=3, show_default=True, help="Timed calls per measurement.")
@click.option("--warmup", type=click.IntRange(min=0), default=1, show_default=True, help="Untimed calls before timing.")
@click.option(
    "--threads",
    type=int,
    default=os.cpu_count(),
    show_default=True,
    help="CPU threads of TensorFlow, ONNX Runtime and LiteRT.",
)
@click.option(
    "--sequential/--no-sequential", default=True, show_default=True, help="Compare with the per-k, per-mask loop."
)
@click.option("--scaling", is_flag=True, help="Scaling tables over batch size and image size (keras path).")
@click.option("--scaling-batches", default="1,2,4,8,16,32", show_default=True, help="Batch sizes of the scaling table.")
@click.option("--scaling-sizes", default="64,128,256,512", show_default=True, help="Image sizes of the scaling table.")
@click.option("--training", is_flag=True, help="Training images/s, float32 and mixed bfloat16.")
@click.option(
    "--train-batch", type=POSITIVE_INT, default=8, show_default=True, help="Batch of the training measurement."
)
@click.option("--peak-size", type=POSITIVE_INT, default=2048, show_default=True, help="Matrix size of the matmul peak.")
@click.option(
    "--quick", is_flag=True, help="Short run: 2 timed calls, scaling batch 1,2,4 and sizes 64,128, 1024^2 peak."
)
@click.option("--json-file", "json_path", type=click.Path(dir_okay=False), help="Also write the report as JSON here.")
@_friendly_errors
def benchmark(
    config_path,
    image_size,
    widths,
    width_multiplier,
    batches,
    paths,
    iters,
    warmup,
    threads,
    sequential,
    scaling,
    scaling_batches,
    scaling_sizes,
    training,
    train_batch,
    peak_size,
    quick,
    json_path,
):
    """FLOPs, machine peak, images/s per inference path, scaling and training speed (docs/benchmark.md).

    \b
    Example:
      riad-tf benchmark --image-size 128 --json-file bench.json
    """
    from riad_tf.benchmark import benchmark_report, format_report

    overrides = {"image_size": (image_size, image_size) if image_size else None, "widths": int_list(widths) or None}
    config = _config_from_options(config_path, overrides)
    if width_multiplier is not None:
        config = config.with_overrides({"width_multiplier": width_multiplier})
    if quick:
        iters, peak_size = min(iters, 2), min(peak_size, 1024)
        scaling_batches, scaling_sizes = "1,2,4", "64,128"
    report = benchmark_report(
        config,
        paths=tuple(p.strip() for p in paths.split(",") if p.strip()),
        batches=int_list(batches),
        iters=iters,
        warmup=warmup,
        threads=threads,
        sequential=sequential,
        scaling_batches=int_list(scaling_batches) if scaling else (),
        scaling_sizes=int_list(scaling_sizes) if scaling else (),
        training=training,
        train_batch=train_batch,
        peak_size=peak_size,
    )
    click.echo(format_report(report))
    if json_path:
        atomic_write_text(json_path, json.dumps(report, indent=2) + "\n")
        click.echo(f"json: {json_path}")


if __name__ == "__main__":
    sys.exit(main())
