"""A run directory: every file training writes and evaluation, prediction and export read.

Layout of `RUN/` (the names are this module's constants; nothing else spells them):

    config.yaml               CONFIG_FILE: the RiadConfig the model was trained with
    data.json                 DATA_FILE: the data set it was trained on (`save_data_spec`)
    model.keras               MODEL_FILE: the trained U-Net (Keras format, loads with safe_mode=True)
    thresholds.json           THRESHOLDS_FILE: thresholds from held-out good images (`edge.verdicts`)
    preprocessing.json        PREPROCESSING_FILE: the training images' native size (`edge.inspection`)
    exports.json              EXPORTS_FILE: the models exported from the run (`record_exports`)
    history.json              HISTORY_FILE: one record per epoch (losses, learning rate, batch-norm guard)
    checkpoints/              CHECKPOINT_DIR: training state for resuming
        best_weights.npz      BEST_WEIGHTS_FILE: the epoch with the lowest validation loss
    logs/                     LOGS_DIR: TensorBoard event files
    eval/                     EVAL_DIR: `riad-tf evaluate`'s default output (`save_metrics`):
        metrics.json          METRICS_FILE: the metrics (`riad_tf.metrics.summarize`)
        metrics.md            METRICS_TABLE_FILE: the same as a markdown table
        report/index.html     REPORT_DIR: the HTML report (`riad_tf.report`)
    .lock                     LOCK_FILE: held while a command writes the run (`run_lock`)

What a user can rely on: outputs are written to a temporary name and renamed,
so a file is either the old one or the new one; `train` and `calibrate` hold
the run's lock, so a second writer is refused (a lock left by a killed process
is released by the system and taken over); a re-run with another data set or
another configuration is refused before anything is written (`check_rerun`);
and free space and writability are checked before training starts
(`edge.files.check_writable`). Temporaries of an interrupted save are removed on the next
start (`remove_temporaries`).

Example:

>>> import tempfile
>>> from riad_tf.config import RiadConfig
>>> from riad_tf.model import build_unet
>>> cfg = RiadConfig(image_size=(32, 32), widths=(4, 8, 8, 16, 16), ks=(2, 4), smoothing=5)
>>> run_dir = tempfile.mkdtemp()
>>> save_model(run_dir, build_unet(cfg.input_shape, cfg.unet_widths), cfg).name
'model.keras'
>>> load_detector(run_dir).config == cfg
True
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import yaml

from edge.errors import ConfigError, InputError, OutputError, RunLocked, one_line
from edge.files import atomic_path, atomic_write_text, check_writable, open_own_file
from edge.metadata import read_metadata
from edge.recalibration import RUN_CONFIG_FILE, RUN_THRESHOLDS_FILE
from riad_tf.config import RiadConfig

CONFIG_FILE = RUN_CONFIG_FILE  # the device reads these two (`riad-edge set-thresholds`)
DATA_FILE = "data.json"
MODEL_FILE = "model.keras"
THRESHOLDS_FILE = RUN_THRESHOLDS_FILE
PREPROCESSING_FILE = "preprocessing.json"
EXPORTS_FILE = "exports.json"
HISTORY_FILE = "history.json"
CHECKPOINT_DIR = "checkpoints"
BEST_WEIGHTS_FILE = "best_weights.npz"
LOGS_DIR = "logs"
EVAL_DIR = "eval"
METRICS_FILE = "metrics.json"
METRICS_TABLE_FILE = "metrics.md"
REPORT_DIR = "report"
LOCK_FILE = ".lock"
# Keys that may change when a run is resumed: a longer schedule, another place to train.
RESUMABLE_KEYS = frozenset({"epochs", "lr_decay_epoch", "strategy", "xla"})
REPRESENTATIVE_IMAGES = 128  # int8 calibration images, at most


def eval_dir(run_dir) -> Path:
    """Where `riad-tf evaluate` writes by default: `RUN/eval`."""
    return Path(run_dir) / EVAL_DIR


def save_metrics(out_dir, summary: dict, table: str) -> None:
    """Writes an evaluation's `metrics.json` and its markdown table `metrics.md` into `out_dir` (created)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / METRICS_FILE, json.dumps(summary, indent=2) + "\n")
    atomic_write_text(out_dir / METRICS_TABLE_FILE, table)


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


# Keys newer than some saved runs, with the value those runs were trained with.
_BEFORE_THE_KEY = {"kernel_init": "glorot", "bn_statistics": "moving", "calibration_fraction": 0.0}


def load_config(run_dir) -> RiadConfig:
    """The run's `RiadConfig`; a run saved before a key existed gets the value it was trained with."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no config; is {run_dir} a riad-tf run directory?")
    config = RiadConfig.load(path)
    saved = yaml.safe_load(path.read_text()) or {}
    return config.with_overrides({k: v for k, v in _BEFORE_THE_KEY.items() if k not in saved})


def load_unet(run_dir):
    """Loads the trained U-Net with Keras's safe mode on."""
    import keras

    path = Path(run_dir) / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no trained model; has training finished?")
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as err:  # Keras reports a damaged archive in many ways (zipfile, h5py, JSON, "not found")
        raise InputError(f"{path}: cannot load the model, the file is damaged: {one_line(err)}") from None


def load_detector(run_dir):
    """The `Detector` of a run: its U-Net with its config's K, n, seed and smoothing."""
    from riad_tf.detector import Detector

    return Detector(load_unet(run_dir), load_config(run_dir))


def save_thresholds(run_dir, thresholds: dict) -> None:
    atomic_write_text(Path(run_dir) / THRESHOLDS_FILE, json.dumps(thresholds, indent=2) + "\n")


def load_thresholds(run_dir) -> dict | None:
    """The calibrated thresholds (`{"image": ..., "region": ..., ...}`, `edge.verdicts`), or None before calibration.

    Thresholds calibrated before inference partitions gave every cell context
    (`riad_tf.masks.PARTITIONS`) came from other maps than the run now makes:
    a warning says to calibrate again.
    """
    from edge.verdicts import thresholds_problem
    from riad_tf.masks import PARTITIONS

    path = Path(run_dir) / THRESHOLDS_FILE
    if not path.is_file():
        return None
    thresholds = _read_record(path, thresholds_problem)
    if thresholds.get("partitions") != PARTITIONS:
        logging.getLogger(__name__).warning(
            f'warning: {path} was calibrated with the inference partitions of before (docs/method.md, "Masks"); '
            f"its false-positive bound does not hold for today's maps: run `riad-tf calibrate {run_dir} --good DIR`"
        )
    return thresholds


def previous_thresholds(run_dir) -> dict | None:
    """The thresholds a recalibration replaces: None when the run has none or they cannot be read."""
    from edge.verdicts import thresholds_problem

    path = Path(run_dir) / THRESHOLDS_FILE
    try:
        return _read_record(path, thresholds_problem) if path.is_file() else None
    except InputError:
        return None


def record_exports(run_dir, models) -> None:
    """Adds exported models to `RUN/exports.json`: absolute path, format, precision and time (atomically).

    An entry of the same path is replaced. A run that cannot be written (a
    read-only folder) gets a warning: the export itself stands.

    Args:
        run_dir: the run the models were exported from.
        models: the model files written (their metadata beside them).
    """
    path = Path(run_dir) / EXPORTS_FILE
    now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    new = [_export_entry(Path(model), now) for model in models]
    if not new:
        return
    replaced = {entry["model"] for entry in new}
    entries = [e for e in load_exports(run_dir) if e["model"] not in replaced] + new
    try:
        atomic_write_text(path, json.dumps(entries, indent=2) + "\n")
    except OutputError as err:
        logging.getLogger(__name__).warning(f"warning: {one_line(err)}; `riad-tf calibrate` will not list this export")


def _export_entry(model: Path, time_written: str) -> dict:
    metadata = read_metadata(model, verify=False)
    return {
        "model": str(model.resolve()),
        "format": metadata.format,
        "precision": metadata.precision,
        "time": time_written,
    }


def load_exports(run_dir) -> list[dict]:
    """The models recorded by `record_exports` (empty when none are, or with a warning when the record is damaged)."""
    path = Path(run_dir) / EXPORTS_FILE
    try:
        return _read_record(path, _exports_problem) if path.is_file() else []
    except InputError as err:
        logging.getLogger(__name__).warning(f"warning: {one_line(err)}")
        return []


def _exports_problem(entries) -> str | None:
    """What is wrong with an `exports.json`, or None."""
    if not isinstance(entries, list) or not all(
        isinstance(e, dict) and isinstance(e.get("model"), str) for e in entries
    ):
        return 'must be a JSON list of {"model": path, ...} objects'
    return None


def save_preprocessing(run_dir, preprocessing: dict) -> None:
    """Records how inputs become model inputs (`edge.inspection.preprocessing_record`)."""
    atomic_write_text(Path(run_dir) / PREPROCESSING_FILE, json.dumps(preprocessing, indent=2) + "\n")


def load_preprocessing(run_dir) -> dict | None:
    """The recorded preprocessing (`{"native_size": [h, w], ...}`), or None for a run that has none."""
    from edge.inspection import preprocessing_problem

    path = Path(run_dir) / PREPROCESSING_FILE
    return _read_record(path, preprocessing_problem) if path.is_file() else None


def save_data_spec(run_dir, spec: dict) -> None:
    """Records the data set a run trains on (`riad_tf.jobs.data_spec`), so later commands need no --data."""
    atomic_write_text(Path(run_dir) / DATA_FILE, json.dumps(spec, indent=2) + "\n")


def load_data_spec(run_dir) -> dict | None:
    """The data set recorded by `save_data_spec`, or None when the run does not record one."""
    path = Path(run_dir) / DATA_FILE
    return _read_record(path, _data_spec_problem) if path.is_file() else None


def _data_spec_problem(spec) -> str | None:
    """What is wrong with a `data.json` (`riad_tf.data.data_spec`), or None."""
    if not isinstance(spec, dict):
        return f"must be a JSON object, got {type(spec).__name__}"
    for key in ("path", "masks"):
        if not isinstance(spec.get(key), (str, type(None))):
            return f"{key} must be a folder or null, got {spec.get(key)!r}"
    if not isinstance(spec.get("layout"), str):
        return f"layout must be text, got {spec.get('layout')!r}"
    for key in ("normal", "abnormal", "test_normal"):
        if not (isinstance(spec.get(key), list) and all(isinstance(v, str) for v in spec[key])):
            return f"{key} must be a list of folders, got {spec.get(key)!r}"
    return None


def _read_record(path: Path, problem_of) -> dict:
    """A run's JSON record at `path`, checked by `problem_of` (a one-line `InputError` naming the file otherwise)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: cannot read it: {one_line(err)}; re-run the command that writes it") from None
    problem = problem_of(record)
    if problem:
        raise InputError(f"{path}: {problem}; re-run the command that writes it")
    return record


def training_paths(run_dir) -> set[Path]:
    """The resolved paths of the images the run trained on (empty when it does not record its data)."""
    from riad_tf.data import load_dataset, split_good
    from riad_tf.video.layouts import VIDEO_LAYOUTS

    spec = load_data_spec(run_dir)
    if spec is None or spec["layout"] in VIDEO_LAYOUTS:
        return set()
    config = load_config(run_dir)
    try:
        keys = ("normal", "abnormal", "masks", "test_normal")
        split = load_dataset(spec["path"], layout=spec["layout"], **{k: spec[k] for k in keys})
    except (OSError, ValueError):  # the data set moved: nothing to compare with
        return set()
    kept, _, _ = split_good(split.train, config.val_fraction, config.calibration_fraction, config.seed)
    return {Path(s.path).resolve() for s in kept}


def representative_images(run_dir, limit: int = REPRESENTATIVE_IMAGES) -> np.ndarray:
    """Up to `limit` of the run's good training images (not the held-out ones), for int8 calibration.

    A run trained at a scale gets model-size crops of them at that scale.

    Raises:
        FileNotFoundError: the run does not record its data (`data.json`).
    """
    from riad_tf.data import split_good
    from riad_tf.image_files import load_arrays, load_split

    spec = load_data_spec(run_dir)
    if spec is None:
        raise FileNotFoundError(
            f"{Path(run_dir) / DATA_FILE}: int8 export needs the run's training images, and the run does not record its data"
        )
    config = load_config(run_dir)
    split, _ = load_split(spec, skip_unreadable=True)
    kept, _, _ = split_good(split.train, config.val_fraction, config.calibration_fraction, config.seed)
    if config.scale is not None:  # what the model sees: crops of the images at its scale
        from riad_tf.crops import RandomCrops, read_all_scaled

        return RandomCrops(read_all_scaled(kept[:limit], config.scale, config.channels), config.image_size).sample(
            limit
        )
    return load_arrays(kept[:limit], config)


def check_images(run_dir, limit: int | None = None):
    """Real images for the export's accuracy check: up to `limit` held-out good and `limit` defective ones.

    `limit` None takes `riad_tf.accuracy_check.CHECK_IMAGES`.

    The good images are the run's validation and calibration images (training
    never saw them; the test's good images when it held none out), the
    defective ones are spread over the test's defect types, with their masks.
    A run trained at a scale gets model-size crops of its good images only.

    Returns:
        A `riad_tf.accuracy_check.CheckImages`, or None when the run does not
        record its data (`data.json`).
    """
    from riad_tf.accuracy_check import CHECK_IMAGES, CheckImages
    from riad_tf.data import split_good
    from riad_tf.image_files import load_arrays, load_split

    limit = CHECK_IMAGES if limit is None else limit
    spec = load_data_spec(run_dir)
    if spec is None:
        return None
    config = load_config(run_dir)
    split, _ = load_split(spec, skip_unreadable=True)
    _, validation, calibration = split_good(split.train, config.val_fraction, config.calibration_fraction, config.seed)
    good = (calibration + validation)[:limit] or [s for s in split.test if not s.label][:limit]
    if not good:
        return None
    if config.scale is not None:
        from riad_tf.crops import RandomCrops, read_all_scaled

        crops = RandomCrops(read_all_scaled(good, config.scale, config.channels), config.image_size, config.seed)
        return CheckImages(crops.sample(limit))
    defective = [s for s in split.test if s.label]
    defective = defective[:: max(1, len(defective) // limit)][:limit]
    if not defective:
        return CheckImages(load_arrays(good, config))
    images, masks = load_arrays(defective, config, with_masks=True)
    has_masks = any(s.mask_path is not None for s in defective)
    return CheckImages(load_arrays(good, config), images, masks if has_masks else None)


# ----------------------------------------------------------------------------
# Safe writing: lock, re-run check, space, temporaries


@contextlib.contextmanager
def run_lock(run_dir, command: str = "riad-tf") -> Iterator[None]:
    """Holds `RUN/.lock` (an OS file lock) while a command writes the run.

    A second writer gets `RunLocked` naming the holder. The system releases
    the lock when its process ends, even by `kill -9`, so a stale lock is
    simply taken over.
    """
    import fcntl

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = open_own_file(run_dir / LOCK_FILE)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().decode(errors="replace").strip() or "another process"
        handle.close()
        raise RunLocked(f"{run_dir} is being written by {holder}; wait for it to finish or stop it") from None
    try:
        handle.seek(0)
        handle.truncate()
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        handle.write(f"{command} (pid {os.getpid()} on {socket.gethostname()}, since {started})\n".encode())
        yield
    finally:
        handle.truncate(0)
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def check_rerun(run_dir, config: RiadConfig, spec: dict | None) -> None:
    """Refuses, before anything is written, to train into a run of another configuration or data set.

    Only `RESUMABLE_KEYS` may differ from the stored config (resuming with more
    epochs, say), never to fewer epochs than the run has trained; the data set
    must be the recorded one.
    """
    run_dir = Path(run_dir)
    trained = _epochs_trained(run_dir)
    if config.epochs < trained:
        raise ConfigError(
            f"{run_dir} has trained {trained} epochs; {config.epochs} would shorten it: "
            f"give --epochs {trained} or more to resume it, or use another --out"
        )
    if (run_dir / CONFIG_FILE).is_file():
        old, new = load_config(run_dir).to_dict(), config.to_dict()
        changed = sorted(k for k in new if k not in RESUMABLE_KEYS and old.get(k) != new[k])
        if changed:
            detail = ", ".join(f"{k}: {old.get(k)} -> {new[k]}" for k in changed[:4])
            raise ConfigError(f"{run_dir} holds a run of another configuration ({detail}); use another --out")
    stored = load_data_spec(run_dir)
    if stored is not None and spec is not None and _without_options(stored) != _without_options(spec):
        raise InputError(f"{run_dir} was trained on another data set ({DATA_FILE}); use another --out")


def _epochs_trained(run_dir: Path) -> int:
    """How many epochs `RUN/history.json` records (0 for a new run or an unreadable history)."""
    try:
        history = json.loads((run_dir / HISTORY_FILE).read_text())
    except (OSError, ValueError):
        return 0
    return len(history) if isinstance(history, list) else 0


def _without_options(spec: dict) -> dict:
    return {k: v for k, v in spec.items() if k != "skip_unreadable"}


def estimated_run_bytes(config: RiadConfig) -> int:
    """A generous estimate of what training writes: the model, two checkpoints with Adam's state, the best weights.

    About 47.5 parameters per squared width (29 M at the default widths).
    """
    parameters = 47.5 * sum(w * w for w in config.unet_widths)
    return int(parameters * 4 * 9) + 32 * 2**20


@contextlib.contextmanager
def writing_run(run_dir, command: str, needed_bytes: int = 0, writes: bool = True) -> Iterator[None]:
    """Prepares a run directory for the process that writes it, for the length of the block.

    With `writes` (the chief of a training job, or any single process): checks
    that `needed_bytes` fit, holds the run's lock (`run_lock`) and removes the
    temporaries of an interrupted save. Without it (another worker of a
    multi-worker job, which writes nothing there): nothing.
    """
    if not writes:
        yield
        return
    check_writable(run_dir, needed_bytes, "training this model")
    with run_lock(run_dir, command):
        remove_temporaries(run_dir)
        yield


def remove_temporaries(run_dir) -> list[Path]:
    """Deletes what an interrupted save left behind (hidden `.NAME.*` temporaries, `ckpt-*_temp` folders)."""
    run_dir = Path(run_dir)
    found = [p for p in run_dir.glob(".*.*") if p.is_file()] + list((run_dir / CHECKPOINT_DIR).glob("*_temp*"))
    for path in found:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    if found:
        logging.getLogger(__name__).info(f"removed {len(found)} temporary file(s) of an interrupted run in {run_dir}")
    return found
