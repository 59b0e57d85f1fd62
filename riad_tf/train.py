"""Training glue: Algorithm 2 under a `tf.distribute` strategy, with resume.

Every step draws a fresh k from K and a fresh partition for each image
(`random_grid_masks`), reconstructs it by inpainting (Eq. 2) and minimises
L = lambda_G L_G + lambda_S L_S + L_2 (Eq. 7) with Adam. The learning rate is
divided by 10 after `config.decay_epoch` epochs (250 of 300 in the paper).

One custom loop serves every strategy (Keras 3.15's `fit` fails under
MultiWorkerMirroredStrategy), and the whole state (weights, optimizer, epoch)
is checkpointed after every epoch, so re-running the same command after a
crash or `kill -9` continues from the last finished epoch.

Example:

>>> import numpy as np, tempfile
>>> from riad_tf.config import RiadConfig
>>> cfg = RiadConfig(image_size=(32, 32), widths=(4, 8, 8, 16, 16), ks=(2, 4), smoothing=5, epochs=1, batch_size=4)
>>> images = np.random.default_rng(0).random((8, 32, 32, 3), dtype=np.float32)
>>> unet = train(cfg, images, tempfile.mkdtemp(), progress=False)
>>> unet.output_shape
(None, 32, 32, 3)
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from riad_tf.config import RiadConfig, atomic_write_text
from riad_tf.data import training_dataset
from riad_tf.inpaint import reconstruct
from riad_tf.losses import riad_loss
from riad_tf.masks import random_grid_masks
from riad_tf.model import build_unet
from riad_tf.run import save_model

HISTORY_FILE = "history.json"
CHECKPOINT_DIR = "checkpoints"
VALIDATION_SEED = 1234  # fixed partitions, so validation losses compare across epochs


def per_image_loss(unet, images, config: RiadConfig, training: bool, seed=None):
    """Algorithm 2 for a batch: random k and partition per image, inpaint, Eq. 7 per image."""
    if config.inpainting:
        height, width = config.image_size
        masks = random_grid_masks(tf.shape(images)[0], height, width, config.ks, config.n, seed=seed)
        reconstructions = reconstruct(unet, images, masks, training=training)
    else:  # the auto-encoder baseline
        reconstructions = tf.cast(unet(images, training=training), tf.float32)
    loss = riad_loss(images, reconstructions, config.lambda_g, config.lambda_s, config.msgms_scales, config.gms_c)
    return loss, reconstructions


def make_train_step(unet, optimizer, config: RiadConfig, strategy: tf.distribute.Strategy):
    """One distributed training step: `step(distributed_batch) -> mean loss over the global batch`."""

    def replica_step(images):
        with tf.GradientTape() as tape:
            loss, _ = per_image_loss(unet, images, config, training=True)
            scaled = tf.nn.compute_average_loss(loss)
        grads = tape.gradient(scaled, unet.trainable_variables)
        optimizer.apply_gradients(zip(grads, unet.trainable_variables))
        return scaled

    @tf.function
    def step(batch):
        per_replica = strategy.run(replica_step, args=(batch,))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    return step


def validation_loss(unet, images: np.ndarray, config: RiadConfig, batch_size: int) -> float:
    """Mean Eq. 7 loss on held-out images with fixed partitions."""
    losses = []
    for start in range(0, len(images), batch_size):
        batch = tf.convert_to_tensor(images[start : start + batch_size])
        loss, _ = per_image_loss(unet, batch, config, training=False, seed=VALIDATION_SEED + start)
        losses.append(loss.numpy())
    return float(np.concatenate(losses).mean())


def learning_rate(config: RiadConfig, epoch: int) -> float:
    """Adam's rate for a 0-based epoch: divided by 10 from `decay_epoch` on (Sec. 4.3)."""
    return config.learning_rate / 10.0 if epoch >= config.decay_epoch else config.learning_rate


class _History:
    """Per-epoch records in `history.json`, rewritten atomically after every epoch."""

    def __init__(self, path: Path, epochs_done: int):
        self.path = path
        records = json.loads(path.read_text()) if path.is_file() else []
        # Records past the checkpoint belong to an epoch that is about to be redone.
        self.records = [r for r in records if r["epoch"] <= epochs_done]

    def append(self, record: dict) -> None:
        self.records.append(record)
        atomic_write_text(self.path, json.dumps(self.records, indent=1) + "\n")


def _log_epoch(writer, record: dict, unet, preview: np.ndarray | None, config: RiadConfig):
    with writer.as_default(step=record["epoch"]):
        for key in ("loss", "val_loss", "lr"):
            if record.get(key) is not None:
                tf.summary.scalar(key, record[key])
        if preview is not None:
            _, recs = per_image_loss(unet, tf.convert_to_tensor(preview), config, training=False, seed=VALIDATION_SEED)
            tf.summary.image("input_vs_reconstruction", tf.concat([preview, recs], axis=2), max_outputs=len(preview))
    writer.flush()


def train(
    config: RiadConfig,
    train_images: np.ndarray,
    out_dir,
    holdout_images: np.ndarray | None = None,
    strategy: tf.distribute.Strategy | None = None,
    progress: bool = True,
):
    """Trains the inpainting U-Net and writes the run directory (see `riad_tf.run`).

    Args:
        config: the run's `RiadConfig` (saved as `config.yaml`).
        train_images: `(N, H, W, C)` float32 anomaly-free images in [0, 1].
        out_dir: the run directory; an existing checkpoint there is resumed.
        holdout_images: optional held-out good images for the validation loss.
        strategy: a `tf.distribute` strategy; default: the default (one device).
        progress: show a progress bar per epoch.

    Returns:
        The trained U-Net (also saved as `out_dir/model.keras`).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    strategy = strategy or tf.distribute.get_strategy()
    global_batch = config.batch_size * strategy.num_replicas_in_sync
    if len(train_images) == 0:
        raise ValueError("no training images")

    with strategy.scope():
        unet = build_unet(config.input_shape, config.widths, config.skip_connections)
        optimizer = keras.optimizers.Adam(learning_rate=config.learning_rate)
        optimizer.build(unet.trainable_variables)
        epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    checkpoint = tf.train.Checkpoint(unet=unet, optimizer=optimizer, epoch=epoch_var)
    manager = tf.train.CheckpointManager(checkpoint, out_dir / CHECKPOINT_DIR, max_to_keep=2)
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        print(f"resuming {out_dir} after epoch {int(epoch_var.numpy())} of {config.epochs}")
    config.save(out_dir / "config.yaml")

    step = make_train_step(unet, optimizer, config, strategy)
    history = _History(out_dir / HISTORY_FILE, int(epoch_var.numpy()))
    writer = tf.summary.create_file_writer(str(out_dir / "logs"))
    preview = (holdout_images if holdout_images is not None and len(holdout_images) else train_images)[:3]
    steps_per_epoch = -(-len(train_images) // global_batch)
    dataset = strategy.experimental_distribute_dataset(training_dataset(train_images, global_batch, seed=config.seed))

    for epoch in range(int(epoch_var.numpy()), config.epochs):
        rate = learning_rate(config, epoch)
        optimizer.learning_rate.assign(rate)
        bar = keras.utils.Progbar(steps_per_epoch, verbose=1 if progress else 0, stateful_metrics=["loss"])
        if progress:
            print(f"epoch {epoch + 1}/{config.epochs} (lr {rate:g})")
        started, losses = time.time(), []
        for i, batch in enumerate(dataset):
            losses.append(float(step(batch)))
            bar.update(i + 1, [("loss", float(np.mean(losses)))])
        record = {
            "epoch": epoch + 1,
            "loss": float(np.mean(losses)),
            "val_loss": validation_loss(unet, holdout_images, config, global_batch)
            if holdout_images is not None and len(holdout_images)
            else None,
            "lr": rate,
            "seconds": round(time.time() - started, 3),
        }
        history.append(record)  # before the checkpoint, so a resumed run never misses a record
        epoch_var.assign(epoch + 1)
        manager.save(checkpoint_number=epoch + 1)
        _log_epoch(writer, record, unet, preview, config)

    save_model(out_dir, unet, config)
    return unet
