"""The `riad-edge` command line: run exported RIAD models on a device, without TensorFlow.

    riad-edge infer MODEL IMAGES... [--maps-dir DIR]     one JSON line per image
    riad-edge bench MODEL [--batch-sizes 1,4] [--iters N]      latency p50/p99, images/s
    riad-edge build-engine ONNX [--fp16|--int8 --calib DIR] --output FILE   (TensorRT)
    riad-edge engine-metadata ENGINE --onnx ONNX --precision P           (for trtexec engines)
    riad-edge set-thresholds MODEL... --from RUN         a recalibrated run's thresholds into the models
    riad-edge stream MODEL --source SRC [--frame-height H --overlap O]   line-scan inspection
    riad-edge video MODEL VIDEO [--window N] [--normalise] --output scores.csv   frame scores, smoothed

MODEL is a `.tflite`, `.onnx` or `.engine` file with its `MODEL.json` beside it.
Expected failures (missing files, bad images, no TensorRT) end with a one-line
message and exit status 1.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click
import numpy as np

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
from edge.errors import InputError
from edge.images import IMAGE_EXTENSIONS, find_images, load_image, to_model_input
from edge.metadata import read_metadata
from edge.predictions import MapNames, warn_if_uncalibrated, with_overrides

log = logging.getLogger("edge.cli")
STREAM_FREE_BYTES = 16 * 2**20  # refused below this: a stream writes about 0.3 kB a frame, for hours


_friendly_errors = friendly_errors  # one line and an exit status per kind of error (edge/errors.py)


_model_argument = click.argument("model", type=click.Path(exists=True, dir_okay=False))
_runtime_options = bundled_options(
    "runtime_options",
    [
        (("--threads",), dict(type=POSITIVE_INT, default=None, help="CPU threads of the runtime.")),
        (
            ("--max-batch",),
            dict(type=POSITIVE_INT, default=None, help="Most inputs per model call (default: from --memory-mb)."),
        ),
        (("--memory-mb",), dict(type=POSITIVE_INT, default=1024, show_default=True, help="Activation memory budget.")),
        (
            ("--no-integrity-check",),
            dict(is_flag=True, help="Run a model whose metadata has no sha256 (not recommended)."),
        ),
        (
            ("--runtime",),
            dict(
                type=click.Choice(["onnxruntime", "openvino"]),
                default=None,
                help="Runtime for an .onnx model (default: onnxruntime). OpenVINO suits Intel CPUs and iGPUs.",
            ),
        ),
        (
            ("--provider",),
            dict(
                type=click.Choice(["cpu", "cuda", "tensorrt", "openvino"]),
                default=None,
                help="ONNX Runtime execution provider (default: every one installed). A missing one is an error.",
            ),
        ),
        (("--openvino-device",), dict(default=None, help="--runtime openvino: CPU (default), GPU, AUTO, ...")),
        (
            ("--openvino-precision",),
            dict(
                type=click.Choice(["f32", "bf16", "f16"]),
                default=None,
                help="--runtime openvino: inference precision (default f32, which keeps the exported model's scores).",
            ),
        ),
    ],
)


def _open_runner(
    model, threads, max_batch, memory_mb, no_integrity_check, runtime, provider, openvino_device, openvino_precision
):
    """The `Runner` the runtime options ask for (`_runtime_options` passes their values)."""
    from edge.onnxrt import execution_providers
    from edge.openvino import OpenVinoSettings
    from edge.runner import Runner

    if no_integrity_check:
        log.warning(f"{model}: --no-integrity-check: the model is run without checking its sha256")
    onnx = str(model).endswith(".onnx")
    if (provider is not None or runtime is not None) and not onnx:
        raise click.UsageError("--runtime and --provider are for .onnx models")
    if provider is not None and runtime == "openvino":
        raise click.UsageError("--provider picks an ONNX Runtime provider; it does not go with --runtime openvino")
    if (openvino_device or openvino_precision) and runtime != "openvino":
        raise click.UsageError("--openvino-device and --openvino-precision need --runtime openvino")
    return Runner.open(
        model,
        threads=threads,
        max_batch=max_batch,
        memory_mb=memory_mb,
        verify=not no_integrity_check,
        providers=execution_providers(provider),
        openvino=OpenVinoSettings(openvino_device or "CPU", openvino_precision or "f32")
        if runtime == "openvino"
        else None,
    )


@click.group()
@click.version_option(package_name="riad-tf")
@verbosity_options
def main(verbose, quiet):
    """Run exported RIAD anomaly detectors (TFLite, ONNX, TensorRT) without TensorFlow.

    Human messages go to stderr, machine output (JSON lines, docs/records.md) to stdout.
    """
    setup_logging(verbose, quiet)


@main.command()
@_model_argument
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True))
@map_options
@click.option("--batch-size", type=POSITIVE_INT, default=8, show_default=True, help="Images per runner call.")
@size_mode_options
@click.option(
    "--image-threshold", type=FiniteFloat(), default=None, help="Override the calibrated image (and region) threshold."
)
@_runtime_options
@_friendly_errors
def infer(
    model,
    images,
    maps_dir,
    float_maps,
    batch_size,
    tile,
    resize,
    image_threshold,
    runtime_options,
):
    """Score image files: one JSON line per image (docs/deployment.md, "Verdicts").

    Each line holds path and score; with a threshold `anomalous`, `threshold`,
    its source and the `regions` above it (boxes in image pixels); with
    --maps-dir the map file (0 -> black, twice the region threshold -> white).
    An image that cannot be scored gets a line with `error`, the others are
    still scored, and the exit status is 1 at the end. IMAGES may be files or folders.

    \b
    Example:
      riad-edge infer deploy/bottle/riad.onnx images/ --maps-dir maps
      riad-edge infer deploy/line/riad.onnx big_scan.png --tile
    """
    from edge.inspection import inspect_files

    runner = _open_runner(model, **runtime_options)
    paths = find_images(images)
    if not paths:
        raise click.ClickException(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {', '.join(images)}")
    thresholds = with_overrides(runner.thresholds, image_threshold)
    warn_if_uncalibrated(thresholds, model)
    preprocessing = runner.metadata.preprocessing
    records = inspect_files(
        paths,
        runner,
        runner.image_size,
        runner.channels,
        thresholds,
        preprocessing=preprocessing,
        mode=size_mode(tile, resize),
        maps=MapNames(maps_dir, thresholds, float_maps) if maps_dir is not None else None,
        batch_size=max(1, batch_size),
    )
    echo_records(records)


@main.command()
@_model_argument
@click.option("--batch-sizes", "batches", default="1", show_default=True, help="Comma-separated batch sizes, e.g. 1,4.")
@click.option("--iters", type=POSITIVE_INT, default=20, show_default=True, help="Timed calls per batch size.")
@click.option("--warmup", type=click.IntRange(min=0), default=3, show_default=True, help="Untimed calls first.")
@_runtime_options
@_friendly_errors
def bench(model, batches, iters, warmup, runtime_options):
    """Latency (p50, p99 per call) and images/s for each batch size: one JSON line each.

    \b
    Example:
      riad-edge bench deploy/bottle/riad_fp32.tflite --batch-sizes 1,4
    """
    from edge.bench import benchmark

    runner = _open_runner(model, **runtime_options)
    for record in benchmark(runner, int_list(batches, positive=True, what="batch sizes"), iters=iters, warmup=warmup):
        click.echo(json.dumps({"model": Path(model).name, **record}))


def _load_calibration(calib_dir: Path, metadata) -> np.ndarray:
    """Every `.npy` (N, H, W[, C]) and image file in `calib_dir`, at the model's size and dtype."""
    images = []
    for path in sorted(calib_dir.iterdir()):
        if path.suffix.lower() == ".npy":
            array = np.load(path)
            images.extend(array if array.ndim in (3, 4) else [array])
        elif path.suffix.lower() in IMAGE_EXTENSIONS:
            images.append(load_image(path))
    if not images:
        raise InputError(f"{calib_dir}: no .npy or image files to calibrate with")
    return to_model_input(images, metadata.image_size, metadata.channels, metadata.input_dtype)


@main.command("build-engine")
@click.argument("onnx", type=click.Path(exists=True, dir_okay=False))
@click.option("--output", required=True, type=click.Path(dir_okay=False), help="Engine file to write (.engine).")
@click.option("--fp16", "precision", flag_value="fp16", help="Allow FP16 kernels in the U-Net.")
@click.option("--int8", "precision", flag_value="int8", help="INT8 U-Net, calibrated on --calib.")
@click.option("--calib", type=click.Path(exists=True, file_okay=False), help="Folder of .npy or image files (INT8).")
@click.option(
    "--max-profile-batch",
    type=POSITIVE_INT,
    default=None,
    help="Largest batch of the engine's profile (dynamic-batch ONNX).",
)
@click.option(
    "--workspace-mb", type=POSITIVE_INT, default=2048, show_default=True, help="TensorRT's builder workspace."
)
@_friendly_errors
def build_engine(onnx, output, precision, calib, max_profile_batch, workspace_mb):
    """Build a TensorRT engine from an exported ONNX, on the device that will run it.

    Without --fp16 or --int8 the engine is FP32. Needs the tensorrt Python
    package (JetPack's on a Jetson) and an NVIDIA GPU; writes OUTPUT and OUTPUT.json.

    \b
    Example:
      riad-edge build-engine deploy/bottle/riad.onnx --fp16 --output riad.engine
      riad-edge build-engine deploy/bottle/riad_int8.onnx --int8 --output riad_int8.engine   # symmetric QDQ: no --calib
    """
    from edge import trt, trt_build

    precision = precision or "fp32"
    metadata = read_metadata(onnx)
    reason = trt.unavailable_reason()
    if reason is not None:
        raise click.ClickException(f"cannot build a TensorRT engine here: {reason}")
    calibration = _load_calibration(Path(calib), metadata) if calib else None
    if precision != "int8" and calibration is not None:
        raise click.UsageError("--calib is for --int8 only")
    engine, engine_metadata = trt_build.build_engine(
        onnx,
        output,
        precision=precision,
        calibration=calibration,
        max_batch=max_profile_batch,
        workspace_mb=workspace_mb,
    )
    click.echo(json.dumps({"engine": str(engine), "metadata": str(engine_metadata)}))


@main.command("engine-metadata")
@click.argument("engine", type=click.Path(exists=True, dir_okay=False))
@click.option("--onnx", required=True, type=click.Path(exists=True, dir_okay=False), help="The ONNX it was built from.")
@click.option(
    "--precision", type=click.Choice(["fp32", "fp16", "int8"]), required=True, help="What trtexec built it with."
)
@_friendly_errors
def engine_metadata(engine, onnx, precision):
    """Write ENGINE.json for an engine built with trtexec from an exported ONNX.

    \b
    Example:
      riad-edge engine-metadata riad.engine --onnx deploy/bottle/riad.onnx --precision fp16
    """
    from edge.trt_build import write_engine_metadata

    click.echo(json.dumps({"metadata": str(write_engine_metadata(engine, onnx, precision))}))


@main.command("set-thresholds")
@click.argument("models", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--from",
    "source",
    required=True,
    type=click.Path(exists=True),
    help="A riad-tf run folder (its thresholds.json and config.yaml), or a thresholds.json.",
)
@click.option(
    "--force", is_flag=True, help="Set them even where the run's config differs from a model's, or is missing."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON line per model on stdout.")
@_friendly_errors
def set_thresholds_command(models, source, force, as_json):
    """Put a recalibrated run's thresholds into exported models, in both metadata copies (docs/deployment.md).

    Each model's metadata inside the .onnx or .tflite file and the JSON beside it
    get the thresholds of RUN/thresholds.json (a TensorRT engine: its JSON), once
    the run's config is checked to be the model's. Prints one line per model:
    the image threshold before and after.

    \b
    Example:
      riad-edge set-thresholds deploy/bottle/riad.onnx deploy/bottle/riad_fp32.tflite --from runs/bottle
    """
    from edge.recalibration import read_run_thresholds, set_thresholds

    for update in set_thresholds(models, read_run_thresholds(source), force):
        log.info(update.line())
        if as_json:
            click.echo(json.dumps(update.record()))


def _stride(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        parts = [int(v) for v in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"{value!r}: give ROWS,COLUMNS or one int") from None
    if len(parts) not in (1, 2) or min(parts) < 1:
        raise click.BadParameter(f"{value!r}: give ROWS,COLUMNS or one positive int")
    return (parts[0], parts[-1])


@main.command()
@_model_argument
@click.option(
    "--source", required=True, help="DIR, VIDEO, IMAGE (replayed), raw:-|raw:FILE, tcp://127.0.0.1:PORT or PLUGIN:ARGS."
)
@click.option(
    "--frame-height",
    type=POSITIVE_INT,
    default=None,
    help="Lines per frame (default: about 256, fitted to the tile grid).",
)
@click.option(
    "--overlap",
    type=click.IntRange(min=0),
    default=None,
    help="Lines shared by consecutive frames (default: a tile less one stride, at the model's scale).",
)
@click.option(
    "--stride", default=None, help="Tile stride ROWS,COLUMNS in model pixels (default: the model's tile_stride)."
)
@click.option(
    "--policy",
    type=click.Choice(["block", "drop"]),
    default="block",
    show_default=True,
    help="When inference falls behind: hold the capture back, or drop frames (counted).",
)
@click.option(
    "--queue",
    "queue_size",
    type=POSITIVE_INT,
    default=8,
    show_default=True,
    help="Frames waiting for inference, at most.",
)
@click.option(
    "--batch-frames", type=POSITIVE_INT, default=4, show_default=True, help="Frames whose tiles are scored together."
)
@click.option("--pixel-threshold", type=FiniteFloat(), default=None, help="Override the calibrated region threshold.")
@click.option(
    "--image-threshold",
    type=FiniteFloat(),
    default=None,
    help="Override the calibrated threshold, as infer's option does (one threshold: regions and frame verdicts).",
)
@click.option(
    "--min-pixels",
    type=POSITIVE_INT,
    default=None,
    help="Smaller regions are not reported (default: the model's min_region_area).",
)
@click.option(
    "--output",
    default="-",
    show_default=True,
    help="JSON lines file (written as OUTPUT.partial, renamed at the end); - for stdout.",
)
@click.option(
    "--summary", "summary_path", type=click.Path(dir_okay=False), default=None, help="Also write the summary JSON here."
)
@click.option(
    "--overlays", type=click.Path(file_okay=False), default=None, help="Folder for overlay PNGs of defective frames."
)
@click.option("--width", type=POSITIVE_INT, default=None, help="Raw sources: pixels per line.")
@click.option(
    "--dtype",
    type=click.Choice(["uint8", "uint16", "float32"]),
    default="uint8",
    show_default=True,
    help="Raw sources: value type.",
)
@click.option(
    "--channels", type=click.Choice(["1", "3"]), default="1", show_default=True, help="Raw sources: channels per pixel."
)
@click.option(
    "--line-rate",
    type=FiniteFloat(min=0),
    default=0.0,
    show_default=True,
    help="Replayed image: lines/s (0: as fast as possible).",
)
@click.option(
    "--lines-per-block",
    type=POSITIVE_INT,
    default=64,
    show_default=True,
    help="Lines read at a time (raw, replayed image).",
)
@click.option("--repeat", type=POSITIVE_INT, default=1, show_default=True, help="Replayed image: times to replay it.")
@click.option(
    "--reconnect",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    metavar="SECONDS",
    help="TCP source: keep retrying a refused or lost connection this long, with back-off (0: a refusal is an error).",
)
@_runtime_options
@_friendly_errors
def stream(
    model,
    source,
    frame_height,
    overlap,
    stride,
    policy,
    queue_size,
    batch_frames,
    pixel_threshold,
    image_threshold,
    min_pixels,
    output,
    summary_path,
    overlays,
    width,
    dtype,
    channels,
    line_rate,
    lines_per_block,
    repeat,
    reconnect,
    runtime_options,
):
    """Inspect a line-scan stream continuously: one JSON line per frame, a summary at the end (docs/linescan.md).

    \b
    Example:
      riad-edge stream deploy/line/riad.onnx --source strip.png
      riad-edge stream deploy/line/riad.onnx --source tcp://127.0.0.1:5000 --width 4096 --output line.jsonl
    """
    from edge.files import atomic_write_bytes, check_writable
    from edge.stream import JsonLines, StreamPipeline, StreamSettings, open_source, stop_signals

    for path in (output if output != "-" else None, summary_path):
        if path:
            check_writable(Path(path).parent, STREAM_FREE_BYTES, "a stream's output")
    if overlays:
        check_writable(overlays, STREAM_FREE_BYTES, "a stream's output")
    runner = _open_runner(model, **runtime_options)
    settings = StreamSettings(
        frame_height=frame_height,
        overlap=overlap,
        stride=_stride(stride),
        queue_size=queue_size,
        policy=policy,
        batch_frames=batch_frames,
        pixel_threshold=pixel_threshold,
        image_threshold=image_threshold,
        min_pixels=min_pixels,
        overlay_dir=overlays,
    )
    pipeline = StreamPipeline(runner, settings)
    lines = open_source(
        source,
        width=width,
        channels=int(channels),
        dtype=dtype,
        line_rate=line_rate,
        lines_per_block=lines_per_block,
        repeat=repeat,
        reconnect=reconnect,
    )
    writer = JsonLines(output)
    try:
        with stop_signals():  # SIGTERM from a service manager ends the stream as Ctrl-C does
            summary = pipeline.run(lines, writer)
    finally:
        writer.close()
    if summary_path:
        atomic_write_bytes(summary_path, (json.dumps(summary, indent=2) + "\n").encode())


@main.command("video")
@_model_argument
@click.argument("video", type=click.Path(exists=True))
@click.option(
    "--window",
    type=click.IntRange(min=1),
    default=None,
    help="Frames averaged (default: the model's temporal_window, 3 in the paper).",
)
@click.option(
    "--normalise", is_flag=True, help="Add a column of the smoothed scores min-max normalised within the video."
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False),
    default="scores.csv",
    show_default=True,
    help="CSV to write (atomically).",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="Frames per runner call.")
@_runtime_options
@_friendly_errors
def video_command(model, video, window, normalise, output, batch_size, runtime_options):
    """Score every frame of a video file or frame folder, with the paper's temporal smoothing.

    Writes OUTPUT with one row per frame: frame (1-based), score, smoothed (mean of
    the last WINDOW scores), with --normalise `normalised`, and with a calibrated
    `smoothed_frame` threshold for this window `anomalous` (0/1). Prints a
    one-line JSON summary (docs/video.md, "On the device").

    \b
    Example:
      riad-edge video deploy/ped2/riad.onnx Test001.avi --output scores.csv
    """
    from edge.files import atomic_write_bytes, check_writable
    from edge.video import score_video

    check_writable(Path(output).parent)  # before the decoding, not after it
    runner = _open_runner(model, **runtime_options)
    report = _progress_reporter(video)
    scores = score_video(runner, video, window=window, normalise=normalise, batch_size=batch_size, progress=report)
    if scores.anomalous is None and (runner.thresholds or {}).get("smoothed_frame") is not None:
        log.warning(f"{video}: no anomalous column: the smoothed_frame threshold was calibrated for another window")
    atomic_write_bytes(output, scores.to_csv().encode())
    summary = {
        "type": "summary",
        "video": str(video),
        "frames": len(scores.scores),
        "frames_per_s": round(scores.frames_per_second, 2),
        "window": scores.window,
        "output": str(output),
    }
    if scores.anomalous is not None:
        summary["anomalous_frames"] = int(scores.anomalous.sum())
    click.echo(json.dumps(summary))


def _progress_reporter(name, every_s: float = 5.0):
    """A `progress(frames, seconds)` callback that writes a line to stderr every `every_s` seconds."""
    last = [0.0]

    def report(frames: int, seconds: float) -> None:
        if seconds - last[0] >= every_s:
            last[0] = seconds
            log.info(f"{name}: {frames} frames, {frames / seconds:.1f} frames/s")

    return report


@main.command()
@_model_argument
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Interface to listen on (another one only when asked)."
)
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True, help="Port (0: any free one).")
@click.option(
    "--token", default=None, envvar="RIAD_SERVE_TOKEN", help="Bearer token required on requests (env RIAD_SERVE_TOKEN)."
)
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="Most images scored together."
)
@click.option(
    "--max-wait-ms",
    type=FiniteFloat(0, 60_000),
    default=5.0,
    show_default=True,
    help="Longest wait for more images to batch.",
)
@click.option(
    "--queue",
    "queue_size",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Requests held at once (reading, queued or scored), at most; beyond: HTTP 503.",
)
@click.option(
    "--max-body-mb", type=POSITIVE_INT, default=64, show_default=True, help="Largest request body; beyond: HTTP 413."
)
@click.option(
    "--max-pixels",
    type=POSITIVE_INT,
    default=40_000_000,
    show_default=True,
    help="Largest image (H x W, read from its header before decoding); beyond: HTTP 413.",
)
@click.option(
    "--max-tiles", type=POSITIVE_INT, default=4096, show_default=True, help="Most tiles of one image; beyond: HTTP 413."
)
@click.option(
    "--max-held-mb",
    type=POSITIVE_INT,
    default=128,
    show_default=True,
    help="Request bodies held at once, in MB; beyond: HTTP 503 before the body is read.",
)
@click.option(
    "--shutdown-timeout",
    type=FiniteFloat(0, 3600),
    default=30.0,
    show_default=True,
    help="Seconds in-flight requests get after SIGTERM.",
)
@click.option(
    "--access-log",
    default=None,
    metavar="PATH",
    help="Append one JSON line per request to this file ('-': stdout); see docs/serve.md.",
)
@size_mode_options
@click.option(
    "--image-threshold", type=FiniteFloat(), default=None, help="Override the calibrated image (and region) threshold."
)
@_runtime_options
@_friendly_errors
def serve(
    model,
    host,
    port,
    token,
    batch_size,
    max_wait_ms,
    queue_size,
    max_body_mb,
    max_pixels,
    max_tiles,
    max_held_mb,
    shutdown_timeout,
    access_log,
    tile,
    resize,
    image_threshold,
    runtime_options,
):
    """Serve the model over HTTP: POST an image to /predict, get its record (edge/serve.py, docs/serve.md).

    \b
    Example:
      riad-edge serve deploy/bottle/riad.onnx --port 8080 --access-log access.jsonl
    """
    from edge.serve import ServeSettings
    from edge.serve import serve as run_service

    _open_runner(model, **runtime_options)  # fail now, before listening
    settings = ServeSettings(
        max_batch=batch_size,
        max_wait_ms=max_wait_ms,
        queue_size=queue_size,
        token=token,
        mode=size_mode(tile, resize),
        image_threshold=image_threshold,
        max_body_mb=max_body_mb,
        max_pixels=max_pixels,
        max_tiles=max_tiles,
        max_held_mb=max_held_mb,
        access_log=access_log,
    )
    run_service(lambda: _open_runner(model, **runtime_options), settings, host, port, shutdown_timeout, model)


if __name__ == "__main__":
    sys.exit(main())
