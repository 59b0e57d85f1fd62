#!/usr/bin/env python3
"""Inference partitions with and without context for every cell, on the same trained models (docs/accuracy.md).

A fixed inference partition that removes a cell together with all of its
4-neighbours makes the U-Net inpaint that cell blind, in every image: a false
defect in the same place of every map (docs/method.md, "Masks"). This script
scores the same trained weights both ways, `paper` (Algorithm 1's plain draw)
and `context` (riad-tf's inference partitions, `riad_tf.masks.give_context`),
on the same magnetic-tile test images, and prints per seed and scored epoch:

- image AUROC, pixel AUROC and AUPRO (`riad_tf.metrics.summarize`);
- the hot spot of the mean map of the good test images (`riad_tf.thresholds.hot_spot`:
  its ratio to the median window and the share of good maps that peak in it).

It reads runs of `experiments/compare_reference.py`'s riad-tf side, which keep the
weights of every scored epoch (RUNS/seed-N/riad-tf-E/weights/epoch_XXX.weights.h5;
the longest run's last budget is its kept model, model.keras). It trains nothing;
`--train` first trains the runs it needs (riad-tf only, no PyTorch), which takes
about 25 min per seed and 40 epochs on 2 cores.

With `--run RUN` it checks one `riad-tf train` run instead (the demo's,
say): both partition rules score its calibration images and its test images;
thresholds are calibrated on the former as `riad-tf train` does, and the
table says how many good test images each rule rejects and how many defects it
finds, with the metrics and the hot spot.

Examples:

    python3 -m experiments.partition_check --runs runs/partitions --seeds 0,1 --epochs 13,40 --train
    riad-tf demo && python3 -m experiments.partition_check --run riad-demo/run
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from riad_tf.markdown import markdown_table

REPO = Path(__file__).resolve().parents[1]

METRICS = (("image AUROC", "image_auroc"), ("pixel AUROC", "pixel_auroc"), ("AUPRO", "aupro"))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs") / "partitions", help="compare_reference.py --out")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--epochs", default="13,40", help="scored epochs; the largest is the run's length")
    parser.add_argument("--train", action="store_true", help="train the missing runs first (riad-tf side only)")
    parser.add_argument(
        "--length",
        type=int,
        help="the runs' length in epochs (default: the largest of --epochs); a run still training is scored "
        "at the epochs it has passed",
    )
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "default.yaml")
    parser.add_argument("--run", type=Path, help="check one riad-tf run on its own data instead")
    parser.add_argument(
        "--colouring",
        action="store_true",
        help="also score a third rule, a random proper colouring of each grid (`coloured_masks`; an experiment)",
    )
    parser.add_argument(
        "--partition-seeds",
        default="",
        help="other inference-partition seeds to score the longest run's last epoch with, both rules: "
        "how much a new draw of the partitions alone moves the metrics",
    )
    return parser.parse_args(argv)


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def compare_args(runs: Path, seed: int, config: Path) -> argparse.Namespace:
    from experiments import compare_reference

    return compare_reference.parse_args(
        ["--seed", str(seed), "--out", str(runs / f"seed-{seed}"), "--config", str(config)]
    )


def train_missing(args, seed: int, epochs: list[int], runs: Path, config: Path) -> None:
    from experiments import compare_reference

    run_args = compare_args(runs, seed, config)
    data = compare_reference.prepare_data(run_args)
    compare_reference.run_riad(run_args, data, max(epochs), [e for e in epochs if e < max(epochs)])


def scored_model(run_dir: Path, epoch: int, longest: int):
    """The U-Net a run of `epoch` epochs ships, and its label."""
    from riad_tf.run import load_config, load_unet
    from riad_tf.run_records import float32_copy

    if epoch == longest:
        history = json.loads((run_dir / "history.json").read_text())
        kept = next((r["epoch"] for r in history if r.get("kept")), epoch)
        return load_unet(run_dir), f"{epoch} (kept {kept})"
    unet = float32_copy(load_unet(run_dir), load_config(run_dir))
    unet.load_weights(run_dir / "weights" / f"epoch_{epoch:03d}.weights.h5")
    return unet, str(epoch)


def coloured_masks(height: int, width: int, ks, n: int, seed: int, sweeps: int = 30) -> np.ndarray:
    """Partitions where no cell shares its set with a 4-neighbour: a random proper n-colouring per k (n >= 3).

    Starts from the diagonal colouring (row + 2 x column) mod n and recolours random cells with
    colours none of their neighbours has (Glauber dynamics), so every removed cell sees all of
    its neighbours. An experiment (`--colouring`), not riad-tf's rule.
    """
    rng = np.random.default_rng((seed, 3))
    per_k = []
    for k in ks:
        rows, cols = height // k, width // k
        cells = (np.arange(rows)[:, None] + 2 * np.arange(cols)[None, :] + int(rng.integers(n))) % n
        for _ in range(sweeps * rows * cols):
            r, c = int(rng.integers(rows)), int(rng.integers(cols))
            taken = {
                int(cells[y, x])
                for y, x in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1))
                if 0 <= y < rows and 0 <= x < cols
            }
            free = [colour for colour in range(n) if colour not in taken]
            cells[r, c] = free[int(rng.integers(len(free)))]
        pixel_set = np.repeat(np.repeat(cells, k, axis=0), k, axis=1)
        per_k.append((pixel_set[None] != np.arange(n)[:, None, None]).astype(np.float32)[..., None])
    return np.stack(per_k)


def score(unet, config, data, context, partition_seed: int | None = None) -> dict:
    """Metrics and the good maps' hot spot of one model with one partition rule (`context`: True, False or "colouring")."""
    from riad_tf import metrics
    from riad_tf.detector import Detector
    from riad_tf.masks import inference_masks
    from riad_tf.thresholds import hot_spot

    seed = config.seed if partition_seed is None else partition_seed
    if context == "colouring":
        masks = coloured_masks(*config.image_size, config.ks, config.n, seed)
    else:
        masks = inference_masks(*config.image_size, config.ks, config.n, seed, context=context)
    maps, scores = Detector(unet, config, masks=masks).score(data["test"], batch_size=8)
    labels = data["labels"]
    summary = metrics.summarize(scores, labels, maps, data["test_masks"])
    spot = hot_spot(maps[labels == 0], max(config.ks))
    return {**{k: summary[k] for _, k in METRICS}, "hot_spot": spot, "max_good_score": float(scores[labels == 0].max())}


def row(seed, epoch, label, result) -> list[str]:
    spot = result["hot_spot"]
    return (
        [str(seed), epoch, label]
        + [f"{result[k]:.4f}" for _, k in METRICS]
        + [
            f"{spot['ratio']:.2f} at ({spot['row']}, {spot['col']})",
            f"{spot['peak_share']:.0%}",
            f"{result['max_good_score']:.4f}",
        ]
    )


def partition_spread(args, seeds, epoch, results, load_config, write, cache) -> str:
    """Both rules with other partition seeds on the longest run's last model: a table of min / mean / max."""
    extra = _ints(args.partition_seeds)
    if not extra:
        return ""
    rows = []
    for seed in seeds:
        data = np.load(args.runs / f"seed-{seed}" / "data.npz")
        run_dir = args.runs / f"seed-{seed}" / f"riad-tf-{epoch}"
        config = load_config(run_dir)
        for name, context in (("paper", False), ("context", True)):
            picked = [results[f"seed {seed}, epoch {epoch}, {name}"]]
            for partition_seed in (s for s in extra if s != config.seed):
                key = f"seed {seed}, epoch {epoch}, {name}, partition seed {partition_seed}"
                if key not in results:
                    unet, label = scored_model(run_dir, epoch, epoch)
                    results[key] = {"label": label, **score(unet, config, data, context, partition_seed)}
                    write(cache, json.dumps(results, indent=1) + "\n")
                picked.append(results[key])
            rows.append(
                [str(seed), picked[0]["label"], name, str(len(picked))]
                + [
                    f"{min(p[k] for p in picked):.4f} / {np.mean([p[k] for p in picked]):.4f} / "
                    f"{max(p[k] for p in picked):.4f}"
                    for _, k in METRICS
                ]
            )
            print(" | ".join(rows[-1]), flush=True)
    header = ["seed", "epoch", "inference partitions", "partition seeds"] + [
        f"{m} min / mean / max" for m, _ in METRICS
    ]
    return (
        f"\nThe same model, partitions drawn with the run's seed and seeds {extra}:\n\n{markdown_table(header, rows)}\n"
    )


def check_run(run_dir: Path) -> str:
    """Both partition rules on one run: calibrated on its calibration images, measured on its test images."""
    from edge.verdicts import is_anomalous
    from riad_tf import metrics
    from riad_tf.data import split_good
    from riad_tf.detector import Detector
    from riad_tf.image_files import has_pixel_masks, load_arrays, load_split
    from riad_tf.masks import inference_masks
    from riad_tf.run import load_config, load_data_spec, load_unet
    from riad_tf.thresholds import calibrate, hot_spot

    config, unet = load_config(run_dir), load_unet(run_dir)
    split, _ = load_split(load_data_spec(run_dir))
    _, _, calibration = split_good(split.train, config.val_fraction, config.calibration_fraction, config.seed)
    if not calibration:
        sys.exit(f"partition_check.py: {run_dir}: the run has no calibration images (calibration_fraction 0)")
    good = load_arrays(calibration, config)
    test, masks = load_arrays(split.test, config, with_masks=True)
    labels = np.array([s.label for s in split.test], bool)
    pixel = has_pixel_masks(split.test)
    rows = []
    for name, context in (("paper", False), ("context", True)):
        detector = Detector(
            unet, config, masks=inference_masks(*config.image_size, config.ks, config.n, config.seed, context)
        )
        good_maps, good_scores = detector.score(good, batch_size=8)
        maps, scores = detector.score(test, batch_size=8)
        thresholds = calibrate(good_scores, good_maps, config.target_fpr, config.min_region_area)
        called = np.array([is_anomalous(s, m, thresholds) for s, m in zip(scores, maps)])
        summary = metrics.summarize(scores, labels, maps if pixel else None, masks if pixel else None)
        spot = hot_spot(maps[~labels], max(config.ks))
        rows.append(
            [name]
            + [_cell(summary[k]) for _, k in METRICS]
            + [
                f"{called[~labels].sum()} of {(~labels).sum()}",
                f"{called[labels].sum()} of {labels.sum()}",
                f"{spot['ratio']:.2f} at ({spot['row']}, {spot['col']})",
                f"{spot['peak_share']:.0%}",
            ]
        )
    header = ["inference partitions"] + [m for m, _ in METRICS]
    header += [
        f"good test images rejected (bound {thresholds['supported_fpr']:.3g}, {len(calibration)} calibration images)",
        "defective found",
        "good mean map: hot spot / median",
        "good maps peaking there",
    ]
    return markdown_table(header, rows)


def _cell(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def main(argv=None) -> int:
    args = parse_args(argv)
    seeds, epochs = _ints(args.seeds), sorted(_ints(args.epochs))
    import riad_tf  # noqa: F401  (CPU defaults before TensorFlow)
    from edge.files import atomic_write_text
    from riad_tf.run import load_config

    if args.run:
        print(f"{args.run}:\n\n{check_run(args.run)}")
        return 0

    if args.train:
        for seed in seeds:
            train_missing(args, seed, epochs, args.runs, args.config)
    # Scores already computed are kept in RUNS/partitions.json, so the command resumes.
    cache = args.runs / "partitions.json"
    results = json.loads(cache.read_text()) if cache.is_file() else {}
    rows = []
    for seed in seeds:
        data = np.load(args.runs / f"seed-{seed}" / "data.npz")
        length = args.length or max(epochs)
        run_dir = args.runs / f"seed-{seed}" / f"riad-tf-{length}"
        for epoch in epochs:
            needed = run_dir / ("eval/final.npz" if epoch == length else f"weights/epoch_{epoch:03d}.weights.h5")
            if not needed.is_file():
                sys.exit(f"partition_check.py: {needed}: not there yet; add --train, or wait for the run")
        for epoch in epochs:
            rules = (("paper", False), ("context", True)) + ((("colouring", "colouring"),) if args.colouring else ())
            for name, context in rules:
                key = f"seed {seed}, epoch {epoch}, {name}"
                if key not in results:
                    unet, label = scored_model(run_dir, epoch, length)
                    results[key] = {"label": label, **score(unet, load_config(run_dir), data, context)}
                    atomic_write_text(cache, json.dumps(results, indent=1) + "\n")
                rows.append(row(seed, results[key]["label"], name, results[key]))
                print(" | ".join(rows[-1]), flush=True)
    spread = partition_spread(args, seeds, max(epochs), results, load_config, atomic_write_text, cache)
    header = ["seed", "epoch", "inference partitions"] + [m for m, _ in METRICS]
    header += ["good mean map: hot spot / median", "good maps peaking there", "largest good score"]
    table = markdown_table(header, rows)
    means, ours = [], {k: v for k, v in results.items() if int(k.split(",")[0].split()[1]) in seeds}
    for name in sorted({key.split(", ", 2)[2] for key in ours}, key=lambda n: (len(n), n)):
        for epoch in epochs:
            picked = [v for k, v in ours.items() if k.endswith(f"epoch {epoch}, {name}")]
            if len(picked) == len(seeds):  # a row of every seed, or none
                means.append(
                    [f"{epoch}", name]
                    + [f"{np.mean([p[k] for p in picked]):.4f}" for _, k in METRICS]
                    + [f"{np.mean([p['hot_spot']['ratio'] for p in picked]):.2f}"]
                )
    mean_table = markdown_table(
        ["epoch", "inference partitions"] + [m for m, _ in METRICS] + ["hot spot / median"], means
    )
    text = f"{table}\n\nMeans over seeds {', '.join(map(str, seeds))}:\n\n{mean_table}\n" + spread
    print("\n" + text)
    atomic_write_text(args.runs / "partitions.md", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
