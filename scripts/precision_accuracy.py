"""Accuracy and speed of a trained run's exports at each precision, on its test data.

For a trained magnetic-tile run (default: the 64 px operating point of
scripts/operating_points.py), this script exports the detector with
`riad-tf export` at each precision (TFLite fp32, fp16, int8 calibrated on the
run's training images; ONNX fp32, and int8 calibrated the same way), scores the
test split with the edge runtime (`edge.runner.Runner`, no TensorFlow in the
loop), and prints image AUROC,
pixel AUROC, the change against the Keras detector, images/s and effective
GFLOP/s (the float32 model's FLOPs x images/s). It answers: does a faster
precision cost accuracy?

Example:

    python3 -m scripts.precision_accuracy                           # runs/operating_points/64px_x1
    python3 -m scripts.precision_accuracy --run runs/magnetic_tile/riad --formats tflite-int8
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from riad_tf.markdown import markdown_table
from scripts import magnetic_tile as mt  # data loading and tables

# name -> (riad-tf export flags, the file it writes)
EXPORTS = {
    "onnx-fp32": (["--onnx", "--precision", "fp32"], "riad.onnx"),
    "onnx-int8": (["--onnx", "--precision", "int8"], "riad_int8.onnx"),
    "tflite-fp32": (["--tflite", "--precision", "fp32"], "riad_fp32.tflite"),
    "tflite-fp16": (["--tflite", "--precision", "fp16"], "riad_fp16.tflite"),
    "tflite-int8": (["--tflite", "--precision", "int8"], "riad_int8.tflite"),
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--run", type=Path, default=Path("runs/operating_points/64px_x1"), help="trained run (default: %(default)s)"
    )
    parser.add_argument("--data", type=Path, default=mt.DEFAULT_DATA, help="magnetic-tile root (default: %(default)s)")
    parser.add_argument("--formats", default=",".join(EXPORTS), help="comma-separated, from: " + ", ".join(EXPORTS))
    parser.add_argument("--batch", type=int, default=8, help="images per runtime call (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None)
    return parser.parse_args(argv)


def export(run_dir: Path, name: str) -> Path:
    """`riad-tf export` into RUN/exports/NAME (reused when newer than the run's model)."""
    flags, filename = EXPORTS[name]
    out = run_dir / "exports" / name
    model = out / filename
    if not model.is_file() or model.stat().st_mtime < (run_dir / "model.keras").stat().st_mtime:
        command = [
            sys.executable,
            "-m",
            "riad_tf.cli",
            "export",
            str(run_dir),
            *flags,
            "--batch",
            "0",
            "--out",
            str(out),
        ]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return model


def score(runner, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Maps, scores and images/s of one runtime over the test images (it calls the model `max_batch` at a time)."""
    started = time.perf_counter()
    maps, scores = runner(images)
    return maps, scores, len(images) / (time.perf_counter() - started)


def table_rows(results: dict, labels: np.ndarray, masks: np.ndarray, flops: float) -> list[dict]:
    """One row per path: its accuracy, the change from Keras, its speed and its largest score difference."""
    from riad_tf import metrics

    keras_scores = results["keras"][1]
    reference = metrics.image_auroc(keras_scores, labels)
    rows = []
    for name, (maps, scores, images_per_s) in results.items():
        auroc = metrics.image_auroc(scores, labels)
        rows.append(
            {
                "path": name,
                "image_auroc": auroc,
                "delta_points": 100 * (auroc - reference),
                "pixel_auroc": metrics.pixel_auroc(maps, masks),
                "images_per_s": images_per_s,
                "gflops": flops * images_per_s / 1e9,
                "max_score_diff": float(np.max(np.abs(scores - keras_scores))),
            }
        )
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    unknown = [f for f in args.formats.split(",") if f not in EXPORTS]
    if unknown:
        mt.fail(f"unknown format(s) {', '.join(unknown)}; choose from {', '.join(EXPORTS)}")
    if not (args.run / "model.keras").is_file():
        mt.fail(f"{args.run}: no trained run here (model.keras missing); run python3 -m scripts.operating_points first")
    from edge.runner import Runner
    from riad_tf.flops import riad_flops
    from riad_tf.image_files import load_arrays
    from riad_tf.run import load_detector

    split = mt.load_split(args.data)
    detector = load_detector(args.run)
    images, masks = load_arrays(split.test, detector.config, with_masks=True)
    labels = np.array([s.label for s in split.test])
    flops = riad_flops(detector.config, detector.unet)["per_image"]
    detector.score(images[: args.batch], args.batch)  # trace the tf.function before timing
    started = time.perf_counter()
    maps, scores = detector.score(images, args.batch)
    results = {"keras": (maps, scores, len(images) / (time.perf_counter() - started))}
    for name in args.formats.split(","):
        print(f"== {name}: export and score {len(images)} test images", flush=True)
        runner = Runner.open(export(args.run, name), threads=args.threads, max_batch=args.batch)
        results[name] = score(runner, images)
    rows = table_rows(results, labels, masks, flops)
    header = ["path", "image AUROC", "change (points)", "pixel AUROC", "images/s", "GFLOP/s", "max score diff"]
    formats = ("{}", "{:.4f}", "{:+.2f}", "{:.4f}", "{:.1f}", "{:.1f}", "{:.2e}")
    keys = ("path", "image_auroc", "delta_points", "pixel_auroc", "images_per_s", "gflops", "max_score_diff")
    body = [[f.format(r[k]) for f, k in zip(formats, keys)] for r in rows]
    print(
        f"{args.run}: {len(images)} test images, batch {args.batch}, {flops / 1e9:.2f} GFLOP per image (float32 count)"
    )
    print(markdown_table(header, body))
    from edge.files import atomic_write_text

    atomic_write_text(args.run / "precision_accuracy.json", json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
