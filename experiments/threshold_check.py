#!/usr/bin/env python3
"""Do the calibrated thresholds keep their promise on real images (docs/method.md, "Thresholds")?

Takes a riad-tf run of `experiments/compare_reference.py` (magnetic tile: 40 held-out
good images, 80 good and 160 defective test images, all unseen in training),
calibrates its thresholds on the held-out good images at several target
false-positive rates with `riad_tf.thresholds.calibrate` (the rule `riad-tf
train` and `riad-tf calibrate` use), and prints for each: the threshold, the
rate the 40 images support, and the measured rate on the 80 good test images
and recall on the 160 defective ones.

The bound holds on average over calibration sets of images exchangeable with
the new ones; one set can land above or below it. The held-out images also
chose the kept epoch (lowest validation loss), so their scores may be
optimistic: `riad-tf train` calibrates on other images (`calibration_fraction`).
The script says how far the held-out scores sit below unseen good ones (an
AUROC, 0.5 for none), then repeats the calibration `--splits` times: on random
halves of the unseen good test images, the rate measured on the other half
(selection separated from calibration, as `riad-tf train` does now), and on
random sets of the held-out images, the rate measured on all unseen good images
(as before). The mean is what the bound promises, the 90th percentile what one
calibration can give.

Example:

    python3 -m experiments.compare_reference                # once: trains runs/compare/riad-tf-40
    python3 -m experiments.threshold_check --run runs/compare/riad-tf-40
    python3 -m experiments.threshold_check --run runs/partitions/seed-0/riad-tf-40   # experiments/partition_check.py --train
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def print_optimism(holdout_scores: np.ndarray, good_test: np.ndarray) -> None:
    """How far the held-out images that chose the epoch score below unseen good ones (an AUROC)."""
    from riad_tf.metrics import image_auroc

    # 0.5 when the held-out images score like unseen good ones; above 0.5 when choosing the epoch on them made them low.
    optimism = image_auroc(
        np.concatenate([holdout_scores, good_test]), [0] * len(holdout_scores) + [1] * len(good_test)
    )
    print(
        f"\nthe {len(holdout_scores)} held-out images chose the kept epoch; AUROC of unseen good scores against "
        f"theirs: {optimism:.3f} (0.5: they score like unseen good images)"
    )


def repeated_calibrations(pool: np.ndarray, fixed: int, n: int, target: float, splits: int, rng):
    """The measured false-positive rates of `splits` calibrations on n images of `pool`, and the supported rate.

    With `fixed` > 0, calibration sets come from the first `fixed` scores and the rate is measured on
    the rest; else both come from random halves of the whole pool.
    """
    from riad_tf.thresholds import calibrate

    rates, bound = [], None
    for _ in range(splits):
        if fixed:  # calibrate on n of the selection images, measure on the unseen ones
            chosen = rng.permutation(fixed)[:n]
            calibration, measured = pool[chosen], pool[fixed:]
        else:
            order = rng.permutation(len(pool))
            calibration, measured = pool[order[:n]], pool[order[n:]]
        thresholds = calibrate(calibration, np.zeros((n, 1, 1)), target)
        rates.append(np.mean(measured > thresholds["image"]))
        bound = thresholds["supported_fpr"]
    return rates, bound


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=REPO / "runs" / "compare" / "riad-tf-40")
    parser.add_argument("--targets", default="0.01,0.05,0.1")
    parser.add_argument("--min-region-area", type=int, default=1)
    parser.add_argument("--splits", type=int, default=500, help="random calibration sets drawn from the good images")
    args = parser.parse_args(argv)
    data_file, scored = args.run.parent / "data.npz", args.run / "eval" / "final.npz"
    if not data_file.is_file() or not scored.is_file():
        sys.exit(f"threshold_check.py: {args.run}: not a finished run of experiments/compare_reference.py")

    import riad_tf  # noqa: F401  (CPU defaults before TensorFlow)
    from edge.verdicts import is_anomalous
    from riad_tf.run import load_detector
    from riad_tf.thresholds import calibrate

    data, test = np.load(data_file), np.load(scored)
    holdout_maps, holdout_scores = load_detector(args.run).score(data["holdout"], batch_size=8)
    test_maps, test_scores, labels = test["maps"].astype(np.float32), test["scores"], data["labels"].astype(bool)
    print(
        f"run {args.run}: {len(holdout_scores)} held-out good images calibrate; test {np.sum(~labels)} good, "
        f"{np.sum(labels)} defective; min_region_area {args.min_region_area}"
    )
    print(
        "| target FPR | threshold | supported FPR | FPR 90 % bound | target supported | FPR on good test images "
        "| recall on defects |"
    )
    print("|---|---|---|---|---|---|---|")
    for target in (float(t) for t in args.targets.split(",")):
        thresholds = calibrate(holdout_scores, holdout_maps, target, min_region_area=args.min_region_area)
        called = np.array([is_anomalous(s, m, thresholds) for s, m in zip(test_scores, test_maps)])
        print(
            f"| {target:g} | {thresholds['image']:.5f} | {thresholds['supported_fpr']:.3f} | {thresholds['fpr_90']:.3f} | "
            f"{'yes' if thresholds['target_supported'] else 'no'} | {called[~labels].mean():.3f} "
            f"({called[~labels].sum()} of {np.sum(~labels)}) | {called[labels].mean():.3f} |"
        )
    good_test = test_scores[~labels]
    if args.min_region_area > 1:
        from edge.verdicts import region_score

        holdout_scores = np.array([region_score(m, args.min_region_area) for m in holdout_maps])
        good_test = np.array([region_score(m, args.min_region_area) for m in test_maps[~labels]])
    print_optimism(holdout_scores, good_test)
    targets = [float(t) for t in args.targets.split(",")]
    n = min(len(holdout_scores), len(good_test)) // 2
    pools = {
        "unseen good images only (selection separated from calibration)": (good_test, 0),
        "held-out images that chose the epoch as calibration, unseen good images measured": (
            np.concatenate([holdout_scores, good_test]),
            len(holdout_scores),
        ),
    }
    for title, (pool, fixed) in pools.items():
        print(f"\n{args.splits} random calibration sets of {n}, rate on the other good images; {title}:")
        print("| target FPR | supported FPR | mean FPR | 90th percentile FPR |")
        print("|---|---|---|---|")
        for target in targets:
            rates, bound = repeated_calibrations(pool, fixed, n, target, args.splits, np.random.default_rng(0))
            print(f"| {target:g} | {bound:.3f} | {np.mean(rates):.3f} | {np.percentile(rates, 90):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
