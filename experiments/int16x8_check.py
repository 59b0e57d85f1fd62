"""int16x8 bare U-Net (LiteRT) against float32 ONNX Runtime on a subset of the magnetic-tile test images.

Not a test. Reads the exports `scripts/runtime_accuracy.py` writes (`runs/int8/exports/onnx/riad.onnx`)
and the int16x8 bare U-Net of the same run (`riad-tf export RUN --tflite --bare-unet --precision int16x8
--out runs/int8/exports/tflite-int16x8`), scores every 10th good and defective test image of the
comparison's `data.npz` (24 images: 16x8 runs on LiteRT's reference kernels, about 30 s per image
here) and prints AUROCs, AUPRO, the map error against float32 and seconds per image.

    python3 -m experiments.int16x8_check [--data runs/partitions/seed-0/data.npz]
"""

import argparse
import time
from pathlib import Path

import numpy as np

import riad_tf  # noqa: F401  (CPU defaults)
from edge.runner import Runner
from riad_tf import metrics
from riad_tf.accuracy_check import map_error


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("runs/partitions/seed-0/data.npz"))
    parser.add_argument("--float32", type=Path, default=Path("runs/int8/exports/onnx/riad.onnx"))
    parser.add_argument(
        "--int16x8", type=Path, default=Path("runs/int8/exports/tflite-int16x8/riad_unet_int16x8.tflite")
    )
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    data = np.load(args.data)
    labels = data["labels"]
    good, bad = np.flatnonzero(labels == 0)[::10][:8], np.flatnonzero(labels == 1)[::10][:16]
    pick = np.r_[good, bad]
    images, masks, y = data["test"][pick], data["test_masks"][pick], labels[pick]
    rows = {}
    for name, path in (
        ("onnxruntime fp32", args.float32),
        ("litert int16x8 bare U-Net", args.int16x8),
    ):
        runner = Runner.open(path)
        started = time.perf_counter()
        maps, scores = runner(images)
        seconds = (time.perf_counter() - started) / len(images)
        rows[name] = (maps, scores, seconds)
    ref_maps = rows["onnxruntime fp32"][0]
    print(f"{len(pick)} test images ({len(bad)} defective), every 10th of each class")
    print("| runtime | image AUROC | pixel AUROC | AUPRO | map error | s per image |")
    for name, (maps, scores, seconds) in rows.items():
        s = metrics.summarize(scores, y, maps, masks)
        print(
            f"| {name} | {s['image_auroc']:.4f} | {s['pixel_auroc']:.4f} | {s['aupro']:.4f} | {map_error(maps, ref_maps):.3f} | {seconds:.2f} |"
        )


if __name__ == "__main__":
    main()
