#!/usr/bin/env python3
r"""Squeezed whole images against training at the camera's scale, on magnetic tile, at equal training time.

The squeezed model is a run of `experiments/compare_reference.py` (its riad-tf
side: 200 good images squeezed to 128 x 128, the weights of epoch
`--squeezed-epoch`). The scaled model trains here on the same 200 images at
scale 1.0 (their native pixels): fresh random 128 x 128 crops every epoch
(`riad_tf.crops`), the same config otherwise, for as many crops as the
squeezed model saw images (equal steps of the same size, so equal training
time; both wall times are printed). The next 100 good images of the seed's
order (training saw neither) calibrate its thresholds.

Both models score the same test images (`compare_reference`'s seeded 80 good
and 160 defective), and every map is compared with the ground truth at the
images' native resolution: the squeezed model's 128 x 128 maps are resized
back to each image's size, the scaled model's tile maps are stitched at it.
The scaled model is scored with tiles half a tile apart and a tile apart, with
the seconds each took, for the stride's accuracy against its speed.

Writes OUT/results.md and OUT/results.json; reruns reuse the trained run and the
cached scores (OUT/scores-*.pkl).

Example:

    python3 -m experiments.scale_check --runs runs/partitions --seed 0 --out runs/scale
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from pathlib import Path

import numpy as np

from experiments.compare_reference import DEFAULT_DATA

TRAIN, HOLDOUT, CALIBRATION = 200, 40, 100


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="magnetic-tile root (default: %(default)s)")
    parser.add_argument("--runs", type=Path, default=Path("runs/partitions"), help="compare_reference's OUT")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--squeezed-epochs", type=int, default=40, help="the run's length (its folder riad-tf-E)")
    parser.add_argument("--budgets", default="13,40", help="squeezed epochs compared (their weights are kept)")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--strides", default="0.5,1.0", help="tile strides (shares of a tile) to score with")
    parser.add_argument("--out", type=Path, default=Path("runs/scale"))
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="the scaled run's ONNX export: scores its final model on the edge runner",
    )
    parser.add_argument(
        "--model-precision", choices=("f32", "bf16"), default="f32", help="OpenVINO's precision for --model"
    )
    parser.add_argument(
        "--no-train", action="store_true", help="score the budgets whose weights exist; never start training"
    )
    return parser.parse_args(argv)


def samples(args):
    """(training, validation, calibration, test) samples: compare_reference's seeded split."""
    from experiments import compare_reference, partition_check

    compare = partition_check.compare_args(args.runs, args.seed, Path("configs/default.yaml"))
    compare.data = args.data
    good, test = compare_reference.seeded_samples(compare)
    return good[:TRAIN], good[TRAIN : TRAIN + HOLDOUT], good[TRAIN + HOLDOUT : TRAIN + HOLDOUT + CALIBRATION], test


def squeezed_run(args) -> Path:
    return args.runs / f"seed-{args.seed}" / f"riad-tf-{args.squeezed_epochs}"


def scaled_epochs(args, crops_per_epoch: int) -> dict[int, int]:
    """{squeezed epochs: scaled epochs with as many crops as the squeezed model saw images}."""
    return {b: max(1, round(b * TRAIN / crops_per_epoch)) for b in _ints(args.budgets)}


def train_scaled(args, train, validation, calibration) -> tuple[Path, dict[int, int]]:
    """Trains (or resumes) the scaled model for the largest budget, keeping the weights of the smaller ones."""
    from edge.files import atomic_path
    from edge.inspection import preprocessing_record
    from riad_tf import run as runs
    from riad_tf.batchnorm_guard import settle_batchnorm
    from riad_tf.crops import RandomCrops, grid_tiles, read_all_scaled
    from riad_tf.jobs import _native_size, calibrate_images
    from riad_tf.run_records import float32_copy
    from riad_tf.train import train_unet

    config = runs.load_config(squeezed_run(args)).with_overrides({"scale": args.scale})
    crops = RandomCrops(read_all_scaled(train, args.scale, config.channels), config.image_size, config.seed)
    budgets = scaled_epochs(args, len(crops))
    config = config.with_overrides({"epochs": max(budgets.values())})
    run_dir = args.out / f"scaled-{args.seed}"
    print(f"scaled model: {len(crops)} crops per epoch; epochs for the squeezed budgets: {budgets}", flush=True)

    def snapshot(epoch: int, unet) -> None:  # a shorter run's model, batch norm settled as train_unet ships it
        path = run_dir / "weights" / f"epoch_{epoch:03d}.weights.h5"
        if epoch in budgets.values() and epoch < config.epochs and not path.is_file():
            shipped = float32_copy(unet, config)
            settle_batchnorm(shipped, crops, config)
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path, suffix=".weights.h5") as tmp:
                shipped.save_weights(tmp)

    if not (run_dir / "thresholds.json").is_file() and not args.no_train:
        holdout = grid_tiles(read_all_scaled(validation, args.scale, config.channels), config.image_size)
        train_unet(config, crops, run_dir, holdout, progress=False, on_epoch_end=snapshot)
        runs.save_preprocessing(run_dir, preprocessing_record([_native_size(s.path) for s in train], args.scale))
        images = read_all_scaled(calibration, args.scale, config.channels)
        calibrate_images(run_dir, images, config.target_fpr)
    return run_dir, budgets


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def native_masks(test) -> list[np.ndarray]:
    from riad_tf.image_files import image_size_of, read_mask

    return [read_mask(s.mask_path, None) if s.mask_path else np.zeros(image_size_of(s.path), bool) for s in test]


def cached(path: Path, compute, *args):
    """`compute(*args)`, kept in `path` (a pickle) for later runs."""
    if path.is_file():
        return pickle.loads(path.read_bytes())
    value = compute(*args)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(value))
    return value


def score_squeezed(args, epoch: int, test, masks) -> dict:
    """The squeezed model's scores after `epoch` epochs, and its maps resized to every image's native size."""
    from edge.images import resize_image
    from experiments.partition_check import scored_model
    from riad_tf.detector import Detector
    from riad_tf.image_files import load_arrays
    from riad_tf.run import load_config

    run_dir = squeezed_run(args)
    config = load_config(run_dir)
    unet, label = scored_model(run_dir, epoch, args.squeezed_epochs)
    started = time.perf_counter()
    maps, scores = Detector(unet, config).score(load_arrays(test, config), batch_size=8)
    seconds = time.perf_counter() - started
    native = [resize_image(m[..., None].astype(np.float32), mask.shape)[..., 0] for m, mask in zip(maps, masks)]
    history = json.loads((run_dir / "history.json").read_text())[:epoch]
    return {
        "label": f"squeezed to 128 x 128, epoch {label}",
        "scores": scores,
        "maps": native,
        "score_seconds": seconds,
        "train_seconds": sum(r["seconds"] for r in history),
    }


def scaled_model(run_dir: Path, epoch: int):
    """The scaled run's detector after `epoch` epochs (its kept epoch for the whole run), and its label."""
    from riad_tf.detector import Detector
    from riad_tf.model import build_unet
    from riad_tf.run import load_config, load_unet

    config = load_config(run_dir)
    if epoch == config.epochs:
        history = json.loads((run_dir / "history.json").read_text())
        kept = next((r["epoch"] for r in history if r.get("kept")), epoch)
        return Detector(load_unet(run_dir), config), f"{epoch} (kept {kept})"
    unet = build_unet(config.input_shape, config.unet_widths, config.skip_connections)
    unet.load_weights(run_dir / "weights" / f"epoch_{epoch:03d}.weights.h5")
    return Detector(unet, config), str(epoch)


def score_scaled(
    run_dir: Path, epoch: int, test, stride: float, scale: float, model: Path | None = None, precision: str = "f32"
) -> dict:
    """The scaled model's stitched maps, with the Keras detector, or with `model` (its ONNX export) on the edge runner."""
    from edge.tiling import tile_stride, tiled_map
    from riad_tf.crops import read_all_scaled
    from riad_tf.detector import Detector

    detector, label = scaled_model(run_dir, epoch)
    config = detector.config.with_overrides({"tile_stride": stride})
    images = read_all_scaled(test, scale, config.channels)
    started = time.perf_counter()
    if model is None:
        tiled = Detector(detector.unet, config).score_tiled(images, batch_size=8, progress=True)
    else:  # the export of the same weights (maps within 1e-6 of Keras), on the fastest float32 runtime here
        runner = edge_runner(model, precision)
        step = tile_stride(config.image_size, stride)
        tiled = [tiled_map(image, runner, config.image_size, step, batch_size=16) for image in images]
        label += f" ({runner.session.backend} {precision})"
    seconds = time.perf_counter() - started
    history = json.loads((run_dir / "history.json").read_text())[:epoch]
    return {
        "label": f"scale {scale:g} crops, epoch {label}, tiles {stride:g} of a tile apart",
        "scores": np.array([t.map.max() for t in tiled]),
        "maps": [t.map for t in tiled],
        "tiles": int(sum(len(t.origins) for t in tiled)),
        "score_seconds": seconds,
        "train_seconds": sum(r["seconds"] for r in history),
    }


def edge_runner(model: Path, precision: str = "f32"):
    """`model` on OpenVINO at `precision` where it is installed, else on ONNX Runtime."""
    from edge.runner import Runner

    try:
        from edge.openvino import OpenVinoSettings

        return Runner.open(model, openvino=OpenVinoSettings(precision=precision))
    except Exception:  # no OpenVINO here
        return Runner.open(model)


def figures(result: dict, test, masks) -> dict:
    from riad_tf.metrics import summarize

    labels = np.array([s.label for s in test])
    types = ["good" if s.label == 0 else s.defect_type for s in test]
    maps = result["maps"]
    if any(m.shape != k.shape for m, k in zip(maps, masks)):  # a scale other than 1: the masks at the maps' size
        from edge.images import resize_image

        masks = [
            resize_image(k[..., None].astype(np.float32), m.shape, "nearest")[..., 0] > 0.5 for m, k in zip(maps, masks)
        ]
    summary = summarize(result["scores"], labels, maps, masks, types)
    return {k: summary[k] for k in ("image_auroc", "pixel_auroc", "aupro")}


def main(argv=None) -> int:
    import riad_tf  # noqa: F401  (CPU defaults before TensorFlow)
    from riad_tf.markdown import cell, markdown_table

    args = parse_args(argv)
    if not squeezed_run(args).is_dir():
        print(f"scale_check: {squeezed_run(args)}: no squeezed run; run experiments.compare_reference", file=sys.stderr)
        return 2
    train, validation, calibration, test = samples(args)
    run_dir, budgets = train_scaled(args, train, validation, calibration)
    masks = native_masks(test)
    strides = [float(s) for s in args.strides.split(",")]
    rows, table = [], []
    for budget, epoch in budgets.items():
        results = [
            cached(args.out / f"scores-squeezed-{args.seed}-{budget}.pkl", score_squeezed, args, budget, test, masks)
        ]
        for stride in strides if budget == max(budgets) else strides[:1]:
            path = args.out / f"scores-scaled-{args.seed}-{epoch}-{stride:g}.pkl"
            model = args.model if epoch == max(budgets.values()) else None
            results.append(
                cached(path, score_scaled, run_dir, epoch, test, stride, args.scale, model, args.model_precision)
            )
        for result in results:
            row = {"budget": budget, "model": result["label"], **figures(result, test, masks)}
            row.update({k: round(result[k], 1) for k in ("train_seconds", "score_seconds")})
            table.append(row)
            rows.append(
                [str(budget), row["model"]]
                + [cell(row[k]) for k in ("image_auroc", "pixel_auroc", "aupro")]
                + [f"{row['train_seconds']:.0f}", f"{row['score_seconds']:.0f}"]
            )
    text = "\n".join(
        [
            f"# Squeezed whole images against scale {args.scale:g} (magnetic tile, seed {args.seed})",
            "",
            f"Command: `python3 -m experiments.scale_check {' '.join(sys.argv[1:] if argv is None else argv)}`",
            "",
            f"{len(test)} test images ({sum(s.label for s in test)} defective); every map compared with the ground "
            f"truth at the image's native size. Budget: the squeezed model's epochs over {TRAIN} images; the scaled "
            "model trains on as many random crops of the same images (equal steps of equal size).",
            "",
            markdown_table(["budget", "model", "image AUROC", "pixel AUROC", "AUPRO", "training s", "scoring s"], rows),
            "",
        ]
    )
    (args.out / "results.md").write_text(text)
    (args.out / "results.json").write_text(json.dumps(table, indent=2) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
