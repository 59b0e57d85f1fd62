#!/usr/bin/env python3
r"""riad-tf against the public PyTorch recipe, side by side on real images, in one command.

Both train on the same magnetic-tile images (../shared/data/magnetic_tile), at the
same size, U-Net widths, K, n, batch, seed and number of epochs, one after the
other on this machine with the same threads, and both are scored on the same
test images with the same metric code (`riad_tf.metrics`):

- `reference`: `experiments/reference_torch.py` (PyTorch's defaults, Adam 1e-4 with
  weight decay 1e-5, constant rate), one run of the largest `--epochs`, its test
  set scored after every epoch of `--eval-epochs` and of `--epochs`. Its rate is
  constant, so its state after 13 epochs is that of a 13-epoch run.
- `riad-tf`: the library's default recipe (configs/default.yaml: learning-rate
  schedule, precision picked for this CPU, the kept best epoch) through
  `riad_tf.train.train_unet` as `riad-tf train` runs it. With a constant rate (the
  default) one run of the largest `--epochs` serves every budget, scored after
  each of them; a schedule that depends on the run's length (`--config
  configs/cosine_lr.yaml`) gets one run per value of `--epochs`, each ending
  with its kept epoch. The longest run is also scored at `--eval-epochs` for
  the accuracy-against-time curve.

Printed and written to OUT/results.md (and results.json, curve.png):

1. equal epochs: image AUROC, pixel AUROC, AUPRO, F1-max, seconds per
   training epoch and training wall time of both, per value of `--epochs`;
2. accuracy against budget: the same metrics at every scored epoch, with the
   training wall time up to it;
3. time to accuracy: the training wall time each side needed to first reach the
   reference's final image AUROC, pixel AUROC and AUPRO, and the ratio.

With `--seeds 0,1` the whole comparison runs once per seed (its own data split,
initialisation and masks) in OUT/seed-N, and OUT/results.md holds the
equal-epoch metrics as means over the seeds, each seed's value beside them.

Training time is the time of the training steps (the per-epoch `seconds` of
each side's history) and of riad-tf's batch-norm re-estimation of each scored
model (`bn_statistics: reestimated`), not of scoring. Data: `--train-images` good images
train both, `--holdout` other good images give the validation loss (and
riad-tf's batch-norm guard and kept epoch), the test set is `--test-good` good
and `--test-defective` defective images (every defect type, seeded). Maps are
compared with the masks at the model's size. Re-running the command reuses
finished runs and their scores; an interrupted riad-tf run resumes. riad-tf's
scored models keep their weights (riad-tf-E/weights/epoch_XXX.weights.h5), so
they can be scored again another way (`experiments/partition_check.py`).

Needs PyTorch for the reference (`pip install -e .[reference]`; measured with torch 2.13.0).

Examples:

    python3 -m experiments.compare_reference                                     # about 70 min on 2 cores
    python3 -m experiments.compare_reference --seeds 0,1 --out runs/compare-seeds  # twice that
    python3 -m experiments.compare_reference --epochs 2 --eval-epochs 1 --train-images 16 \
        --holdout 8 --test-good 8 --test-defective 8 --widths 8,16,32,32,32 --out runs/compare-smoke
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from riad_tf.markdown import markdown_table

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "magnetic_tile"
METRICS = (("image AUROC", "image_auroc"), ("pixel AUROC", "pixel_auroc"), ("AUPRO", "aupro"), ("F1-max", "f1_max"))
TARGETS = METRICS[:3]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="magnetic-tile root (default: %(default)s)")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("runs") / "compare",
        help="output folder; re-run to resume (default: %(default)s)",
    )
    parser.add_argument(
        "--config", type=Path, default=REPO / "configs" / "default.yaml", help="riad-tf config (default: %(default)s)"
    )
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument(
        "--widths", default="32,64,128,256,256", help="U-Net widths of both sides (default: %(default)s)"
    )
    parser.add_argument(
        "--smoothing",
        type=int,
        default=11,
        help="mean filter of Eq. 8 (the paper's 21 at 256 px; default: %(default)s)",
    )
    parser.add_argument("--epochs", default="13,40", help="equal-epoch budgets to compare (default: %(default)s)")
    parser.add_argument(
        "--eval-epochs", default="5,10,20,30", help="extra epochs scored along the longest runs (default: %(default)s)"
    )
    parser.add_argument("--train-images", type=int, default=200)
    parser.add_argument(
        "--holdout", type=int, default=40, help="good images for the validation loss (default: %(default)s)"
    )
    parser.add_argument("--test-good", type=int, default=80)
    parser.add_argument("--test-defective", type=int, default=160)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--seeds",
        help="several seeds, e.g. 0,1: the whole comparison once per seed in OUT/seed-N, "
        "and a table of the means (replaces --seed)",
    )
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count(), help="threads of both sides (default: all cores)"
    )
    parser.add_argument("--worker", choices=["riad-tf"], help=argparse.SUPPRESS)
    parser.add_argument("--run-epochs", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def fail(message: str):
    print(f"compare_reference.py: error: {message}", file=sys.stderr)
    raise SystemExit(1)


def _ints(text: str) -> list[int]:
    """Comma-separated integers, in the order given."""
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        fail(f"expected comma-separated integers, got {text!r}")


def riad_config(args):
    """The library's config (`--config`) at the comparison's size, widths, smoothing and seed."""
    from riad_tf.config import RiadConfig

    return RiadConfig.load(args.config).with_overrides(
        {
            "image_size": (args.image_size,) * 2,
            "channels": 1,
            "widths": _ints(args.widths),
            "smoothing": args.smoothing,
            "seed": args.seed,
        }
    )


# ----------------------------------------------------------------------------
# Data


def seeded_samples(args) -> tuple[list, list]:
    """The good training images in the seed's order, and the test images.

    Training takes the first `--train-images`, validation the next
    `--holdout`; the test set is `--test-good` good and `--test-defective`
    defective images, seeded.
    """
    from riad_tf.data import DataError, load_magnetic_tile
    from riad_tf.image_files import validate

    if not (args.data / "MT_Free").is_dir():
        print(f"compare_reference.py: {args.data}: magnetic-tile data not found; pass --data PATH", file=sys.stderr)
        raise SystemExit(2)
    try:
        split, _ = validate(load_magnetic_tile(args.data, seed=args.seed))
    except DataError as err:
        fail(str(err))
    rng = np.random.default_rng(args.seed)
    good = [split.train[i] for i in rng.permutation(len(split.train))]
    if len(good) < args.train_images + args.holdout:
        fail(f"{len(good)} good training images, fewer than --train-images + --holdout")
    test_good = [s for s in split.test if s.label == 0]
    defective = [s for s in split.test if s.label == 1]
    test = [test_good[i] for i in sorted(rng.permutation(len(test_good))[: args.test_good])]
    test += [defective[i] for i in sorted(rng.permutation(len(defective))[: args.test_defective])]
    return good, test


def prepare_data(args) -> Path:
    """Decodes the seeded train / holdout / test images once into OUT/data.npz (reused when present)."""
    from edge.files import atomic_path, atomic_write_text
    from riad_tf.image_files import load_arrays

    path = args.out / "data.npz"
    sizes = {
        k: getattr(args, k) for k in ("image_size", "train_images", "holdout", "test_good", "test_defective", "seed")
    }
    spec_path = args.out / "data.json"
    if path.is_file() and spec_path.is_file() and json.loads(spec_path.read_text()).get("sizes") == sizes:
        return path
    good, test = seeded_samples(args)
    config = riad_config(args)
    arrays = {
        "train": load_arrays(good[: args.train_images], config),
        "holdout": load_arrays(good[args.train_images : args.train_images + args.holdout], config),
    }
    arrays["test"], arrays["test_masks"] = load_arrays(test, config, with_masks=True)
    arrays["labels"] = np.array([s.label for s in test], np.int64)
    arrays["defect_types"] = np.array(["good" if s.label == 0 else s.defect_type for s in test])
    args.out.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)
    atomic_write_text(spec_path, json.dumps({"sizes": sizes, "test": [str(s.path) for s in test]}, indent=1) + "\n")
    return path


# ----------------------------------------------------------------------------
# The two sides


def _history(run_dir: Path) -> list[dict]:
    path = run_dir / "history.json"
    return json.loads(path.read_text()) if path.is_file() else []


def run_reference(args, data: Path, epochs: int, eval_epochs: list[int]) -> Path:
    run_dir = args.out / "reference"
    wanted = [run_dir / "eval" / f"epoch_{e:03d}.npz" for e in eval_epochs]
    if len(_history(run_dir)) >= epochs and all(p.is_file() for p in wanted):
        print(f"== reference: {run_dir} is done; reusing it", flush=True)
        return run_dir
    command = [
        sys.executable,
        "-m",
        "experiments.reference_torch",  # from the repository root, as this script runs
        "--data",
        str(data),
        "--out",
        str(run_dir),
        "--epochs",
        str(epochs),
        "--eval-epochs",
        ",".join(map(str, eval_epochs)),
        "--widths",
        args.widths,
        "--smoothing",
        str(args.smoothing),
        "--seed",
        str(args.seed),
        "--threads",
        str(args.threads),
    ]
    config = riad_config(args)
    command += ["--ks", ",".join(map(str, config.ks)), "--n", str(config.n), "--batch-size", str(config.batch_size)]
    print(f"== reference: training {epochs} epochs in {run_dir}", flush=True)
    subprocess.run(command, check=True)
    return run_dir


def run_riad(args, data: Path, epochs: int, eval_epochs: list[int]) -> Path:
    from riad_tf.run import CONFIG_FILE, load_config

    run_dir = args.out / f"riad-tf-{epochs}"
    wanted = riad_config(args).with_overrides({"epochs": epochs})
    if (run_dir / CONFIG_FILE).is_file() and load_config(run_dir) != wanted:
        fail(f"{run_dir} holds a run of another configuration than {args.config}; delete it or use another --out")
    if (run_dir / "eval" / "final.npz").is_file():
        print(f"== riad-tf: {run_dir} is done; reusing it", flush=True)
        return run_dir
    command = [
        sys.executable,
        "-m",
        "experiments.compare_reference",  # from the repository root, as this script runs
        "--worker",
        "riad-tf",
        "--run-epochs",
        str(epochs),
        "--eval-epochs",
        ",".join(map(str, eval_epochs)),
    ]
    command += [
        f"--{k.replace('_', '-')}={v}"
        for k, v in vars(args).items()
        if k not in ("worker", "run_epochs", "eval_epochs", "epochs", "seeds")
    ]
    print(f"== riad-tf: training {epochs} epochs in {run_dir}", flush=True)
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    return run_dir


def riad_worker(args) -> int:
    """Trains one riad-tf run (in its own process, so TensorFlow and PyTorch never share one)."""
    import tensorflow as tf

    import riad_tf  # noqa: F401  (before TensorFlow: CPU defaults)
    from edge.files import atomic_path
    from riad_tf.batchnorm_guard import settle_batchnorm
    from riad_tf.detector import Detector
    from riad_tf.run import load_unet
    from riad_tf.run_records import float32_copy
    from riad_tf.train import train_unet

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    data = np.load(args.out / "data.npz")
    config = riad_config(args).with_overrides({"epochs": args.run_epochs})
    run_dir = args.out / f"riad-tf-{args.run_epochs}"
    (run_dir / "eval").mkdir(parents=True, exist_ok=True)
    (run_dir / "weights").mkdir(parents=True, exist_ok=True)
    eval_epochs = set(_ints(args.eval_epochs))

    def save_scores(name: str, unet, **extra) -> None:
        maps, scores = Detector(unet, config).score(data["test"], batch_size=8)
        with atomic_path(run_dir / "eval" / name, suffix=".npz") as tmp:
            np.savez(tmp, maps=maps.astype(np.float16), scores=scores, **extra)

    def save_weights(name: str, unet) -> None:
        # Each scored model's weights, so that it can be scored again another way (experiments/partition_check.py).
        with atomic_path(run_dir / "weights" / f"{name}.weights.h5", suffix=".weights.h5") as tmp:
            unet.save_weights(tmp)

    def score_along(epoch: int, unet) -> None:
        # Scored as a run of `epoch` epochs would ship it: the batch-norm statistics settled as train_unet() does.
        if epoch in eval_epochs and not (run_dir / "eval" / f"epoch_{epoch:03d}.npz").is_file():
            shipped = float32_copy(unet, config)
            settled = settle_batchnorm(shipped, data["train"], config)
            save_scores(
                f"epoch_{epoch:03d}.npz", shipped, bn_reestimate_seconds=settled.get("bn_reestimate_seconds", 0.0)
            )
            save_weights(f"epoch_{epoch:03d}", shipped)

    train_unet(config, data["train"], run_dir, data["holdout"], progress=False, on_epoch_end=score_along)
    save_scores("final.npz", load_unet(run_dir))  # the model riad-tf ships: the kept epoch
    return 0


# ----------------------------------------------------------------------------
# Metrics and tables


def scored_points(run_dir: Path, data) -> list[dict]:
    """Metrics of every scored state of a run, with the training seconds up to it.

    riad-tf's seconds include the batch-norm re-estimation that the scored
    model had (`bn_statistics: reestimated`): part of what its training costs.
    """
    from riad_tf import metrics

    history = _history(run_dir)
    cumulative = np.cumsum([r["seconds"] for r in history])
    points = []
    for path in sorted((run_dir / "eval").glob("*.npz")):
        final = path.stem == "final"
        epoch = len(history) if final else int(path.stem.split("_")[1])
        scores = np.load(path)
        summary = metrics.summarize(
            scores["scores"], data["labels"], scores["maps"].astype(np.float32), data["test_masks"]
        )
        kept_record = next((r for r in history if r.get("kept")), {}) if final else {}
        kept = kept_record.get("epoch", epoch)
        settling = (
            kept_record.get("bn_reestimate_seconds", 0.0) if final else float(scores.get("bn_reestimate_seconds", 0.0))
        )
        points.append(
            {
                "epoch": epoch,
                "kept_epoch": kept,
                "final": final,
                "train_seconds": float(cumulative[epoch - 1]) + settling,
                **{k: summary[k] for _, k in METRICS},
            }
        )
    return points


def _cell(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def riad_runs(config, budgets) -> list[int]:
    """The riad-tf runs a comparison needs: one per budget, or only the longest when the rate is constant.

    A constant rate does not depend on the run's length, so a shorter budget is
    the longest run scored after that many epochs (the same weights a run of
    that length would end with; its kept epoch is that epoch).
    """
    return [max(budgets)] if config.lr_schedule == "constant" else list(budgets)


def riad_at(budget: int, riad: dict, histories: dict) -> tuple[dict, list[dict], str]:
    """riad-tf's scored point, training history and row label for an equal-epoch budget."""
    if budget in riad:
        point = next(p for p in riad[budget] if p["final"])
        return point, histories[budget], f"riad-tf (kept epoch {point['kept_epoch']})"
    longest = max(riad)
    point = next((p for p in riad[longest] if p["epoch"] == budget and not p["final"]), None)
    if point is None:
        fail(
            f"riad-tf-{longest} has no scores after epoch {budget} (interrupted while scoring it?); "
            f"delete that run folder to train it again"
        )
    return point, histories[longest][:budget], f"riad-tf (epoch {budget} of the {longest}-epoch run)"


def equal_epoch_figures(budgets, reference, riad, histories) -> dict:
    """Per budget and side: the metrics, seconds per epoch, training seconds and row label."""
    figures = {}
    for epochs in budgets:
        ref = next(p for p in reference if p["epoch"] == epochs and not p["final"])
        ours, our_history, our_label = riad_at(epochs, riad, histories)
        figures[epochs] = {
            side: {
                "label": label,
                **{k: point[k] for _, k in METRICS},
                "seconds_per_epoch": float(np.mean([r["seconds"] for r in history])),
                "train_seconds": point["train_seconds"],
            }
            for side, label, point, history in (
                ("reference", "reference (PyTorch)", ref, histories["reference"][:epochs]),
                ("riad-tf", our_label, ours, our_history),
            )
        }
    return figures


def equal_epoch_rows(figures) -> list[list[str]]:
    return [
        [epochs, side["label"]]
        + [_cell(side[k]) for _, k in METRICS]
        + [f"{side['seconds_per_epoch']:.1f}", f"{side['train_seconds'] / 60:.1f} min"]
        for epochs, sides in figures.items()
        for side in sides.values()
    ]


def curve_rows(name: str, points) -> list[list[str]]:
    return [
        [
            name,
            p["epoch"] if not p["final"] else f"{p['epoch']} (kept {p['kept_epoch']})",
            f"{p['train_seconds'] / 60:.1f}",
        ]
        + [_cell(p[k]) for _, k in METRICS]
        for p in points
    ]


def time_to(points, key: str, target: float) -> float | None:
    reached = [p["train_seconds"] for p in points if p[key] is not None and p[key] >= target]
    return min(reached) if reached else None


def time_to_accuracy(reference, riad_points) -> list[dict]:
    """Per target (the reference's final value): when each side first reached it, against the reference's whole run."""
    final = max((p for p in reference if not p["final"]), key=lambda p: p["epoch"])
    rows = []
    for label, key in TARGETS:
        ours = time_to(riad_points, key, final[key])
        rows.append(
            {
                "target": label,
                "value": final[key],
                "reference_run_seconds": final["train_seconds"],
                "reference_seconds": time_to(reference, key, final[key]),
                "riad_seconds": ours,
                "ratio": None if ours is None else ours / final["train_seconds"],
            }
        )
    return rows


def time_to_accuracy_rows(times) -> list[list[str]]:
    return [
        [
            f"{t['target']} {t['value']:.3f}",
            f"{t['reference_run_seconds'] / 60:.1f} min",
            f"{t['reference_seconds'] / 60:.1f} min",
        ]
        + (["not reached", "-"] if t["ratio"] is None else [f"{t['riad_seconds'] / 60:.1f} min", f"{t['ratio']:.2f}"])
        for t in times
    ]


def plot(out: Path, reference, riad: dict) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edge.files import atomic_path

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    curves = [("reference (PyTorch)", reference, "o-")] + [
        (f"riad-tf, {e}-epoch run", points, "s-" if e == max(riad) else "D") for e, points in riad.items()
    ]
    for ax, (label, key) in zip(axes, TARGETS):
        for name, points, style in curves:
            points = sorted((p for p in points if p[key] is not None), key=lambda p: p["train_seconds"])
            ax.plot([p["train_seconds"] / 60 for p in points], [p[key] for p in points], style, label=name)
        ax.set(xlabel="training wall time (min)", ylabel=label, title=label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    path = out / "curve.png"
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


def machine_line() -> str:
    import platform

    from riad_tf.distribute import cpu_bf16_support

    return (
        f"{platform.machine()}, {os.cpu_count()} CPU cores, native bfloat16: {', '.join(cpu_bf16_support()) or 'none'}"
    )


def report_header(args, command: str, config, data) -> list[str]:
    """The report's title, command, machine, data and recipes, as markdown lines."""
    labels = data["labels"]
    return [
        f"# riad-tf against the public PyTorch recipe (magnetic tile, seed {args.seed})",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine_line()}; {args.threads} threads for both sides.",
        "",
        f"Data: {len(data['train'])} good training images, {len(data['holdout'])} good held-out images (validation loss), "
        f"test {int((labels == 0).sum())} good + {int(labels.sum())} defective images; {args.image_size} x {args.image_size} px, grey, "
        f"maps compared with the masks at that size. Both: U-Net widths {list(config.unet_widths)}, K = {list(config.ks)}, n = {config.n}, "
        f"batch {config.batch_size}, mean filter {config.smoothing}, seed {args.seed}.",
        "",
        f"riad-tf: `{args.config.name}` ({describe_recipe(config)}); the reference: PyTorch defaults, Adam 1e-4, weight decay 1e-5, constant rate, float32.",
        "",
    ]


def report(args, command: str, budgets, data) -> tuple[str, dict]:
    """The seed's tables as markdown, and the same figures as a dict (OUT/results.json)."""
    config = riad_config(args)
    # A finished run of a budget's own length is used when there is one (say, from a resumed comparison).
    runs = sorted(
        set(riad_runs(config, budgets))
        | {e for e in budgets if (args.out / f"riad-tf-{e}" / "eval" / "final.npz").is_file()}
    )
    reference = scored_points(args.out / "reference", data)
    riad = {e: scored_points(args.out / f"riad-tf-{e}", data) for e in runs}
    histories = {
        "reference": _history(args.out / "reference"),
        **{e: _history(args.out / f"riad-tf-{e}") for e in runs},
    }
    figures = equal_epoch_figures(budgets, reference, riad, histories)
    # riad-tf's curve: every scored state of every run, each at its own run's training time.
    times = time_to_accuracy(reference, [p for e in runs for p in riad[e]])
    metric_names = [m for m, _ in METRICS]
    lines = report_header(args, command, config, data) + [
        "## Equal epochs",
        "",
        markdown_table(["epochs", "model"] + metric_names + ["s / epoch", "training time"], equal_epoch_rows(figures)),
        "",
        "## Time to the reference's final accuracy",
        "",
        f"Targets: the reference's values after its {max(budgets)} epochs. Times are training wall time, at the scored epochs only.",
        "",
        markdown_table(
            [
                "target",
                f"reference, {max(budgets)} epochs",
                "reference first reached it",
                "riad-tf first reached it",
                "riad-tf / reference's run",
            ],
            time_to_accuracy_rows(times),
        ),
        "",
        "## Accuracy against training time",
        "",
        markdown_table(
            ["model", "epoch", "training min"] + metric_names,
            curve_rows("reference", reference)
            + [r for e in runs for r in curve_rows(f"riad-tf {e}-epoch run", riad[e])],
        ),
        "",
        "F1-max is tuned on the test data itself. Training time counts the training steps and riad-tf's "
        "batch-norm re-estimation of the scored model, not scoring.",
        "",
    ]
    plot(args.out, reference, riad)
    summary = {
        "seed": args.seed,
        "equal_epochs": figures,
        "time_to_accuracy": times,
        "reference": reference,
        "riad-tf": riad,
    }
    return "\n".join(lines), summary


def mean_report(command: str, seeds: list[int], summaries: list[dict]) -> str:
    """The equal-epoch table as means over seeds, each seed's value beside it, and the time ratios."""
    metric_names = [m for m, _ in TARGETS]
    rows = []
    for epochs, sides in summaries[0]["equal_epochs"].items():
        for side in sides:
            cells = []
            for _, key in TARGETS:
                values = [s["equal_epochs"][epochs][side][key] for s in summaries]
                cells.append(f"{np.mean(values):.4f} ({', '.join(f'{v:.4f}' for v in values)})")
            rows.append([epochs, "reference (PyTorch)" if side == "reference" else "riad-tf"] + cells)
    ratios = []
    for i, target in enumerate(summaries[0]["time_to_accuracy"]):
        per_seed = [s["time_to_accuracy"][i]["ratio"] for s in summaries]
        ratios.append([target["target"]] + ["not reached" if r is None else f"{r:.2f}" for r in per_seed])
    seed_list = ", ".join(map(str, seeds))
    return "\n".join(
        [
            f"# riad-tf against the public PyTorch recipe (magnetic tile, seeds {seed_list})",
            "",
            f"Command: `{command}`",
            "",
            "## Equal epochs: mean over seeds (each seed's value in brackets, in the order of the seeds)",
            "",
            markdown_table(["epochs", "model"] + metric_names, rows),
            "",
            "## riad-tf's training time to the reference's final value, over the reference's whole run",
            "",
            markdown_table(["target"] + [f"seed {s}" for s in seeds], ratios),
            "",
            "Each seed's tables, data and training recipe: " + ", ".join(f"`seed-{s}/results.md`" for s in seeds) + ".",
            "",
        ]
    )


def describe_recipe(config) -> str:
    from riad_tf.distribute import resolve_precision
    from riad_tf.identity import describe_schedule

    return (
        f"Adam lr {config.learning_rate:g} ({describe_schedule(config)}), no weight decay, "
        f"precision {resolve_precision(config.mixed_precision, config.xla)}"
    )


def compare_seed(args, command: str, budgets: list[int]) -> tuple[str, dict]:
    """Trains (or reuses) both sides for `args.seed` in `args.out` and writes that seed's results."""
    from edge.files import atomic_write_text

    along = sorted(set(_ints(args.eval_epochs)) | set(budgets))
    data_path = prepare_data(args)
    run_reference(args, data_path, max(budgets), along)
    runs = riad_runs(riad_config(args), budgets)
    for epochs in runs:
        run_riad(args, data_path, epochs, [e for e in along if e < epochs] if epochs == max(runs) else [])
    text, summary = report(args, command, budgets, np.load(data_path))
    atomic_write_text(args.out / "results.md", text)
    atomic_write_text(args.out / "results.json", json.dumps(summary, indent=1, default=float) + "\n")
    return text, summary


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the library's progress lines
    if args.worker:
        return riad_worker(args)
    started = time.time()
    command = "python3 -m experiments.compare_reference " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    budgets = sorted(set(_ints(args.epochs)))
    if not args.seeds:
        text, _ = compare_seed(args, command.strip(), budgets)
        print("\n" + text)
        print(f"whole command: {(time.time() - started) / 60:.1f} min; tables in {args.out / 'results.md'}")
        return 0
    from edge.files import atomic_write_text

    seeds = _ints(args.seeds)
    summaries = []
    for seed in seeds:
        print(f"== seed {seed}", flush=True)
        per_seed = argparse.Namespace(**{**vars(args), "seed": seed, "seeds": None, "out": args.out / f"seed-{seed}"})
        summaries.append(compare_seed(per_seed, command.strip(), budgets)[1])
    text = mean_report(command.strip(), seeds, summaries)
    atomic_write_text(args.out / "results.md", text)
    atomic_write_text(args.out / "results.json", json.dumps({"seeds": seeds, "per_seed": summaries}, indent=1) + "\n")
    print("\n" + text)
    print(f"whole command: {(time.time() - started) / 60:.1f} min; tables in {args.out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
