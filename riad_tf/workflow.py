"""The main jobs, end to end: train a run on a data set, and the built-in demo.

The CLI calls these; scripts and notebooks can too.

Example:

>>> from riad_tf.data import load_dataset, validate
>>> split, _ = validate(load_dataset("data/bottle"))             # doctest: +SKIP
>>> train_run(RiadConfig(epochs=10), split, "runs/bottle")       # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

from riad_tf.config import RiadConfig
from riad_tf.data import DataSplit, load_arrays, split_holdout

# A reduced model at 64 px: the demo finishes in minutes on two CPU cores.
DEMO_CONFIG = RiadConfig(
    image_size=(64, 64),
    widths=(16, 32, 64, 64, 64),
    ks=(2, 4, 8, 16),
    smoothing=7,
    epochs=40,
    batch_size=8,
    learning_rate=1e-3,
    val_fraction=0.15,
)


def train_run(config: RiadConfig, split: DataSplit, out_dir, progress: bool = True, strategy=None) -> dict:
    """Trains on the good training images and calibrates on a held-out share of them.

    Returns:
        The calibrated thresholds (also in `out_dir/thresholds.json`); None on
        a non-chief worker of a multi-worker job.
    """
    from riad_tf.distribute import is_chief, make_strategy
    from riad_tf.evaluate import calibrate_run
    from riad_tf.train import train

    kept, held_out = split_holdout(split.train, config.val_fraction, config.seed)
    train_images = load_arrays(kept, config)
    holdout_images = load_arrays(held_out, config) if held_out else None
    strategy = strategy or make_strategy(config.strategy)
    train(config, train_images, out_dir, holdout_images, strategy=strategy, progress=progress)
    if not is_chief(strategy):
        return None  # a non-chief worker of a multi-worker job: the chief calibrates and writes the run
    calibration = holdout_images if holdout_images is not None else train_images
    return calibrate_run(out_dir, calibration, config.target_fpr)


def run_demo(out_dir: Path, epochs: int | None = None, progress: bool = True) -> dict:
    """Synthetic textures with planted defects -> train -> calibrate -> evaluate -> report."""
    from riad_tf.data import load_mvtec, validate
    from riad_tf.evaluate import evaluate_run
    from riad_tf.synthetic import make_synthetic_dataset

    config = DEMO_CONFIG if epochs is None else DEMO_CONFIG.with_overrides({"epochs": epochs})
    data_dir = make_synthetic_dataset(out_dir / "data", image_size=config.image_size[0], n_train=60, n_test_good=15, n_test_defect=15)
    split, _ = validate(load_mvtec(data_dir))
    run_dir = out_dir / "run"
    train_run(config, split, run_dir, progress=progress)
    summary = evaluate_run(run_dir, split.test, run_dir / "eval")
    print(
        f"demo: image AUROC {summary['image_auroc']:.3f}, pixel AUROC {summary['pixel_auroc']:.3f}, "
        f"AUPRO {summary['aupro']:.3f}"
    )
    return {
        "data": data_dir,
        "run": run_dir,
        "metrics": run_dir / "eval" / "metrics.md",
        "report": run_dir / "eval" / "report" / "index.html",
    }
