"""A run directory: every file training writes and evaluation, prediction and export read.

Layout of `RUN/` (the names are this module's constants; nothing else spells them):

    config.yaml               CONFIG_FILE: the RiadConfig the model was trained with
    data.json                 DATA_FILE: the data set it was trained on (`save_data_spec`)
    model.keras               MODEL_FILE: the trained U-Net (Keras format, loads with safe_mode=True)
    thresholds.json           THRESHOLDS_FILE: thresholds from held-out good images (`edge.verdicts`)
    preprocessing.json        PREPROCESSING_FILE: the training images' native size (`edge.inspection`)
    history.json              HISTORY_FILE: one record per epoch (losses, learning rate, batch-norm guard)
    checkpoints/              CHECKPOINT_DIR: training state for resuming
        best_weights.npz      BEST_WEIGHTS_FILE: the epoch with the lowest validation loss
    logs/                     LOGS_DIR: TensorBoard event files
    eval/                     EVAL_DIR: `riad-tf evaluate`'s default output (metrics, report)

Example:

>>> import tempfile
>>> from riad_tf.config import RiadConfig
>>> from riad_tf.model import build_unet
>>> cfg = RiadConfig(image_size=(32, 32), widths=(4, 8, 8, 16, 16), ks=(2, 4), smoothing=5)
>>> run_dir = tempfile.mkdtemp()
>>> save_model(run_dir, build_unet(cfg.input_shape, cfg.unet_widths), cfg)
>>> load_detector(run_dir).config == cfg
True
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edge.files import atomic_path, atomic_write_text
from riad_tf.config import RiadConfig

CONFIG_FILE = "config.yaml"
DATA_FILE = "data.json"
MODEL_FILE = "model.keras"
THRESHOLDS_FILE = "thresholds.json"
PREPROCESSING_FILE = "preprocessing.json"
HISTORY_FILE = "history.json"
CHECKPOINT_DIR = "checkpoints"
BEST_WEIGHTS_FILE = "best_weights.npz"
LOGS_DIR = "logs"
EVAL_DIR = "eval"
REPRESENTATIVE_IMAGES = 128  # int8 calibration images, at most


def eval_dir(run_dir) -> Path:
    """Where `riad-tf evaluate` writes by default: `RUN/eval`."""
    return Path(run_dir) / EVAL_DIR


def save_model(run_dir, unet, config: RiadConfig) -> Path:
    """Writes `model.keras` and `config.yaml` atomically; returns the model path."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(run_dir, config)
    target = run_dir / MODEL_FILE
    with atomic_path(target, suffix=".keras") as tmp:
        unet.save(tmp)
    return target


def save_config(run_dir, config: RiadConfig) -> None:
    config.save(Path(run_dir) / CONFIG_FILE)


def load_config(run_dir) -> RiadConfig:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no config; is {run_dir} a riad-tf run directory?")
    return RiadConfig.load(path)


def load_unet(run_dir):
    """Loads the trained U-Net with Keras's safe mode on."""
    import keras

    path = Path(run_dir) / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no trained model; has training finished?")
    return keras.saving.load_model(path, compile=False, safe_mode=True)


def load_detector(run_dir):
    """The `Detector` of a run: its U-Net with its config's K, n, seed and smoothing."""
    from riad_tf.detector import Detector

    return Detector(load_unet(run_dir), load_config(run_dir))


def save_thresholds(run_dir, thresholds: dict) -> None:
    atomic_write_text(Path(run_dir) / THRESHOLDS_FILE, json.dumps(thresholds, indent=2) + "\n")


def load_thresholds(run_dir) -> dict | None:
    """The calibrated thresholds (`{"image": ..., "region": ..., ...}`, `edge.verdicts`), or None before calibration."""
    path = Path(run_dir) / THRESHOLDS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def save_preprocessing(run_dir, preprocessing: dict) -> None:
    """Records how inputs become model inputs (`edge.inspection.preprocessing_record`)."""
    atomic_write_text(Path(run_dir) / PREPROCESSING_FILE, json.dumps(preprocessing, indent=2) + "\n")


def load_preprocessing(run_dir) -> dict | None:
    """The recorded preprocessing (`{"native_size": [h, w], ...}`), or None for a run that has none."""
    path = Path(run_dir) / PREPROCESSING_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def save_data_spec(run_dir, spec: dict) -> None:
    """Records the data set a run trains on (`riad_tf.jobs.data_spec`), so later commands need no --data."""
    atomic_write_text(Path(run_dir) / DATA_FILE, json.dumps(spec, indent=2) + "\n")


def load_data_spec(run_dir) -> dict | None:
    """The data set recorded by `save_data_spec`, or None when the run does not record one."""
    path = Path(run_dir) / DATA_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def representative_images(run_dir, limit: int = REPRESENTATIVE_IMAGES) -> np.ndarray:
    """Up to `limit` of the run's good training images (not the held-out ones), for int8 calibration.

    Raises:
        FileNotFoundError: the run does not record its data (`data.json`).
    """
    from riad_tf.data import load_arrays, load_split, split_holdout

    spec = load_data_spec(run_dir)
    if spec is None:
        raise FileNotFoundError(
            f"{Path(run_dir) / DATA_FILE}: int8 export needs the run's training images, and the run does not record its data"
        )
    config = load_config(run_dir)
    split, _ = load_split(spec, skip_unreadable=True)
    kept, _ = split_holdout(split.train, config.val_fraction, config.seed)
    return load_arrays(kept[:limit], config)
