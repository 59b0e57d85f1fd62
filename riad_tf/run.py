"""A run directory: what training writes and what evaluation, prediction and export read.

Layout of `RUN/`:

    config.yaml        the RiadConfig the model was trained with
    model.keras        the trained inpainting U-Net (Keras format, loads with safe_mode=True)
    thresholds.json    image and pixel thresholds calibrated on held-out good images
    history.json       per-epoch losses and learning rate
    checkpoints/       training state for resuming
    logs/              TensorBoard event files

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

from edge.files import atomic_path
from riad_tf.config import RiadConfig, atomic_write_text

CONFIG_FILE = "config.yaml"
MODEL_FILE = "model.keras"
THRESHOLDS_FILE = "thresholds.json"


def save_model(run_dir, unet, config: RiadConfig) -> Path:
    """Writes `model.keras` and `config.yaml` atomically; returns the model path."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config.save(run_dir / CONFIG_FILE)
    target = run_dir / MODEL_FILE
    with atomic_path(target, suffix=".keras") as tmp:
        unet.save(tmp)
    return target


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
    """The calibrated thresholds (`{"image": ..., "pixel": ..., ...}`), or None before calibration."""
    path = Path(run_dir) / THRESHOLDS_FILE
    return json.loads(path.read_text()) if path.is_file() else None
