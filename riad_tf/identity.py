"""What names a trained run in a sign-off record: its model, configuration, data, software and training.

`run_identity` reads a run folder (`riad_tf.run`) and returns the lines the
evaluation report's header shows, so a printed report can be traced to the
exact model file (its sha256), the settings it was trained with and the images
it saw. Nothing here needs TensorFlow.

Example:

>>> from riad_tf.config import RiadConfig
>>> describe_config(RiadConfig(image_size=(64, 96), widths=(8, 8, 16, 16, 16), epochs=3))[:74]
'64 x 96 px (height x width), 3 channel(s), U-Net widths [8, 8, 16, 16, 16]'
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

from edge.metadata import file_sha256
from edge.predictions import threshold_source
from riad_tf import __version__
from riad_tf.config import RiadConfig


def describe_config(config: RiadConfig) -> str:
    """The settings that make a model, in one line: size, widths, K, n, smoothing, seed, optimiser, epochs."""
    return (
        f"{config.image_size[0]} x {config.image_size[1]} px (height x width), {config.channels} channel(s), "
        f"U-Net widths {list(config.unet_widths)}, K = {list(config.ks)}, n = {config.n}, "
        f"mean filter {config.smoothing}, seed {config.seed}, batch {config.batch_size}, "
        f"Adam lr {config.learning_rate:g} ({describe_schedule(config)}), {config.epochs} epochs"
    )


def describe_schedule(config: RiadConfig) -> str:
    """The learning-rate schedule in words, for reports.

    Example:

    >>> describe_schedule(RiadConfig(lr_schedule="step", epochs=300))
    '/10 after epoch 250'
    """
    if config.lr_schedule == "step":
        return f"/10 after epoch {config.decay_epoch}"
    if config.lr_schedule == "cosine":
        return f"peak; {config.warmup_epochs:g} warm-up epoch(s), cosine to 0"
    return "constant"


def run_identity(run_dir, now: datetime.datetime | None = None) -> dict[str, str]:
    """The report header of a run: `{label: text}`, in display order.

    Args:
        run_dir: a trained run folder (`model.keras`, `config.yaml`, `history.json`, ...).
        now: the report's time (default: now, UTC).

    Returns:
        Labels "Run", "Model", "riad-tf", "Report written", "Training",
        "Configuration", "Data" and "Thresholds"; a label whose file the run
        lacks says so instead of being left out.
    """
    from riad_tf import run as runs

    run_dir = Path(run_dir)
    config = runs.load_config(run_dir)
    model = run_dir / runs.MODEL_FILE
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return {
        "Run": str(run_dir.resolve()),
        "Model": f"{model.name}, sha256 {file_sha256(model)}" if model.is_file() else f"{model.name}: missing",
        "riad-tf": __version__,
        "Report written": now.strftime("%Y-%m-%d %H:%M UTC"),
        "Training": describe_training(run_dir / runs.HISTORY_FILE),
        "Configuration": describe_config(config),
        "Data": describe_data(run_dir),
        "Thresholds": describe_thresholds(runs.load_thresholds(run_dir)),
    }


def describe_training(history_path: Path) -> str:
    """Epochs trained, their time, and the kept epoch with its validation loss, from `history.json`."""
    if not history_path.is_file():
        return f"no {history_path.name}: training not recorded"
    records = json.loads(history_path.read_text())
    seconds = sum(float(r.get("seconds") or 0.0) for r in records)
    line = f"{len(records)} epoch(s) in {seconds / 60:.1f} min"
    kept = next((r for r in records if r.get("kept")), None)
    if kept is not None:
        loss = kept.get("val_loss")
        line += f"; kept epoch {kept['epoch']}" + (f" (validation loss {loss:.4f})" if loss is not None else "")
    return line


def describe_data(run_dir: Path) -> str:
    """The data set's folder and layout, and how many images training used."""
    from riad_tf import run as runs

    spec = runs.load_data_spec(run_dir)
    if spec is None:
        return "not recorded (trained from arrays or before data.json)"
    trained_on = len(runs.training_paths(run_dir))
    return f"{spec['path']} (layout {spec['layout']}), {trained_on} training image(s)"


def describe_thresholds(thresholds: dict | None) -> str:
    """Where the thresholds came from and what they promise."""
    if not thresholds:
        return "not calibrated: no verdicts"
    line = f"{threshold_source(thresholds)}, image {thresholds['image']:.6g}"
    if "num_images" in thresholds:
        line += (
            f", from {thresholds['num_images']} held-out good image(s), false-positive rate at most "
            f"{thresholds.get('supported_fpr', thresholds.get('target_fpr')):.3g}"
        )
    return line
