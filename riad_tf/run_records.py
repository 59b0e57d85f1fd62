"""The records a training run keeps: history, the best weights, checkpoints and TensorBoard logs.

Only the chief writes the run directory (`riad_tf.run` names its files).
`open_records` gives the chief a `ChiefRecords` and every other worker a
`WorkerRecords` with the same methods, so the loop in `riad_tf.train` reads
the same on every worker:

- `restore()`: the number of finished epochs in the last checkpoint (0 for a new run);
- `start(epochs_done)`: the chief writes the config and opens its records;
- `end_epoch(epoch, figures, unet)`: after every epoch, the chief runs the
  batch-norm guard, appends the epoch to `history.json` and keeps the best
  weights; every worker takes part in the checkpoint;
- `ship(trained, ...)`: the chief saves the kept epoch's model, checked by the
  guard (`riad_tf.batchnorm_guard.ship_checked`); the others save into scratch.

`history.json` is written before the checkpoint, so a resumed run never misses
a record; records past the restored checkpoint are dropped and redone.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import tensorflow as tf

from edge.files import atomic_path, atomic_write_text
from riad_tf.batchnorm_guard import VALIDATION_SEED, batchnorm_check, divergence_note, ship_checked
from riad_tf.config import RiadConfig
from riad_tf.distribute import is_chief, precision_policy
from riad_tf.model import build_unet
from riad_tf.run import BEST_WEIGHTS_FILE, CHECKPOINT_DIR, HISTORY_FILE, LOGS_DIR, save_config, save_model
from riad_tf.training_step import per_image_loss

log = logging.getLogger(__name__)


def float32_copy(unet, config: RiadConfig, weights: list[np.ndarray] | None = None):
    """A plain float32 U-Net outside any strategy with `unet`'s weights (or `weights`): what is saved and returned."""
    with precision_policy("float32"):
        copy = build_unet(config.input_shape, config.unet_widths, config.skip_connections)
    copy.set_weights([np.asarray(w, np.float32) for w in (unet.get_weights() if weights is None else weights)])
    return copy


class History:
    """Per-epoch records in `history.json`, rewritten atomically after every epoch."""

    def __init__(self, path: Path, epochs_done: int):
        self.path = path
        records = json.loads(path.read_text()) if path.is_file() else []
        # Records past the checkpoint belong to an epoch that is about to be redone.
        self.records = [r for r in records if r["epoch"] <= epochs_done]

    def append(self, record: dict) -> None:
        self.records.append(record)
        self._write()

    def mark_kept(self, epoch: int, **details) -> None:
        """Flags the record of the epoch whose weights were saved (`"kept": true`), with `details`."""
        for record in self.records:
            record.pop("kept", None)
            if record["epoch"] == epoch:
                record.update(kept=True, **details)
        self._write()

    def _write(self) -> None:
        atomic_write_text(self.path, json.dumps(self.records, indent=1) + "\n")


class BestWeights:
    """The weights of the epoch with the lowest inference-mode validation loss, in `checkpoints/best_weights.npz`.

    The file names its epoch; after a resume, a file from an epoch past the
    restored checkpoint (about to be redone) is ignored.
    """

    def __init__(self, path: Path, records: list[dict]):
        self.path = path
        scored = [r for r in records if r.get("val_loss") is not None]
        best = min(scored, key=lambda r: r["val_loss"], default=None)
        self.epoch, self.loss = (best["epoch"], best["val_loss"]) if best else (None, math.inf)
        if self.epoch is not None and not self._file_holds(self.epoch):
            self.epoch, self.loss = None, math.inf  # no weights on disk for it: start over

    def _file_holds(self, epoch: int) -> bool:
        if not self.path.is_file():
            return False
        with np.load(self.path) as stored:
            return int(stored["epoch"]) == epoch

    def update(self, epoch: int, val_loss: float, unet) -> None:
        if val_loss < self.loss:
            self.epoch, self.loss = epoch, val_loss
            weights = {f"w{i}": np.asarray(w, np.float32) for i, w in enumerate(unet.get_weights())}
            with atomic_path(self.path, suffix=".npz") as tmp:
                np.savez(tmp, epoch=epoch, **weights)

    def load(self) -> list[np.ndarray]:
        with np.load(self.path) as stored:
            return [stored[f"w{i}"] for i in range(len(stored.files) - 1)]


class EpochCheckpoints:
    """The training state after each epoch: the chief writes `out_dir/checkpoints`.

    Every worker restores from there (a filesystem the workers share) and
    every worker saves, as MultiWorkerMirroredStrategy requires; a non-chief
    saves into a scratch directory that is emptied after each save.
    """

    def __init__(self, checkpoint: tf.train.Checkpoint, directory: Path, chief: bool, scratch: Path):
        self.checkpoint, self.directory, self.chief, self.scratch = checkpoint, directory, chief, scratch
        self.manager = tf.train.CheckpointManager(
            checkpoint, directory if chief else scratch / CHECKPOINT_DIR, max_to_keep=2
        )

    def restore(self) -> bool:
        latest = tf.train.latest_checkpoint(str(self.directory))
        if latest:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
        return latest is not None

    def save(self, epoch: int) -> None:
        self.manager.save(checkpoint_number=epoch)
        if not self.chief:
            tf.io.gfile.rmtree(str(self.scratch / CHECKPOINT_DIR))


class WorkerRecords:
    """What a worker other than the chief keeps: its share of every checkpoint, nothing else."""

    writes_run_dir = False

    def __init__(self, checkpoint: tf.train.Checkpoint, out_dir: Path, config: RiadConfig, scratch: Path):
        self.out_dir, self.config, self.scratch = out_dir, config, scratch
        self.checkpoints = EpochCheckpoints(checkpoint, out_dir / CHECKPOINT_DIR, self.writes_run_dir, scratch)

    def restore(self) -> int:
        """Restores the last checkpoint; returns the number of finished epochs it holds."""
        restored = self.checkpoints.restore()
        epochs_done = int(self.checkpoints.checkpoint.epoch.numpy())
        if restored:
            log.info(f"resuming {self.out_dir} after epoch {epochs_done} of {self.config.epochs}")
        return epochs_done

    def start(self, epochs_done: int) -> None:
        """Begins the records after `epochs_done` finished epochs (once every worker agrees on it)."""

    def end_epoch(self, epoch: int, figures: dict, unet) -> None:
        """Saves the checkpoint of finished epoch `epoch` (1-based)."""
        self.checkpoints.save(epoch)

    def ship(self, unet, train_images: np.ndarray):
        """Saves a float32 copy of `unet` into scratch (every worker saves: the documented pattern); returns it."""
        trained = float32_copy(unet, self.config)
        save_model(self.scratch / "model", trained, self.config)
        return trained


class ChiefRecords(WorkerRecords):
    """The chief's records: the run directory, with the batch-norm guard after every epoch.

    Args:
        guard_images: the images of the batch-norm guard (`batchnorm_check`
            after every epoch, `ship_checked` once more before saving).
        batch_size: the guard's batch size (the global batch).
        has_holdout: the guard images are held-out images, so their loss
            chooses the kept epoch (else the last epoch is kept).
        on_epoch_end: optional `f(epoch, unet)`, called after each epoch.
    """

    writes_run_dir = True

    def __init__(self, checkpoint, out_dir, config, scratch, *, guard_images, batch_size, has_holdout, on_epoch_end):
        super().__init__(checkpoint, out_dir, config, scratch)
        self.guard_images, self.batch_size, self.has_holdout = guard_images, batch_size, has_holdout
        self.on_epoch_end = on_epoch_end

    def start(self, epochs_done: int) -> None:
        """Writes the config and opens the history (records past `epochs_done` are redone), best weights and logs."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        save_config(self.out_dir, self.config)
        self.history = History(self.out_dir / HISTORY_FILE, epochs_done)
        self.best = BestWeights(self.out_dir / CHECKPOINT_DIR / BEST_WEIGHTS_FILE, self.history.records)
        self.writer = tf.summary.create_file_writer(str(self.out_dir / LOGS_DIR))

    def end_epoch(self, epoch: int, figures: dict, unet) -> None:
        """Runs the guard, records the epoch, keeps the best weights, checkpoints and logs.

        Args:
            epoch: the finished epoch, 1-based.
            figures: `{"loss", "lr", "seconds", "images_per_s"}` of the epoch.
            unet: the training U-Net.
        """
        check = batchnorm_check(unet, self.guard_images, self.config, self.batch_size)
        record = {
            "epoch": epoch,
            "loss": figures["loss"],
            "val_loss": check["val_loss"] if self.has_holdout else None,
            "guard_loss": check["val_loss"],
            "val_loss_train_mode": check["val_loss_train_mode"],
            "bn_diverged": check["bn_diverged"],
            **{k: figures[k] for k in ("lr", "seconds", "images_per_s")},
        }
        self.history.append(record)  # before the checkpoint, so a resumed run never misses a record
        if self.has_holdout:
            self.best.update(epoch, check["val_loss"], unet)
        super().end_epoch(epoch, figures, unet)
        log.info(_epoch_line(record, self.config.epochs))
        if record["bn_diverged"]:
            log.info(divergence_note(record))
        _log_epoch(self.writer, record, unet, self.guard_images[:3], self.config)
        if self.on_epoch_end is not None:
            self.on_epoch_end(epoch, unet)

    def ship(self, unet, train_images: np.ndarray):
        """Saves the kept epoch's model, float32, after the guard's last check; returns it.

        Args:
            unet: the training U-Net after the last epoch.
            train_images: re-estimate batch norm on these (`settle_batchnorm`).
        """
        epochs = self.config.epochs
        kept = self.best.epoch if self.best.epoch is not None else epochs
        trained = float32_copy(unet, self.config, self.best.load() if kept != epochs else None)
        details = ship_checked(trained, self.config, self.guard_images, train_images, self.batch_size, self.out_dir)
        self.history.mark_kept(kept, **details)
        how = " (lowest inference-mode validation loss)" if self.has_holdout else " (the last)"
        log.info(f"kept epoch {kept} of {epochs}{how}")
        save_model(self.out_dir, trained, self.config)
        return trained


def open_records(strategy, checkpoint, out_dir: Path, config: RiadConfig, scratch: Path, **chief_only):
    """The chief's records (the run directory and the batch-norm guard), or another worker's (its checkpoint share).

    Args:
        strategy: the training strategy.
        checkpoint: a `tf.train.Checkpoint` of the training state, with an `epoch` counter.
        out_dir: the run directory.
        config: the run's config.
        scratch: where a worker other than the chief writes (`riad_tf.distribute.scratch_dir`).
        **chief_only: `guard_images`, `batch_size`, `has_holdout` and
            `on_epoch_end` of `ChiefRecords`.
    """
    if not is_chief(strategy):
        return WorkerRecords(checkpoint, out_dir, config, scratch)
    return ChiefRecords(checkpoint, out_dir, config, scratch, **chief_only)


def _log_epoch(writer, record: dict, unet, preview: np.ndarray | None, config: RiadConfig):
    """The epoch's scalars and a few reconstructions, for TensorBoard."""
    with writer.as_default(step=record["epoch"]):
        for key in ("loss", "val_loss", "val_loss_train_mode", "lr", "images_per_s"):
            if record.get(key) is not None:
                tf.summary.scalar(key, record[key])
        if preview is not None:
            _, recs = per_image_loss(unet, tf.convert_to_tensor(preview), config, training=False, seed=VALIDATION_SEED)
            tf.summary.image("input_vs_reconstruction", tf.concat([preview, recs], axis=2), max_outputs=len(preview))
    writer.flush()


def _epoch_line(record: dict, epochs: int) -> str:
    """The log line of a finished epoch."""
    name = "val_loss" if record.get("val_loss") is not None else "loss on training images"
    return (
        f"epoch {record['epoch']}/{epochs}: loss {record['loss']:.4f}, {name} {record['guard_loss']:.4f} "
        f"(batch norm in training mode: {record['val_loss_train_mode']:.4f}), lr {record['lr']:.3g}, "
        f"{record['seconds']:.0f} s, {record['images_per_s']:g} img/s"
    )
