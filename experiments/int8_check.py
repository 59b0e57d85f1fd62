#!/usr/bin/env python3
r"""int8 recipes against float32 on a trained run and real images: what costs the accuracy, and what keeps it.

Not a test. Exports the run's detector to a float32 ONNX once, quantizes its
U-Net with each recipe (`riad_tf.export.onnx.Int8Recipe`: ranges, weight bits,
layers left in float32) on training images, scores the comparison's test
images (`experiments/compare_reference.py`'s `data.npz`) with ONNX Runtime, and
prints per recipe: image AUROC, pixel AUROC, AUPRO, the largest score change
against float32, verdict flips (an image threshold at the largest held-out good
score under float32) and images/s, float32 first, all measured in one run.

`--layers RECIPE` also prints, for every U-Net tensor, the signal-to-noise
ratio (dB) of the quantized model's value against float32 on a few test images
(`onnxruntime.quantization.qdq_loss_debug`): the accumulated error, and the
error of that tensor's own quantization.

    python3 -m experiments.int8_check runs/partitions/seed-0/riad-tf-40 \
        --data runs/partitions/seed-0/data.npz --out runs/int8 --recipes minmax,percentile
    python3 -m experiments.int8_check runs/magnetic_tile/riad --recipes minmax,float-ends   # the run's own data
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from riad_tf.accuracy_check import map_error
from riad_tf.export.onnx import Int8Recipe
from riad_tf.run import REPRESENTATIVE_IMAGES
from scripts.runtime_accuracy import run_data

RECIPES = {
    "minmax": Int8Recipe(),
    "minmax-8bit": Int8Recipe(weight_bits=8),
    "percentile": Int8Recipe(ranges="percentile"),
    "percentile-99.99": Int8Recipe(ranges="percentile", percentile=99.99),
    "entropy": Int8Recipe(ranges="entropy"),
    "symmetric": Int8Recipe(symmetric_activations=True),
    "float-first": Int8Recipe(float_layers=("enc1_a",)),
    "float-last": Int8Recipe(float_layers=("out_conv",)),
    "float-output": Int8Recipe(float_layers=("reconstruction",)),
    "float-enc1a-enc2b": Int8Recipe(float_layers=("enc1_a", "enc2_b")),  # NNCF's choice on the 64 px model
    "float-last-output": Int8Recipe(float_layers=("out_conv", "reconstruction")),
    "float-ends": Int8Recipe(float_layers=("enc1", "dec1", "out_conv")),
    "float-decoder": Int8Recipe(float_layers=("dec", "out_conv")),
    "float-encoder": Int8Recipe(float_layers=("enc",)),
    # the convolutions at the input's resolution, which have the fewest channels: on the 64 px model
    # (widths 8-64) ONNX Runtime's profiler timed them slower in int8 than in float32, yet the whole
    # model was no faster with them in float32 (docs/deployment.md)
    "float-full-res": Int8Recipe(float_layers=("enc1", "dec1_a", "dec1_b", "out_conv")),
}
BATCH = 8


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a trained riad-tf run (model.keras, config.yaml)")
    parser.add_argument(
        "--data", type=Path, help="data.npz of experiments/compare_reference.py (default: the run's own data set)"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/int8"))
    parser.add_argument("--recipes", default="minmax", help="comma-separated, from: " + ", ".join(RECIPES))
    parser.add_argument(
        "--calibration",
        type=int,
        default=REPRESENTATIVE_IMAGES,
        help="images to calibrate on (default: %(default)s, as `riad-tf export`; min-max ranges from the "
        "first 64 of the magnetic-tile run's clipped its brighter images and cost 7.6 points of image AUROC)",
    )
    parser.add_argument(
        "--calibrate-on", choices=("train", "holdout"), default="train", help="the data.npz images to calibrate on"
    )
    parser.add_argument("--every", type=int, default=1, help="score every k-th test image (a quicker look)")
    parser.add_argument("--layers", default=None, help="a recipe whose per-tensor error to print")
    parser.add_argument("--threads", type=int, default=None)
    return parser.parse_args(argv)


def float_model(run: Path, out: Path) -> Path:
    """The run's float32 ONNX (reused when there)."""
    path = out / "fp32" / "riad.onnx"
    if not path.is_file():
        from riad_tf.export import export_run

        export_run(run, path.parent, formats=("onnx",), precision="fp32", batch=None)
    return path


def int8_model(fp32: Path, name: str, calibration: np.ndarray, source: str) -> Path:
    """fp32's U-Net quantized with recipe `name` on `calibration` (from `source`; reused when there)."""
    from riad_tf.export.onnx import quantize_onnx

    path = fp32.parent.parent / f"{name}-{source}{len(calibration)}.onnx"
    if not path.is_file():
        scope = json.loads(fp32.with_name(fp32.name + ".json").read_text())["unet_scope"]
        model, line = quantize_onnx(fp32.read_bytes(), scope, calibration, None, RECIPES[name])
        path.write_bytes(model)
        print(f"{name}: {line}", flush=True)
    return path


def session(path: Path, threads: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def score(sess, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(maps, scores, images/s) of `images`, `BATCH` at a time."""
    from riad_tf.export import DETECTOR_OUTPUTS, INPUT_NAME

    started, maps, scores = time.perf_counter(), [], []
    for start in range(0, len(images), BATCH):
        batch_maps, batch_scores = sess.run(list(DETECTOR_OUTPUTS), {INPUT_NAME: images[start : start + BATCH]})
        maps.append(batch_maps)
        scores.append(batch_scores)
    return np.concatenate(maps), np.concatenate(scores), len(images) / (time.perf_counter() - started)


def layer_errors(fp32: Path, int8: Path, images: np.ndarray) -> list[tuple[str, float, float]]:
    """(tensor, accumulated SQNR dB, own-quantization SQNR dB) of every quantized tensor, in graph order."""
    import tempfile

    from onnxruntime.quantization import qdq_loss_debug as debug

    from riad_tf.export import INPUT_NAME

    class Feed:  # a calibration data reader that qdq_loss_debug also iterates
        def __init__(self):
            self.items = iter([{INPUT_NAME: images[i : i + 1]} for i in range(len(images))])

        def get_next(self):
            return next(self.items, None)

        def __iter__(self):
            return self.items

    with tempfile.TemporaryDirectory() as tmp:
        augmented = {}
        for kind, path in (("float", fp32), ("qdq", int8)):
            augmented[kind] = str(Path(tmp) / f"{kind}.onnx")
            debug.modify_model_output_intermediate_tensors(str(path), augmented[kind])
        float_values = debug.collect_activations(augmented["float"], Feed())
        qdq_values = debug.collect_activations(augmented["qdq"], Feed())
    matched = debug.create_activation_matching(qdq_values, float_values)
    errors = debug.compute_activation_error(matched)
    return [(name, e.get("xmodel_err", float("nan")), e.get("qdq_err", float("nan"))) for name, e in errors.items()]


def main(argv=None) -> int:
    import riad_tf  # noqa: F401  (CPU defaults before TensorFlow)
    from edge.bench import cpu_facts
    from riad_tf import metrics

    args = parse_args(argv)
    data = np.load(args.data) if args.data else run_data(args.run)
    test, labels, masks = (data[k][:: args.every] for k in ("test", "labels", "test_masks"))
    calibration = data[args.calibrate_on][: args.calibration]
    fp32 = float_model(args.run, args.out)
    names = [n for n in args.recipes.split(",") if n]
    models = {"float32": fp32, **{n: int8_model(fp32, n, calibration, args.calibrate_on) for n in names}}
    rows, reference = [], {}
    for name, path in models.items():
        sess = session(path, args.threads)
        _, holdout_scores, _ = score(sess, data["holdout"])
        maps, scores, speed = score(sess, test)
        summary = metrics.summarize(scores, labels, maps, masks)
        if not reference:
            reference = dict(threshold=holdout_scores.max(), scores=scores, maps=maps, speed=speed)
            reference["verdicts"] = scores > reference["threshold"]
        flips = int(np.sum((scores > reference["threshold"]) != reference["verdicts"]))
        rows.append(
            f"| {name} | {summary['image_auroc']:.4f} | {summary['pixel_auroc']:.4f} | {summary['aupro']:.4f} "
            f"| {np.abs(scores - reference['scores']).max():.3f} | {map_error(maps, reference['maps']):.3f} "
            f"| {flips} of {len(scores)} | {speed:.2f} "
            f"| {speed / reference['speed']:.2f} |"
        )
        print(rows[-1], flush=True)
    facts = cpu_facts()
    print(
        f"\n{facts['cpu']}, {facts['cores']} cores; run {args.run}; {len(test)} test images, {int(labels.sum())} defective"
    )
    print(
        "| model | image AUROC | pixel AUROC | AUPRO | max score change | map error | verdict flips | images/s "
        "| x float32 |"
    )
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    print("\n".join(rows))
    if args.layers:
        print(f"\nper-tensor SQNR (dB) of {args.layers} against float32 on 8 test images, worst first")
        errors = layer_errors(fp32, models[args.layers], test[:: max(1, len(test) // 8)][:8])
        for tensor, accumulated, own in sorted(errors, key=lambda e: e[1]):
            print(f"{accumulated:7.1f} {own:7.1f}  {tensor}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
