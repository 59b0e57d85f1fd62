"""Training: Algorithm 2 under any `tf.distribute` strategy, with resume.

The loop (`train_unet`) reads in one screen; each concern lives in its own module:

- `riad_tf.training_step`: the step (Eq. 7 on inpainted batches), the input
  pipeline and the learning-rate schedule;
- `riad_tf.batchnorm_guard`: the batch-norm guard after every epoch and the
  statistics the saved model keeps;
- `riad_tf.run_records`: history, the best weights, checkpoints and
  TensorBoard, written by the chief only.

Scaling out (docs/distributed.md): `config.batch_size` is per replica, the
global batch is batch_size x replicas, and the learning rate applies
`config.lr_scaling` to the replica count. The whole state (weights, optimizer,
epoch) is checkpointed after every epoch; re-running the same command after a
crash or `kill -9` of any worker continues from the last finished epoch.
Mixed precision (`config.mixed_precision`) builds the training U-Net under a
mixed policy (with loss scaling for float16); losses stay float32 and the
saved model is always float32. `config.xla` compiles the per-replica step.

Example:

>>> import numpy as np, tempfile
>>> from riad_tf.config import RiadConfig
>>> cfg = RiadConfig(image_size=(32, 32), widths=(4, 8, 8, 16, 16), ks=(2, 4), smoothing=5, epochs=1, batch_size=4)
>>> images = np.random.default_rng(0).random((8, 32, 32, 3), dtype=np.float32)
>>> unet = train_unet(cfg, images, tempfile.mkdtemp(), progress=False)
>>> unet.output_shape
(None, 32, 32, 3)
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from edge.errors import InputError, TrainingError
from riad_tf.config import RiadConfig
from riad_tf.distribute import (
    assert_workers_agree,
    cpu_bf16_support,
    is_chief,
    make_strategy,
    precision_policy,
    resolve_precision,
    scratch_dir,
)
from riad_tf.model import build_unet
from riad_tf.run_records import open_records
from riad_tf.training_step import learning_rate, make_train_step, training_batches

log = logging.getLogger(__name__)


def build_training_state(config: RiadConfig, strategy: tf.distribute.Strategy):
    """The variables of a training run, created under `strategy`.

    The initial weights come from `config.seed`, so every replica count and
    every worker starts from the same U-Net.

    Args:
        config: gives the model, `mixed_precision` and `sync_batchnorm`.
        strategy: the strategy whose scope holds the variables.

    Returns:
        `(unet, optimizer, epoch)`: the U-Net under the precision policy (its
        output layer stays float32), Adam (wrapped in a `LossScaleOptimizer`
        for float16) and a counter of finished epochs.
    """
    policy = resolve_precision(config.mixed_precision, config.xla)
    on_cpu = not tf.config.list_physical_devices("GPU")
    if policy == "mixed_bfloat16" and on_cpu and not config.xla and not cpu_bf16_support():
        log.warning(
            "note: this CPU has no native bfloat16 (AMX or AVX512-BF16): mixed_bfloat16 without --xla ran "
            "3-10x slower than float32 on such CPUs, with --xla about 1.9x faster (docs/distributed.md)"
        )
    keras.utils.set_random_seed(config.seed)  # the same initial weights for every replica count and worker
    with strategy.scope():
        with precision_policy(policy):
            unet = build_unet(
                config.input_shape, config.unet_widths, config.skip_connections, kernel_init=config.kernel_init
            )
        if config.sync_batchnorm:
            for layer in unet.layers:  # read at call time: statistics over the global batch
                if isinstance(layer, keras.layers.BatchNormalization):
                    layer.synchronized = True
        optimizer = keras.optimizers.Adam(learning_rate=config.learning_rate)
        if policy == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(unet.trainable_variables)
        epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    return unet, optimizer, epoch


def _batching(config: RiadConfig, replicas: int, num_images: int) -> tuple[int, bool, int]:
    """(global batch, drop the remainder, steps per epoch); raises on settings that cannot train."""
    if num_images == 0:
        raise InputError("no training images")
    if config.xla and config.sync_batchnorm and replicas > 1:
        raise InputError(
            "xla cannot compile synchronised batch norm across replicas: set xla or sync_batchnorm to false"
        )
    global_batch = config.batch_size * replicas
    # Equal shares for every replica: with more than one, each epoch drops its last partial batch.
    drop_remainder = replicas > 1
    if drop_remainder and num_images < global_batch:
        raise InputError(
            f"{num_images} training images are fewer than one global batch ({config.batch_size} x {replicas} replicas)"
        )
    steps = num_images // global_batch if drop_remainder else -(-num_images // global_batch)
    return global_batch, drop_remainder, steps


def _train_epoch(step, batches, steps: int, bar, set_rate) -> dict:
    """Runs one epoch's steps, `set_rate(i)` before step i.

    Args:
        step: `make_train_step`'s step.
        batches: an iterator of distributed batches.
        steps: steps per epoch.
        bar: a tqdm bar (disabled off a terminal) or None.
        set_rate: `f(i)` sets the learning rate of step i.

    Returns:
        `{"loss": mean Eq. 7 loss per image, "lr", "seconds", "images_per_s"}`.
    """
    started = time.time()
    loss_sum, count = 0.0, 0.0
    for i in range(steps):
        lr = set_rate(i)
        step_sum, step_count = step(next(batches))
        loss_sum, count = loss_sum + step_sum, count + step_count  # stays on the device until read
        if bar is not None and not bar.disable:
            bar.update()
            bar.set_postfix(loss=f"{float(loss_sum / count):.4f}", refresh=False)
    if bar is not None:
        bar.close()
    seconds = time.time() - started
    return {
        "loss": float(loss_sum / count),
        "lr": lr,
        "seconds": round(seconds, 3),
        "images_per_s": round(float(count) / seconds, 2),
    }


def _check_finite(loss: float, epoch: int, config: RiadConfig) -> None:
    """Stops training on a non-finite loss, before the epoch is recorded: no NaN weights are ever saved."""
    if not np.isfinite(loss):
        raise TrainingError(
            f"epoch {epoch}: the training loss is {loss}; nothing of this epoch was saved. "
            f"Lower learning_rate ({config.learning_rate:g}) or check the images for NaN"
        )


def _guard_images(train_images, holdout_images: np.ndarray | None, global_batch: int) -> np.ndarray:
    """The held-out images, or (without any) the first few training batches, for the batch-norm guard."""
    if holdout_images is not None and len(holdout_images):
        return holdout_images
    return _first(train_images, 4 * global_batch)


def _first(train_images, count: int) -> np.ndarray:
    """The first `count` training images, or fixed crops (`riad_tf.crops.RandomCrops.sample`)."""
    return train_images.sample(count) if hasattr(train_images, "sample") else train_images[:count]


def _progress_bar(show: bool, epoch: int, config: RiadConfig, steps: int):
    """A live bar on a terminal only (logs get one line per epoch); None when not shown."""
    if not show:
        return None
    desc = f"epoch {epoch + 1}/{config.epochs}"
    return tqdm(total=steps, desc=desc, unit="step", leave=False, disable=None, file=sys.stderr)


def train_unet(
    config: RiadConfig,
    train_images: np.ndarray,
    out_dir,
    holdout_images: np.ndarray | None = None,
    strategy: tf.distribute.Strategy | None = None,
    progress: bool = True,
    on_epoch_end=None,
):
    """Trains the inpainting U-Net and writes the run directory (see `riad_tf.run`).

    The saved model is the epoch with the lowest inference-mode validation
    loss (`riad_tf.run_records`), with the batch-norm statistics the config
    asks for, checked by the batch-norm guard (`riad_tf.batchnorm_guard`).

    Args:
        config: the run's `RiadConfig` (saved as `config.yaml`).
        train_images: `(N, H, W, C)` float32 anomaly-free images in [0, 1], or
            `riad_tf.crops.RandomCrops` of them at a scale (fresh crops every epoch).
        out_dir: the run directory; an existing checkpoint there is resumed.
            In a multi-worker job, every worker passes the same directory on a
            shared filesystem; only the chief writes it.
        holdout_images: optional held-out good images for the validation loss.
        strategy: a `tf.distribute` strategy; default: `make_strategy(config.strategy)`.
        progress: show a progress bar per epoch (on the chief).
        on_epoch_end: optional `f(epoch, unet)` called on the chief after
            each epoch (1-based) with the training U-Net (e.g. to score it).

    Returns:
        The trained U-Net, float32 (on the chief also saved as `out_dir/model.keras`).
    """
    strategy = strategy or make_strategy(config.strategy)
    replicas = strategy.num_replicas_in_sync
    global_batch, drop_remainder, steps = _batching(config, replicas, len(train_images))
    has_holdout = holdout_images is not None and len(holdout_images) > 0
    guard_images = _guard_images(train_images, holdout_images, global_batch)
    unet, optimizer, epoch_var = build_training_state(config, strategy)
    checkpoint = tf.train.Checkpoint(unet=unet, optimizer=optimizer, epoch=epoch_var)
    with scratch_dir(strategy) as scratch:
        chief_only = dict(guard_images=guard_images, batch_size=global_batch, has_holdout=has_holdout)
        chief_only["on_epoch_end"] = on_epoch_end
        records = open_records(strategy, checkpoint, Path(out_dir), config, scratch, **chief_only)
        first_epoch = records.restore()
        assert_workers_agree(strategy, first_epoch, "epoch restored from the checkpoint")
        records.start(first_epoch)
        step = make_train_step(unet, optimizer, config, strategy)
        dataset = training_batches(train_images, config, global_batch, first_epoch, drop_remainder)
        batches = iter(strategy.experimental_distribute_dataset(dataset))
        show_progress = progress and is_chief(strategy)
        for epoch in range(first_epoch, config.epochs):

            def set_rate(i, epoch=epoch):  # the schedule per step, at the middle of the step
                rate = learning_rate(config, epoch + (i + 0.5) / steps, replicas)
                optimizer.learning_rate.assign(rate)
                return rate

            bar = _progress_bar(show_progress, epoch, config, steps)
            figures = _train_epoch(step, batches, steps, bar, set_rate)
            _check_finite(figures["loss"], epoch + 1, config)
            epoch_var.assign(epoch + 1)
            records.end_epoch(epoch + 1, figures, unet)
        return records.ship(unet, train_images)
