"""The `riad-tf` command line: train, evaluate, predict, export, demo.

Every command reads one `RiadConfig` (a YAML file plus command-line overrides)
and stores it in the run directory, so export and the edge runtime see the same
values that training used.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

# TensorFlow's C++ start-up chatter (CPU features, missing CUDA) hides the tool's own output;
# errors still surface as Python exceptions. Set TF_CPP_MIN_LOG_LEVEL yourself to see it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import click
import yaml

from riad_tf.config import RiadConfig, atomic_write_text

DATA_FILE = "data.json"


def _friendly_errors(command):
    """Turns expected failures (bad data, bad config, missing files) into one-line errors, exit 1."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from riad_tf.data import DataError

        try:
            return command(*args, **kwargs)
        except (DataError, ValueError, FileNotFoundError) as err:
            raise click.ClickException(str(err).splitlines()[0] if str(err) else repr(err)) from None

    return wrapper


def _data_options(command):
    options = [
        click.option("--data", "data_path", type=click.Path(exists=True, file_okay=False), help="Data-set folder (MVTec category, magnetic-tile root, or a video data set)."),
        click.option("--layout", type=click.Choice(["auto", "mvtec", "magnetic_tile", "folders", "ped2", "avenue", "video"]), default="auto", show_default=True, help="Image layouts, or video: ped2, avenue, video (train/, test/, labels.csv); see docs/video.md."),
        click.option("--normal", multiple=True, type=click.Path(exists=True, file_okay=False), help="Folder of good images (folders layout; repeatable)."),
        click.option("--abnormal", multiple=True, type=click.Path(exists=True, file_okay=False), help="Folder of defective images (repeatable)."),
        click.option("--masks", type=click.Path(exists=True, file_okay=False), help="Folder of masks NAME_mask.png or NAME.png (default: beside the images)."),
        click.option("--test-normal", multiple=True, type=click.Path(exists=True, file_okay=False), help="Folder of good test images (default: a share of --normal)."),
        click.option("--skip-unreadable", is_flag=True, help="Skip unreadable images (and say how many) instead of stopping."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _data_spec(data_path, layout, normal, abnormal, masks, test_normal) -> dict:
    return {
        "path": str(Path(data_path).resolve()) if data_path else None,
        "layout": layout,
        "normal": [str(Path(p).resolve()) for p in normal],
        "abnormal": [str(Path(p).resolve()) for p in abnormal],
        "masks": str(Path(masks).resolve()) if masks else None,
        "test_normal": [str(Path(p).resolve()) for p in test_normal],
    }


def _load_split(spec: dict, skip_unreadable: bool):
    from riad_tf.data import load_dataset, validate
    from riad_tf.video import load_video_dataset, resolve_video_layout, validate_videos

    video_layout = resolve_video_layout(spec["path"], spec["layout"])
    if video_layout:  # a VideoSplit; unreadable frames always stop (skipping one would shift the labels)
        split = validate_videos(load_video_dataset(spec["path"], video_layout))
        click.echo(f"data: {split.describe()}", err=True)
        return split

    split = load_dataset(
        spec["path"],
        layout=spec["layout"],
        normal=spec["normal"],
        abnormal=spec["abnormal"],
        masks=spec["masks"],
        test_normal=spec["test_normal"],
    )
    split, skipped = validate(split, skip_unreadable=skip_unreadable)
    if skipped:
        click.echo(f"skipped {len(skipped)} unreadable image(s), first: {skipped[0][0]}: {skipped[0][1]}", err=True)
    click.echo(f"data: {split.describe()}", err=True)
    return split


def _train_function(split):
    """`train_run` for image data, `train_video_run` for a `VideoSplit` (same signature)."""
    from riad_tf.video import VideoSplit, train_video_run
    from riad_tf.workflow import train_run

    return train_video_run if isinstance(split, VideoSplit) else train_run


def _evaluate_function(split):
    """`evaluate_run` for image data, `evaluate_video_run` for a `VideoSplit` (same signature)."""
    from riad_tf.evaluate import evaluate_run
    from riad_tf.video import VideoSplit, evaluate_video_run

    return evaluate_video_run if isinstance(split, VideoSplit) else evaluate_run


def _parse_sets(pairs) -> dict:
    values = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--set")
        values[key.strip()] = yaml.safe_load(text)
    return values


def _config_from_options(config_path, overrides: dict) -> RiadConfig:
    config = RiadConfig.load(config_path) if config_path else RiadConfig()
    return config.with_overrides({k: v for k, v in overrides.items() if v is not None})


@click.group()
@click.version_option(package_name="riad-tf")
def main():
    """RIAD: reconstruction-by-inpainting anomaly detection (Zavrtanik et al. 2020)."""


@main.command()
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False), help="YAML config (see configs/).")
@_data_options
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Run directory (re-run to resume).")
@click.option("--epochs", type=int)
@click.option("--batch-size", type=int)
@click.option("--learning-rate", type=float)
@click.option("--image-size", type=int, help="Square input size (divisible by 16).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Any config value, e.g. --set ks=[2,4] (repeatable).")
@click.option("--no-progress", is_flag=True)
@_friendly_errors
def train(config_path, data_path, layout, normal, abnormal, masks, test_normal, skip_unreadable, out, epochs, batch_size, learning_rate, image_size, sets, no_progress):
    """Train on good images, then calibrate thresholds on held-out good images."""
    overrides = {"epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate}
    if image_size:
        overrides["image_size"] = (image_size, image_size)
    overrides.update(_parse_sets(sets))
    config = _config_from_options(config_path, overrides)
    spec = _data_spec(data_path, layout, normal, abnormal, masks, test_normal)
    if not (spec["path"] or spec["normal"]):
        previous = Path(out) / DATA_FILE
        if not previous.is_file():
            raise click.UsageError("give --data or --normal")
        spec = json.loads(previous.read_text())
    split = _load_split(spec, skip_unreadable)
    atomic_write_text(Path(out) / DATA_FILE, json.dumps(spec, indent=2) + "\n")
    thresholds = _train_function(split)(config, split, out, progress=not no_progress)
    click.echo(f"model: {Path(out) / 'model.keras'}")
    click.echo(f"thresholds (FPR {config.target_fpr:g} on held-out good images): image {thresholds['image']:.5f}, pixel {thresholds['pixel']:.5f}")


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@_data_options
@click.option("--out", type=click.Path(file_okay=False), help="Output folder (default RUN/eval).")
@click.option("--batch-size", type=int, default=4, show_default=True)
@click.option("--no-report", is_flag=True, help="Metrics only, no HTML report.")
@_friendly_errors
def evaluate(run_dir, data_path, layout, normal, abnormal, masks, test_normal, skip_unreadable, out, batch_size, no_report):
    """Image AUROC, pixel AUROC, AUPRO and F1 on the test images, overall and per defect type."""
    spec = _data_spec(data_path, layout, normal, abnormal, masks, test_normal)
    if not (spec["path"] or spec["normal"]):
        stored = Path(run_dir) / DATA_FILE
        if not stored.is_file():
            raise click.UsageError("give --data (the run does not record its data)")
        spec = json.loads(stored.read_text())
    split = _load_split(spec, skip_unreadable)
    if not split.test:
        raise click.ClickException("no test images in the data set")
    out = Path(out or Path(run_dir) / "eval")
    summary = _evaluate_function(split)(run_dir, split.test, out, batch_size=batch_size, report=not no_report)
    click.echo((out / "metrics.md").read_text())
    if not no_report:
        click.echo(f"report: {out / 'report' / 'index.html'}")
    return summary


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--maps-dir", type=click.Path(file_okay=False), help="Write NAME_map.png here.")
@click.option("--batch-size", type=int, default=4, show_default=True)
@_friendly_errors
def predict(run_dir, images, maps_dir, batch_size):
    """Score images: one JSON line per image (score, verdict, map file)."""
    from riad_tf.evaluate import predict_images

    for record in predict_images(run_dir, [Path(p) for p in images], maps_dir, batch_size):
        click.echo(json.dumps(record))


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--out", type=click.Path(file_okay=False), required=True)
@click.option("--tflite", is_flag=True, help="TensorFlow Lite model.")
@click.option("--onnx", is_flag=True, help="ONNX model (TensorRT's parser accepts it).")
@click.option("--trt", is_flag=True, help="TensorRT engine (needs tensorrt and an NVIDIA GPU here).")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp32", show_default=True)
@click.option("--batch", type=int, default=1, show_default=True, help="Fixed batch size; 0 for dynamic.")
@click.option("--uint8-input", is_flag=True, help="Take uint8 images (0-255) instead of float [0, 1].")
@click.option("--bare-unet", is_flag=True, help="Export only the U-Net; the edge runner does masks and scoring.")
@_friendly_errors
def export(run_dir, out, tflite, onnx, trt, precision, batch, uint8_input, bare_unet):
    """Export the whole RIAD inference for the device (TFLite, ONNX, TensorRT)."""
    from riad_tf.export import export_run

    formats = tuple(name for name, on in (("tflite", tflite), ("onnx", onnx)) if on)
    if not formats and not trt:
        raise click.UsageError("choose at least one of --tflite, --onnx, --trt")
    written = export_run(
        run_dir, out, formats=formats, precision=precision, batch=batch or None,
        uint8_input=uint8_input, bare_unet=bare_unet, trt=trt,
    )
    click.echo(json.dumps({k: str(v) for k, v in written.items()}, indent=2))


@main.command()
@click.option("--out", type=click.Path(file_okay=False), default="riad-demo", show_default=True)
@click.option("--epochs", type=int, default=None, help="Override the demo's epochs.")
@click.option("--no-progress", is_flag=True)
@_friendly_errors
def demo(out, epochs, no_progress):
    """Synthetic inspection data -> train a small model -> evaluate -> HTML report."""
    from riad_tf.workflow import run_demo

    paths = run_demo(Path(out), epochs=epochs, progress=not no_progress)
    click.echo(json.dumps({k: str(v) for k, v in paths.items()}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
