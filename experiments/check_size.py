#!/usr/bin/env python3
r"""How many images the export's accuracy check needs: its AUROC-drop estimate at each size, on real images.

Not a test. Scores a run's test images with a float32 ONNX and a reduced-precision
ONNX (`riad-tf export`), then draws `--draws` random check sets of N good and N
defective test images for each N in `--sizes` and prints, per N, the mean and
spread of the image and pixel AUROC drop such a check measures, and how often
it would refuse the model (a drop over `--max-auroc-drop` points, as
`riad_tf.accuracy_check.over_tolerance` decides). The first line is the drop
on every test image, with a paired bootstrap 95 % interval.

    python3 -m experiments.check_size runs/mt64/riad \
        --float32 runs/mt64/check-32/riad.onnx --model runs/mt64/check-32/riad_int8.onnx --draws 300
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a trained riad-tf run: its own data set is scored")
    parser.add_argument("--float32", type=Path, required=True, help="the float32 ONNX (riad.onnx)")
    parser.add_argument("--model", type=Path, required=True, help="the reduced-precision ONNX (riad_int8.onnx)")
    parser.add_argument("--sizes", default="32,64,128", help="check sizes N: N good and N defective images")
    parser.add_argument("--draws", type=int, default=200, help="random check sets per size")
    parser.add_argument("--max-auroc-drop", type=float, default=1.0, help="the tolerance, in points")
    parser.add_argument("--pixels", action="store_true", help="also pixel AUROC (slower)")
    return parser.parse_args(argv)


def drops(pick, labels, scores, maps, masks, pixels: bool) -> tuple[float, float]:
    """(image, pixel) AUROC drop in points from float32 to the model on the images `pick`."""
    from riad_tf import metrics

    image = 100 * (
        metrics.image_auroc(scores[0][pick], labels[pick]) - metrics.image_auroc(scores[1][pick], labels[pick])
    )
    if not pixels:
        return image, float("nan")
    truth = masks[pick]
    pixel = 100 * (metrics.pixel_auroc(maps[0][pick], truth) - metrics.pixel_auroc(maps[1][pick], truth))
    return image, pixel


def main(argv=None) -> int:
    from edge.runner import Runner
    from scripts.runtime_accuracy import run_data

    args = parse_args(argv)
    data = run_data(args.run)
    test, labels, masks = data["test"], data["labels"].astype(bool), data["test_masks"]
    maps, scores = [], []
    for path in (args.float32, args.model):
        batch_maps, batch_scores = Runner.open(path)(test)
        maps.append(batch_maps)
        scores.append(batch_scores)
    rng = np.random.default_rng(0)
    good, bad = np.flatnonzero(~labels), np.flatnonzero(labels)

    def drop_on(n_good, n_bad, replace, pixels=False):
        pick = np.r_[rng.choice(good, n_good, replace=replace), rng.choice(bad, n_bad, replace=replace)]
        return drops(pick, labels, scores, maps, masks, pixels)

    image, pixel = drops(np.arange(len(test)), labels, scores, maps, masks, args.pixels)
    low, high = np.percentile([drop_on(len(good), len(bad), True)[0] for _ in range(args.draws)], [2.5, 97.5])
    print(f"{args.model}: {len(good)} good and {len(bad)} defective test images")
    pixel_line = f", pixel AUROC drop {pixel:+.2f}" if args.pixels else ""
    print(
        f"every test image: image AUROC drop {image:+.2f} points (bootstrap 95 %: {low:+.2f} to {high:+.2f}){pixel_line}"
    )
    print(
        "| check size (good + defective) | image drop: mean | sd | refused (image) | pixel drop: mean | sd | refused (either) |"
    )
    print("|---|--:|--:|--:|--:|--:|--:|")
    for size in (int(s) for s in args.sizes.split(",")):
        n_good, n_bad = min(size, len(good)), min(size, len(bad))
        found = np.array([drop_on(n_good, n_bad, False, args.pixels) for _ in range(args.draws)])
        cells = [f"{n_good} + {n_bad}", f"{found[:, 0].mean():+.2f}", f"{found[:, 0].std():.2f}"]
        cells.append(f"{100 * np.mean(found[:, 0] > args.max_auroc_drop):.0f} %")
        if args.pixels:
            refused = np.mean(found.max(axis=1) > args.max_auroc_drop)
            cells += [f"{found[:, 1].mean():+.2f}", f"{found[:, 1].std():.2f}", f"{100 * refused:.0f} %"]
        else:
            cells += ["-"] * 3
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
