#!/usr/bin/env python3
"""Does the runtime change the verdicts? A trained run on real images, through every CPU runtime.

Not a test. Exports a trained riad-tf run to ONNX (float32, and int8 with the
U-Net quantized on held-out good images), then scores the same real test
images (the side-by-side comparison's `data.npz`: magnetic tile at 128 px,
`experiments/compare_reference.py`) with ONNX Runtime and OpenVINO in each
precision the CPU has, and prints for each:

- image AUROC, pixel AUROC and AUPRO on the test set (`riad_tf.metrics`);
- the largest score difference to the Keras model the run saved;
- verdict flips: an image threshold set on the held-out good images (their
  largest score, under ONNX Runtime fp32), applied to the test images under
  each runtime, counting images whose verdict differs from ONNX Runtime fp32;
- images/s over the whole test set (one pass, batch 8).

    python3 -m scripts.runtime_accuracy runs/compare-const5/riad-tf-40 --data runs/compare/data.npz

Needs riad-tf's [tf] extra (for the export) and OpenVINO (`pip install 'riad-tf[openvino]'`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from edge.bench import cpu_facts
from edge.openvino import OpenVinoSettings
from edge.runner import Runner

BATCH = 8


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a trained riad-tf run (model.keras, config.yaml)")
    parser.add_argument("--data", type=Path, required=True, help="data.npz of experiments/compare_reference.py")
    parser.add_argument("--out", type=Path, help="export folder (default: RUN/export-runtimes)")
    parser.add_argument("--threads", type=int, default=None, help="runtime threads (default: the runtime's)")
    return parser.parse_args(argv)


def export(run: Path, out: Path, calibration: np.ndarray) -> Path:
    """riad.onnx and riad_int8.onnx of the run in `out` (reused when there)."""
    if not (out / "riad_int8.onnx").is_file():
        from riad_tf.export import export_run

        export_run(run, out, formats=("onnx",), precision="int8", batch=None, representative_images=calibration)
    return out


def runtimes(export_dir: Path, bf16: bool) -> list[tuple[str, Path, OpenVinoSettings | None]]:
    fp32, int8 = export_dir / "riad.onnx", export_dir / "riad_int8.onnx"
    chosen = [
        ("onnxruntime fp32", fp32, None),
        ("onnxruntime int8", int8, None),
        ("openvino f32", fp32, OpenVinoSettings("CPU", "f32")),
    ]
    if bf16:
        chosen.append(("openvino bf16", fp32, OpenVinoSettings("CPU", "bf16")))
    return chosen + [("openvino int8", int8, OpenVinoSettings("CPU", "f32"))]


def score(runner: Runner, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Maps, scores and images/s of `images` (the runner feeds `BATCH` images per model call)."""
    started = time.perf_counter()
    maps, scores = runner(images)
    return maps, scores, len(images) / (time.perf_counter() - started)


def main(argv=None) -> None:
    from riad_tf import metrics

    args = parse_args(argv)
    data = np.load(args.data)
    export_dir = export(args.run, args.out or args.run / "export-runtimes", data["holdout"])
    keras_scores = np.load(args.run / "eval" / "final.npz")["scores"]
    facts = cpu_facts()
    rows, reference = [], {}
    for name, path, openvino in runtimes(export_dir, bool(facts["bf16"])):
        runner = Runner.open(path, threads=args.threads, openvino=openvino, max_batch=BATCH)
        _, holdout_scores, _ = score(runner, data["holdout"])
        maps, scores, speed = score(runner, data["test"])
        summary = metrics.summarize(scores, data["labels"], maps, data["test_masks"])
        if not reference:
            reference = {"threshold": float(holdout_scores.max()), "verdicts": scores > holdout_scores.max()}
        flips = int(np.sum((scores > reference["threshold"]) != reference["verdicts"]))
        rows.append(
            f"| {name} | {summary['image_auroc']:.4f} | {summary['pixel_auroc']:.4f} | {summary['aupro']:.4f} "
            f"| {np.abs(scores - keras_scores).max():.1e} | {flips} of {len(scores)} | {speed:.2f} |"
        )
    print(f"{facts['cpu']}, {facts['cores']} cores, bfloat16: {', '.join(facts['bf16']) or 'none'}")
    print(f"run {args.run}; test images {len(data['test'])} ({int(data['labels'].sum())} defective), 128 px")
    print("| runtime | image AUROC | pixel AUROC | AUPRO | max score diff to Keras | verdict flips | images/s |")
    print("|---|--:|--:|--:|--:|--:|--:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
