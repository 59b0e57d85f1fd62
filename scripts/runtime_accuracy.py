#!/usr/bin/env python3
"""Does the precision or the runtime change the verdicts? A trained run on real images, every export and CPU runtime.

Not a test. Exports a trained riad-tf run at every precision `riad-tf export`
offers (ONNX float32 and int8, the int8 by ONNX Runtime with uint8 or symmetric
activations, and by NNCF with accuracy control, laid out for ONNX Runtime and
for OpenVINO; TFLite fp32, fp16 and int8, each
int8 calibrated on the run's training images as the command does), then scores
the same real test images (the run's own test set, or with `--data` the
side-by-side comparison's `data.npz`: magnetic tile at 128 px,
`experiments/compare_reference.py`) with ONNX Runtime, LiteRT and OpenVINO in
each precision the CPU has, and prints for each:

- image AUROC, pixel AUROC and AUPRO on the test set (`riad_tf.metrics`);
- the largest score difference to ONNX Runtime float32, and the map error the
  export's accuracy check measures (`riad_tf.accuracy_check`: mean |map change|
  over the mean float32 map);
- verdict flips: an image threshold set on the held-out good images (their
  largest score, under ONNX Runtime fp32), applied to the test images under
  each runtime, counting images whose verdict differs from ONNX Runtime fp32;
- images/s over the whole test set, and its ratio to ONNX Runtime fp32 in the
  same run.

    python3 -m scripts.runtime_accuracy runs/partitions/seed-0/riad-tf-40 --data runs/partitions/seed-0/data.npz
    python3 -m scripts.runtime_accuracy runs/magnetic_tile/riad        # a run's own test set

Needs riad-tf's [tf] and [int8] extras (for the exports), LiteRT and OpenVINO (`pip install 'riad-tf[openvino]'`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from edge.bench import cpu_facts
from edge.openvino import OpenVinoSettings
from edge.runner import Runner
from riad_tf.accuracy_check import map_error

BATCH = 8
TRAINING_IMAGES = 128  # what `riad-tf export --precision int8` calibrates on, at most


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a trained riad-tf run (model.keras, config.yaml)")
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="data.npz of experiments/compare_reference.py (default: the run's own data set, from its data.json)",
    )
    parser.add_argument("--out", type=Path, help="export folder (default: RUN/export-runtimes)")
    parser.add_argument("--threads", type=int, default=None, help="runtime threads (default: the runtime's)")
    parser.add_argument("--only", default=None, help="comma-separated runtime names to score (default: all)")
    return parser.parse_args(argv)


def data_check_images(data, limit: int):
    """Check images from a `data.npz`: up to `limit` of its held-out good images and of its defective test images.

    The defective ones are every k-th, so that each defect type is in. For runs
    that do not record their data (`data.json`), such as the side-by-side
    comparison's, which train from the `data.npz`.
    """
    from riad_tf.accuracy_check import CheckImages

    defective = np.flatnonzero(data["labels"])
    defective = defective[:: max(1, len(defective) // limit)][:limit]
    return CheckImages(data["holdout"][:limit], data["test"][defective], data["test_masks"][defective])


def export(run: Path, out: Path, data, needed: set[str]) -> dict[str, Path]:
    """The `needed` exports of the run (and its float32 ONNX), in `out`, reused when there: {name: model file}.

    int8 calibrates on up to `TRAINING_IMAGES` of `data`'s training images. NNCF
    tunes on the run's check images, or on `data`'s (`data_check_images`) when
    the run does not record its data.
    """
    from riad_tf.accuracy_check import ACCURACY_CONTROL_IMAGES
    from riad_tf.export import export_run
    from riad_tf.export.onnx import Int8Recipe
    from riad_tf.run import check_images

    calibration = data["train"][:TRAINING_IMAGES]
    tuning = None
    if any(key.startswith("onnx_int8_nncf") for key in needed):
        tuning = check_images(run, ACCURACY_CONTROL_IMAGES) or data_check_images(data, ACCURACY_CONTROL_IMAGES)

    int8 = dict(formats=("onnx",), precision="int8", batch=None)
    models = {
        "onnx": (out / "onnx", "riad.onnx", int8),
        "onnx_int8": (out / "onnx", "riad_int8.onnx", None),
        "onnx_int8_symmetric": (
            out / "onnx-symmetric",
            "riad_int8.onnx",
            dict(int8, int8_recipe=Int8Recipe(symmetric_activations=True)),
        ),
    }
    for layout, suffix in (("onnxruntime", ""), ("openvino", "_openvino")):  # NNCF's model, laid out for each
        key = f"onnx_int8_nncf{suffix}"
        models[key] = (
            out / f"onnx-nncf{suffix.replace('_', '-')}",
            "riad_int8.onnx",
            dict(
                int8,
                int8_recipe=Int8Recipe(quantizer="nncf", layout=layout),
                check_images=tuning if key in needed else None,
            ),
        )
    for precision in ("fp32", "fp16", "int8"):
        folder = out / f"tflite-{precision}"
        models[f"tflite_{precision}"] = (
            folder,
            f"riad_{precision}.tflite",
            dict(formats=("tflite",), precision=precision),
        )
    paths = {}
    for name, (folder, filename, options) in models.items():
        wanted = name in needed or name == "onnx"  # riad.onnx is the reference, written with riad_int8.onnx
        if wanted and options is not None and not (folder / filename).is_file():
            images = calibration if options["precision"] == "int8" else None
            export_run(run, folder, representative_images=images, **options)
        paths[name] = folder / filename
    return paths


def runtimes(bf16: bool, only: set[str] | None) -> list[tuple[str, str, OpenVinoSettings | None]]:
    """(name, export, OpenVINO settings or None for the model's own runtime), ONNX Runtime float32 first.

    `only`: the names to keep besides ONNX Runtime float32 (None: all).
    """
    chosen = [
        ("onnxruntime fp32", "onnx", None),
        ("onnxruntime int8", "onnx_int8", None),
        ("onnxruntime int8 symmetric (TensorRT's QDQ)", "onnx_int8_symmetric", None),
        ("onnxruntime int8 NNCF accuracy control", "onnx_int8_nncf", None),
        ("litert fp32", "tflite_fp32", None),
        ("litert fp16", "tflite_fp16", None),
        ("litert int8", "tflite_int8", None),
        ("openvino f32", "onnx", OpenVinoSettings("CPU", "f32")),
    ]
    if bf16:
        chosen.append(("openvino bf16", "onnx", OpenVinoSettings("CPU", "bf16")))
    chosen += [
        ("openvino int8", "onnx_int8", OpenVinoSettings("CPU", "f32")),
        ("openvino int8 NNCF accuracy control", "onnx_int8_nncf_openvino", OpenVinoSettings("CPU", "f32")),
    ]
    return [row for i, row in enumerate(chosen) if i == 0 or only is None or row[0] in only]


def run_data(run: Path) -> dict[str, np.ndarray]:
    """The run's own data set as `data.npz` holds it, at the model's size.

    Returns:
        "train" (what int8 calibrates on), "holdout" (the good images that
        calibrated the run's thresholds), "test", "test_masks" and "labels"
        (every test image).
    """
    from riad_tf.data import split_good
    from riad_tf.image_files import load_arrays, load_split
    from riad_tf.run import load_config, load_data_spec, representative_images

    config = load_config(run)
    split, _ = load_split(load_data_spec(run), skip_unreadable=True)
    _, _, calibration = split_good(split.train, config.val_fraction, config.calibration_fraction, config.seed)
    test, masks = load_arrays(split.test, config, with_masks=True)
    labels = np.array([sample.label for sample in split.test])
    return dict(
        train=representative_images(run),
        holdout=load_arrays(calibration, config),
        test=test,
        test_masks=masks,
        labels=labels,
    )


def score(runner: Runner, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Maps, scores and images/s of `images` (the runner feeds up to `BATCH` images per model call)."""
    started = time.perf_counter()
    maps, scores = runner(images)
    return maps, scores, len(images) / (time.perf_counter() - started)


def main(argv=None) -> None:
    import riad_tf  # noqa: F401  (CPU defaults before TensorFlow)
    from riad_tf import metrics

    args = parse_args(argv)
    data = np.load(args.data) if args.data else run_data(args.run)
    facts = cpu_facts()
    chosen = runtimes(bool(facts["bf16"]), set(args.only.split(",")) if args.only else None)
    out = args.out or args.run / "export-runtimes"
    models = export(args.run, out, data, {key for _, key, _ in chosen})
    rows, reference = [], {}
    for name, key, openvino in chosen:
        runner = Runner.open(models[key], threads=args.threads, openvino=openvino, max_batch=BATCH)
        _, holdout_scores, _ = score(runner, data["holdout"])
        maps, scores, speed = score(runner, data["test"])
        summary = metrics.summarize(scores, data["labels"], maps, data["test_masks"])
        if not reference:
            reference = dict(threshold=float(holdout_scores.max()), scores=scores, maps=maps, speed=speed)
            reference["verdicts"] = scores > reference["threshold"]
        flips = int(np.sum((scores > reference["threshold"]) != reference["verdicts"]))
        rows.append(
            f"| {name} | {summary['image_auroc']:.4f} | {summary['pixel_auroc']:.4f} | {summary['aupro']:.4f} "
            f"| {np.abs(scores - reference['scores']).max():.1e} | {map_error(maps, reference['maps']):.3f} "
            f"| {flips} of {len(scores)} | {speed:.2f} "
            f"| {speed / reference['speed']:.2f} |"
        )
        print(rows[-1], flush=True)
    print(f"\n{facts['cpu']}, {facts['cores']} cores, bfloat16: {', '.join(facts['bf16']) or 'none'}")
    print(f"run {args.run}; test images {len(data['test'])} ({int(data['labels'].sum())} defective)")
    print(
        "| runtime | image AUROC | pixel AUROC | AUPRO | max score diff to ORT fp32 | map error "
        "| verdict flips | images/s | x ORT fp32 |"
    )
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
