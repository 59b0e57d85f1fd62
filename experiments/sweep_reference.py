#!/usr/bin/env python3
r"""Trains the PyTorch reference under several recipes and seeds at once, and prints each recipe's mean metrics.

riad-tf's recipe differs from the public PyTorch one in a few places (the
learning rate, the weight decay, a mask partition per image, bfloat16
training). `experiments/reference_torch.py` can take each of them on its own, so
this script finds out which of them changes the accuracy, averaged over enough
seeds and data splits to see through the run-to-run spread (docs/accuracy.md).
On a GPU a 40-epoch run at 128 px takes well under a minute, so a whole sweep
fits in a few minutes; on 2 CPU cores each run takes about 45 minutes.

The data are `data.npz` files written by `experiments/compare_reference.py` (one
per data split), or the float16 copies that `--pack` writes to carry them to a
GPU machine. Every (data, recipe, seed) run goes to
its own folder under `--out` and is skipped when it has already scored every
`--eval-epochs`, so an interrupted sweep resumes. `--deadline` stops starting
new runs after that many seconds; the report covers whatever finished.

The report, `OUT/results.md` (and `results.json`), gives per recipe and epoch
the mean and standard deviation over runs of image AUROC, pixel AUROC and
AUPRO, computed with riad-tf's metric code.

PyTorch comes with the `[reference]` extra: `pip install -e .[reference]` (measured with torch 2.13.0).

Example:

    python3 -m experiments.sweep_reference --data runs/compare-seeds/seed-0/data.npz runs/compare-seeds/seed-1/data.npz \
        --pack runs/gpu-data
    python3 -m experiments.sweep_reference --data runs/gpu-data/split-0.npz runs/gpu-data/split-1.npz \
        --seeds 0,1,2,3 --epochs 40 --eval-epochs 10,13,20,30,40 --device cuda --jobs 12 --out runs/sweep
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from edge.files import atomic_path, atomic_write_text

# name -> reference_torch.py arguments: the public recipe, each riad-tf difference alone, and riad-tf's whole recipe
RECIPES = {
    "reference": "",
    "lr-5e-4": "--learning-rate 5e-4",
    "no-weight-decay": "--weight-decay 0",
    "mask-per-image": "--mask-draw image",
    "bfloat16": "--precision bfloat16",
    "riad-tf": "--learning-rate 5e-4 --weight-decay 0 --mask-draw image --precision bfloat16",
    "riad-tf-float32": "--learning-rate 5e-4 --weight-decay 0 --mask-draw image",
    "riad-tf-lr-1e-4": "--learning-rate 1e-4 --weight-decay 0 --mask-draw image --precision bfloat16",
}
METRICS = ("image_auroc", "pixel_auroc", "aupro")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, nargs="+", required=True, help="data.npz files, one per data split")
    parser.add_argument("--out", type=Path, help="output folder (required unless --pack)")
    parser.add_argument("--recipes", default=",".join(RECIPES), help=f"comma-separated, from: {', '.join(RECIPES)}")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--eval-epochs", default="13,20,30,40")
    parser.add_argument("--widths", default="32,64,128,256,256", help="U-Net widths (compare_reference.py's)")
    parser.add_argument("--smoothing", type=int, default=11, help="mean-filter size (compare_reference.py's)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once")
    parser.add_argument("--deadline", type=float, default=None, help="start no run after this many seconds")
    parser.add_argument(
        "--pack",
        type=Path,
        default=None,
        help="only write compressed float16 copies of the --data files (split-N.npz) to this folder and stop; "
        "they are a third the size, to carry to a GPU machine",
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(args.recipes.split(",")) - set(RECIPES))
    if unknown:
        parser.error(f"unknown recipe(s) {', '.join(unknown)}; known: {', '.join(RECIPES)}")
    for path in args.data:
        if not path.is_file():
            parser.error(f"{path}: no such data file (experiments/compare_reference.py writes one)")
    if args.out is None and args.pack is None:
        parser.error("--out is required (or --pack)")
    return args


def pack(data: list[Path], folder: Path) -> list[Path]:
    """Writes each data file as `folder/split-N.npz` with its float32 arrays in float16, compressed."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for i, path in enumerate(data):
        arrays = np.load(path)
        small = {k: arrays[k].astype(np.float16) if arrays[k].dtype == np.float32 else arrays[k] for k in arrays.files}
        target = folder / f"split-{i}.npz"
        with atomic_path(target) as tmp, open(tmp, "wb") as file:  # a file object: savez would add ".npz"
            np.savez_compressed(file, **small)
        written.append(target)
    return written


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def planned_runs(args) -> list[tuple[Path, str, int, Path]]:
    """(data, recipe, seed, folder) for every run, seed by seed, so a deadline leaves whole seeds."""
    return [
        (data, recipe, seed, args.out / f"split-{i}" / recipe / f"seed-{seed}")
        for seed in _ints(args.seeds)
        for i, data in enumerate(args.data)
        for recipe in args.recipes.split(",")
    ]


def _finished(folder: Path, eval_epochs: list[int]) -> bool:
    return all((folder / "eval" / f"epoch_{e:03d}.npz").is_file() for e in eval_epochs)


def train_run(args, data: Path, recipe: str, seed: int, folder: Path, started: float) -> str:
    eval_epochs = _ints(args.eval_epochs)
    if _finished(folder, eval_epochs):
        return f"{folder}: already scored"
    if args.deadline is not None and time.time() - started > args.deadline:
        return f"{folder}: not started (deadline)"
    folder.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "experiments.reference_torch",  # from the repository root, as this script runs
        *("--data", str(data), "--out", str(folder), "--epochs", str(args.epochs)),
        *("--eval-epochs", args.eval_epochs, "--widths", args.widths, "--smoothing", str(args.smoothing)),
        *("--seed", str(seed), "--device", args.device, "--threads", "1"),
        *shlex.split(RECIPES[recipe]),
    ]
    with open(folder / "log.txt", "w") as log:
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT)
    return f"{folder}: {'done' if code == 0 else f'failed with exit code {code} (see log.txt)'}"


def score_run(data: Path, folder: Path) -> list[dict]:
    """The metrics of each scored epoch of one run (compare_reference.py's), with its losses and speed."""
    from experiments.compare_reference import scored_points

    history = json.loads((folder / "history.json").read_text())
    rows = []
    for point in scored_points(folder, np.load(data)):
        epoch = point["epoch"]
        losses = {"loss": history[epoch - 1]["loss"], "val_loss": history[epoch - 1]["val_loss"]}
        rows.append({**point, "seconds_per_epoch": point["train_seconds"] / epoch, **losses})
    return rows


def summarize_recipes(results: dict) -> list[dict]:
    """Mean and standard deviation per (recipe, epoch) over every run that scored that epoch."""
    grouped: dict[tuple[str, int], list[dict]] = {}
    for run in results["runs"]:
        for row in run["rows"]:
            grouped.setdefault((run["recipe"], row["epoch"]), []).append(row)
    order = list(RECIPES)
    summary = []
    for (recipe, epoch), rows in sorted(grouped.items(), key=lambda item: (order.index(item[0][0]), item[0][1])):
        entry = {"recipe": recipe, "epoch": epoch, "runs": len(rows)}
        for key in (*METRICS, "val_loss", "seconds_per_epoch"):
            values = np.array([r[key] for r in rows], np.float64)
            entry[key], entry[key + "_std"] = float(values.mean()), float(values.std(ddof=1) if len(values) > 1 else 0)
        summary.append(entry)
    return summary


def markdown(summary: list[dict], command: str) -> str:
    lines = [
        f"`{command}`",
        "",
        "Mean ± standard deviation over runs (data splits x seeds).",
        "",
        "| recipe | epoch | runs | image AUROC | pixel AUROC | AUPRO | val loss | s/epoch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in summary:
        cells = [f"{e[k]:.4f} ± {e[k + '_std']:.4f}" for k in METRICS]
        lines.append(
            f"| {e['recipe']} | {e['epoch']} | {e['runs']} | {' | '.join(cells)} | {e['val_loss']:.4f} "
            f"| {e['seconds_per_epoch']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.pack is not None:
        for path in pack(args.data, args.pack):
            print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
        return 0
    command = "python3 -m experiments.sweep_reference " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    args.out.mkdir(parents=True, exist_ok=True)
    runs, started = planned_runs(args), time.time()
    with ThreadPoolExecutor(args.jobs) as pool:
        for message in pool.map(lambda run: train_run(args, *run, started), runs):
            print(f"[{time.time() - started:.0f} s] {message}", flush=True)
    scored = [
        (data, recipe, seed, folder) for data, recipe, seed, folder in runs if (folder / "history.json").is_file()
    ]
    with ProcessPoolExecutor(max(1, min(os.cpu_count() or 1, len(scored)))) as pool:
        rows = list(pool.map(score_run, [r[0] for r in scored], [r[3] for r in scored]))
    results = {
        "command": command,
        "runs": [
            {"data": str(data), "recipe": recipe, "seed": seed, "rows": run_rows}
            for (data, recipe, seed, _), run_rows in zip(scored, rows)
        ],
    }
    results["summary"] = summarize_recipes(results)
    atomic_write_text(args.out / "results.json", json.dumps(results, indent=1) + "\n")
    table = markdown(results["summary"], command)
    atomic_write_text(args.out / "results.md", table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
