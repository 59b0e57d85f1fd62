"""Training glue: Algorithm 2 under any `tf.distribute` strategy, with resume.

Every step draws a fresh k from K and a fresh partition for each image
(`random_grid_masks`), reconstructs it by inpainting (Eq. 2) and minimises
L = lambda_G L_G + lambda_S L_S + L_2 (Eq. 7) with Adam. The learning rate
follows `config.lr_schedule` (`learning_rate`): constant by default, or a
warm-up and a cosine decay set per step; the paper's division by 10 after
`config.decay_epoch` epochs is `configs/paper.yaml`. After every epoch the
batch-norm guard (`batchnorm_check`) compares inference- and training-mode
losses, the epoch with the lowest validation loss is the one kept, and its
batch-norm statistics are re-estimated on the final weights (`settle_batchnorm`).

Scaling out (docs/distributed.md):

- One custom step (`make_train_step`) serves every strategy: Keras 3.15's
  `fit` fails under MultiWorkerMirroredStrategy.
- `config.batch_size` is per replica; the global batch is batch_size x
  replicas, and `learning_rate` applies `config.lr_scaling` to the replica count.
- The input pipeline (`training_batches`) shuffles and draws the masks from
  stateless seeds keyed by (seed, epoch, global batch index), so the masks of
  an image depend on its place in the global batch, never on the replica that
  trains it: replicas draw independent masks, and any replica count (or a
  resumed run) sees the same images and masks as one device would.
- The whole state (weights, optimizer, epoch) is checkpointed after every
  epoch; re-running the same command after a crash or `kill -9` of any worker
  continues from the last finished epoch.
- Only the chief writes the run directory (checkpoints, history, logs, model);
  the other workers take part in every save but write to a scratch directory.
- Mixed precision (`config.mixed_precision`) builds the training U-Net under
  a mixed policy (with loss scaling for float16); losses stay float32 and the
  saved model is always float32. `config.xla` compiles the per-replica step.

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

import contextlib
import json
import logging
import math
import sys
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from edge.errors import InputError
from edge.files import atomic_path, atomic_write_text
from riad_tf.batchnorm import (
    DIVERGENCE_RATIO,
    BatchNormDivergenceError,
    frozen_statistics,
    moving_statistics,
    reestimate_statistics,
    set_moving_statistics,
    statistics_diverged,
)
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
from riad_tf.inpaint import reconstruct
from riad_tf.losses import riad_loss
from riad_tf.masks import random_grid_masks
from riad_tf.model import build_unet
from riad_tf.run import BEST_WEIGHTS_FILE, CHECKPOINT_DIR, HISTORY_FILE, LOGS_DIR, save_config, save_model

log = logging.getLogger(__name__)
VALIDATION_SEED = 1234  # fixed partitions, so validation losses compare across epochs
BATCHNORM_BATCHES = 60  # masked training batches that re-estimate batch-norm statistics
_SHUFFLE_STREAM, _MASK_STREAM = 1, 2  # independent random streams derived from config.seed


def shared_masks(config: RiadConfig) -> bool:
    """Whether a batch shares one partition (`mask_draw: batch`, the PyTorch recipe)."""
    return config.mask_draw == "batch"


def training_masks(batch_size, config: RiadConfig, seed=None):
    """Algorithm 2's fresh partitions for a batch, drawn as the config says (`random_grid_masks`)."""
    height, width = config.image_size
    return random_grid_masks(
        batch_size, height, width, config.ks, config.n, seed, shared_masks(config), context=config.train_mask_context
    )


def per_image_loss(unet, images, config: RiadConfig, training: bool, seed=None, masks=None):
    """Algorithm 2 for a batch: inpaint with random (or given) masks, Eq. 7 per image.

    Args:
        unet: the inpainting network.
        images: `(B, H, W, C)` float32 in [0, 1].
        config: gives K, n, the loss weights and whether to inpaint at all.
        training: batch-norm mode.
        seed: seed of the random partitions (int or int tensor); None: global RNG.
        masks: `(B, n, H, W, 1)` keep-masks (any numeric dtype) to use instead
            of drawing them.

    Returns:
        `(loss (B,), reconstructions (B, H, W, C))`, both float32.
    """
    if config.inpainting:
        if masks is None:
            masks = training_masks(tf.shape(images)[0], config, seed)
        reconstructions = reconstruct(
            unet, images, tf.cast(masks, tf.float32), training=training, one_call=not shared_masks(config)
        )
    else:  # the auto-encoder baseline
        reconstructions = tf.cast(unet(images, training=training), tf.float32)
    # The losses run in float32 whatever the network's compute dtype.
    loss = riad_loss(
        tf.cast(images, tf.float32),
        reconstructions,
        config.lambda_g,
        config.lambda_s,
        config.msgms_scales,
        config.gms_c,
    )
    return loss, reconstructions


def training_batches(
    images: np.ndarray, config: RiadConfig, global_batch: int, first_epoch: int = 0, drop_remainder: bool = False
):
    """The input pipeline: `(images, masks)` global batches for epochs `first_epoch .. config.epochs - 1`.

    Each epoch is a stateless shuffle keyed by (seed, epoch); each batch's
    masks are drawn from a seed keyed by (seed, epoch, batch index), in
    parallel on the host, as uint8 (a quarter of the float32 traffic). So the
    pipeline is deterministic, a resumed run continues it exactly, and an
    image's masks depend on its place in the global batch only. The images are
    decoded once beforehand (`riad_tf.data.load_arrays`); here they are only
    gathered from memory, so multi-worker sharding is by data
    (`AutoShardPolicy.DATA`: every worker builds the same global batches and
    keeps its replicas' shares).

    Args:
        images: `(N, H, W, C)` float32 in [0, 1].
        config: gives the seed, epochs, K, n and whether to inpaint.
        global_batch: images per step over all replicas.
        first_epoch: the 0-based epoch to start at (after a resume).
        drop_remainder: drop each epoch's last incomplete batch.

    Returns:
        A `tf.data.Dataset` of `(images (B, H, W, C) float32, masks (B, n, H, W, 1) uint8)`,
        or of `(images,)` for the auto-encoder baseline.

    Example:

    >>> cfg = RiadConfig(image_size=(32, 32), ks=(2, 4), epochs=2)
    >>> ds = training_batches(np.zeros((10, 32, 32, 3), np.float32), cfg, 4, drop_remainder=True)
    >>> [tuple(x.shape) for x, m in ds][:2], len(list(ds))
    ([(4, 32, 32, 3), (4, 32, 32, 3)], 4)
    """
    pixels = np.ascontiguousarray(images, np.float32)
    num_images = len(pixels)

    def epoch_batches(epoch):
        key = tf.random.experimental.stateless_fold_in(tf.constant([config.seed, _SHUFFLE_STREAM], tf.int64), epoch)
        order = tf.random.experimental.stateless_shuffle(tf.range(num_images, dtype=tf.int64), seed=key)
        batches = tf.data.Dataset.from_tensor_slices(order).batch(global_batch, drop_remainder=drop_remainder)
        return batches.enumerate().map(lambda i, indices: (epoch, i, indices))

    def load(epoch, index, indices):
        # Gathered from the numpy array itself: no copy of the data set in the graph (which
        # multi-worker sharding would have to serialise, and protobufs stop at 2 GB).
        batch = tf.numpy_function(lambda i: pixels[i], [indices], tf.float32, stateful=False)
        batch.set_shape((None, *pixels.shape[1:]))
        if not config.inpainting:
            return (batch,)
        key = tf.constant([config.seed, _MASK_STREAM], tf.int64)
        key = tf.random.experimental.stateless_fold_in(tf.random.experimental.stateless_fold_in(key, epoch), index)
        seed = tf.random.stateless_uniform([], key, minval=None, maxval=None, dtype=tf.int64)
        masks = training_masks(tf.shape(indices)[0], config, seed)
        return batch, tf.cast(masks, tf.uint8)

    dataset = tf.data.Dataset.range(first_epoch, config.epochs).flat_map(epoch_batches)
    dataset = dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def make_train_step(unet, optimizer, config: RiadConfig, strategy: tf.distribute.Strategy):
    """One distributed training step for every strategy.

    Each replica computes Eq. 7 on its share of the global batch, scales the
    mean by its share (`compute_average_loss`), takes gradients (through the
    loss scale for float16; XLA-compiled with `config.xla`) and applies them;
    the optimizer sums the gradients over all replicas, so every step follows
    the gradient of the mean loss over the global batch.

    Returns:
        `step(batch) -> (sum of per-image losses, number of images)` over the
        global batch, where `batch` is a (distributed) `(images, masks)` from
        `training_batches`, or `(images,)` to draw the masks inside the step.
    """
    variables = unet.trainable_variables

    def gradients(images, masks=None):
        with tf.GradientTape() as tape:
            loss, _ = per_image_loss(unet, images, config, training=True, masks=masks)
            scaled = optimizer.scale_loss(tf.nn.compute_average_loss(loss))
        return tape.gradient(scaled, variables), tf.reduce_sum(loss), tf.cast(tf.size(loss), tf.float32)

    if config.xla:
        gradients = tf.function(gradients, jit_compile=True)

    def replica_step(*batch):
        grads, loss_sum, count = gradients(*batch)
        optimizer.apply_gradients(zip(grads, variables))
        return loss_sum, count

    @tf.function
    def step(batch):
        per_replica = strategy.run(replica_step, args=batch)
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    return step


def validation_loss(unet, images: np.ndarray, config: RiadConfig, batch_size: int, training: bool = False) -> float:
    """Mean Eq. 7 loss on held-out images with fixed partitions.

    Args:
        training: False (the default) runs batch norm as every score and export
            does, on its moving statistics; True uses each batch's own
            statistics, as training does, and leaves the moving ones unchanged.
    """
    losses = []
    with frozen_statistics(unet) if training else contextlib.nullcontext():
        for start in range(0, len(images), batch_size):
            batch = tf.convert_to_tensor(images[start : start + batch_size])
            loss, _ = per_image_loss(unet, batch, config, training=training, seed=VALIDATION_SEED + start)
            losses.append(loss.numpy())
    return float(np.concatenate(losses).mean())


def batchnorm_check(unet, images: np.ndarray, config: RiadConfig, batch_size: int) -> dict:
    """The batch-norm guard: Eq. 7 on the same images and masks in both batch-norm modes.

    Returns:
        `{"val_loss": inference mode, "val_loss_train_mode": training mode,
        "bn_diverged": riad_tf.batchnorm.statistics_diverged(...)}`.
    """
    inference = validation_loss(unet, images, config, batch_size)
    training_mode = validation_loss(unet, images, config, batch_size, training=True)
    return {
        "val_loss": inference,
        "val_loss_train_mode": training_mode,
        "bn_diverged": statistics_diverged(inference, training_mode),
    }


def reestimate_batchnorm(unet, images: np.ndarray, config: RiadConfig, max_batches: int = BATCHNORM_BATCHES) -> int:
    """Re-estimates the U-Net's batch-norm statistics on masked training batches (Algorithm 2's inputs).

    The batches are the first `max_batches` of training's own pipeline (its
    shuffles and masks), over as many passes of `images` as that takes.

    Returns:
        The number of batches used.
    """
    steps = math.ceil(len(images) / config.batch_size)
    passes = config.with_overrides({"epochs": math.ceil(max_batches / steps)})
    batches = training_batches(images, passes, config.batch_size).take(max_batches)
    return reestimate_statistics(
        unet,
        batches,
        lambda batch: per_image_loss(unet, batch[0], config, True, masks=batch[-1] if config.inpainting else None),
    )


def settle_batchnorm(unet, images: np.ndarray, config: RiadConfig, guard_fired: bool = False) -> dict:
    """Gives a trained U-Net the batch-norm statistics `config.bn_statistics` asks for.

    With "reestimated", the moving averages of training (each about the last
    ten batches, of weights still moving) make way for the plain mean over
    `BATCHNORM_BATCHES` masked training batches of the final weights
    (docs/accuracy.md measures the gain); with "moving" nothing changes.

    Args:
        unet: the trained U-Net (float32; changed in place).
        images: the training images.
        config: gives `bn_statistics` and what `reestimate_batchnorm` needs.
        guard_fired: re-estimate whatever `bn_statistics` says (the
            batch-norm guard found training's moving statistics off).

    Returns:
        What to record: `{"bn_reestimated_batches", "bn_reestimate_seconds"}`,
        or `{}` when the statistics were kept.
    """
    if config.bn_statistics == "moving" and not guard_fired:
        return {}
    log.info(f"batch norm: re-estimating the statistics on {BATCHNORM_BATCHES} masked training batches")
    started = time.time()
    used = reestimate_batchnorm(unet, images, config)
    return {"bn_reestimated_batches": used, "bn_reestimate_seconds": round(time.time() - started, 3)}


def learning_rate(config: RiadConfig, epoch: float, replicas: int = 1) -> float:
    """Adam's rate at a (fractional, 0-based) epoch: `epoch + step / steps_per_epoch`.

    The peak rate `config.learning_rate` is for one replica's batch; it is
    scaled with the replica count by `config.lr_scaling` ("none", "linear":
    x replicas, "sqrt": x sqrt(replicas)). Then `config.lr_schedule`:

    - "cosine": linear warm-up from 0 over `warmup_epochs`, then a half cosine
      from the peak down to 0 at the end of the last epoch;
    - "step": divided by 10 from `decay_epoch` on (Sec. 4.3, the paper's);
    - "constant".

    Example:

    >>> cfg = RiadConfig(learning_rate=1e-4, lr_scaling="linear", lr_schedule="step", epochs=6)
    >>> learning_rate(cfg, 5, replicas=4)
    4e-05
    >>> cosine = RiadConfig(learning_rate=1e-3, lr_schedule="cosine", epochs=11, warmup_epochs=1)
    >>> [round(learning_rate(cosine, e), 6) for e in (0.5, 1, 6, 11)]
    [0.0005, 0.001, 0.0005, 0.0]
    """
    factor = {"none": 1.0, "linear": float(replicas), "sqrt": math.sqrt(replicas)}[config.lr_scaling]
    peak = config.learning_rate * factor
    if config.lr_schedule == "step":
        return peak / 10.0 if epoch >= config.decay_epoch else peak
    if config.lr_schedule == "constant":
        return peak
    warmup = min(config.warmup_epochs, config.epochs)
    if epoch < warmup:
        return peak * epoch / warmup
    progress = (epoch - warmup) / max(config.epochs - warmup, 1e-9)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


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


class _History:
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


class _BestWeights:
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


class _EpochCheckpoints:
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


def _log_epoch(writer, record: dict, unet, preview: np.ndarray | None, config: RiadConfig):
    with writer.as_default(step=record["epoch"]):
        for key in ("loss", "val_loss", "val_loss_train_mode", "lr", "images_per_s"):
            if record.get(key) is not None:
                tf.summary.scalar(key, record[key])
        if preview is not None:
            _, recs = per_image_loss(unet, tf.convert_to_tensor(preview), config, training=False, seed=VALIDATION_SEED)
            tf.summary.image("input_vs_reconstruction", tf.concat([preview, recs], axis=2), max_outputs=len(preview))
    writer.flush()


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
        optimizer = keras.optimizers.Adam(learning_rate=config.learning_rate, weight_decay=config.weight_decay or None)
        if policy == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(unet.trainable_variables)
        epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    return unet, optimizer, epoch


def float32_copy(unet, config: RiadConfig, weights: list[np.ndarray] | None = None):
    """A plain float32 U-Net outside any strategy with `unet`'s weights (or `weights`): what is saved and returned."""
    with precision_policy("float32"):
        copy = build_unet(config.input_shape, config.unet_widths, config.skip_connections)
    copy.set_weights([np.asarray(w, np.float32) for w in (unet.get_weights() if weights is None else weights)])
    return copy


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


def _train_epoch(step, batches, steps: int, bar, set_rate) -> tuple[float, float]:
    """Runs one epoch's steps, `set_rate(i)` before step i; returns (mean Eq. 7 loss per image, number of images).

    `bar` is a tqdm bar (disabled off a terminal) or None.
    """
    loss_sum, count = 0.0, 0.0
    for i in range(steps):
        set_rate(i)
        step_sum, step_count = step(next(batches))
        loss_sum, count = loss_sum + step_sum, count + step_count  # stays on the device until read
        if bar is not None and not bar.disable:
            bar.update()
            bar.set_postfix(loss=f"{float(loss_sum / count):.4f}", refresh=False)
    if bar is not None:
        bar.close()
    return float(loss_sum / count), float(count)


def _guard_images(train_images: np.ndarray, holdout_images: np.ndarray | None, global_batch: int) -> np.ndarray:
    """The held-out images, or (without any) the first few training batches, for the batch-norm guard."""
    if holdout_images is not None and len(holdout_images):
        return holdout_images
    return train_images[: 4 * global_batch]


def _epoch_line(record: dict, epochs: int) -> str:
    name = "val_loss" if record.get("val_loss") is not None else "loss on training images"
    return (
        f"epoch {record['epoch']}/{epochs}: loss {record['loss']:.4f}, {name} {record['guard_loss']:.4f} "
        f"(batch norm in training mode: {record['val_loss_train_mode']:.4f}), lr {record['lr']:.3g}, "
        f"{record['seconds']:.0f} s, {record['images_per_s']:g} img/s"
    )


def _divergence_warning(record: dict) -> str:
    return (
        f"warning: inference-mode loss {record['guard_loss']:.4f} is more than {DIVERGENCE_RATIO:g}x the training-mode loss "
        f"{record['val_loss_train_mode']:.4f} on the same images: batch-norm moving statistics lag the weights, so scores, "
        "thresholds and exports would use a worse model than training measures (docs/accuracy.md)"
    )


def _ship_checked(
    trained, config: RiadConfig, guard_images: np.ndarray, train_images: np.ndarray, batch_size: int, out_dir: Path
) -> dict:
    """Settles the batch-norm statistics of the model about to be saved and runs the guard on it.

    With `bn_statistics: moving` the statistics are re-estimated only when the
    guard fires on training's moving averages. When re-estimated statistics
    fail the guard where the moving ones passed, the model keeps the moving
    ones (with a warning).

    Returns:
        What to record on the kept epoch: the final guard losses, and the
        number of batches that re-estimated the statistics (when they were).

    Raises:
        BatchNormDivergenceError: when inference mode stays far from training
            mode with either statistics (the model is then not saved).
    """
    check = batchnorm_check(trained, guard_images, config, batch_size)
    moving = moving_statistics(trained)
    details = settle_batchnorm(trained, train_images, config, guard_fired=check["bn_diverged"])
    if not details:
        return {"final_val_loss": check["val_loss"]}
    after = batchnorm_check(trained, guard_images, config, batch_size)
    log.info(
        f"batch norm: inference-mode validation loss {check['val_loss']:.4f} with training's moving statistics "
        f"(training mode {check['val_loss_train_mode']:.4f}), {after['val_loss']:.4f} with statistics re-estimated "
        f"on {details['bn_reestimated_batches']} masked training batches"
    )
    if after["bn_diverged"] and not check["bn_diverged"]:
        set_moving_statistics(trained, moving)
        log.warning(
            "warning: the re-estimated batch-norm statistics fail the guard where training's moving ones pass; "
            "the saved model keeps the moving ones"
        )
        return {"final_val_loss": check["val_loss"], "rejected_reestimate_val_loss": after["val_loss"]}
    if after["bn_diverged"]:
        raise BatchNormDivergenceError(
            f"{out_dir}: inference-mode validation loss {after['val_loss']:.4f} stays above {DIVERGENCE_RATIO:g}x the "
            f"training-mode loss {after['val_loss_train_mode']:.4f} even after re-estimating batch-norm statistics; "
            "the model was not saved or calibrated (training state kept in checkpoints/; docs/accuracy.md)"
        )
    return {"final_val_loss": after["val_loss"], "moving_val_loss": check["val_loss"], **details}


def train(
    config: RiadConfig,
    train_images: np.ndarray,
    out_dir,
    holdout_images: np.ndarray | None = None,
    strategy: tf.distribute.Strategy | None = None,
    progress: bool = True,
    on_epoch_end=None,
):
    """Trains the inpainting U-Net and writes the run directory (see `riad_tf.run`).

    After every epoch the chief runs the batch-norm guard: Eq. 7 on the
    held-out images (or, without any, a few training batches) in inference mode
    and in training mode, with the same masks; it warns when the two diverge
    (`riad_tf.batchnorm`). The saved model is the epoch with the lowest
    inference-mode validation loss (the last epoch without held-out images),
    flagged `"kept": true` in `history.json`. Its batch-norm statistics are
    re-estimated on masked training batches (`config.bn_statistics`,
    `settle_batchnorm`; with "moving", only when the guard fires on them),
    the guard runs once more, and training fails with
    `BatchNormDivergenceError` instead of saving a model that scores
    differently from what it learned.

    Args:
        config: the run's `RiadConfig` (saved as `config.yaml`).
        train_images: `(N, H, W, C)` float32 anomaly-free images in [0, 1].
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
    out_dir = Path(out_dir)
    strategy = strategy or make_strategy(config.strategy)
    replicas = strategy.num_replicas_in_sync
    global_batch, drop_remainder, steps_per_epoch = _batching(config, replicas, len(train_images))
    chief = is_chief(strategy)
    has_holdout = holdout_images is not None and len(holdout_images) > 0
    guard_images = _guard_images(train_images, holdout_images, global_batch)

    unet, optimizer, epoch_var = build_training_state(config, strategy)
    checkpoint = tf.train.Checkpoint(unet=unet, optimizer=optimizer, epoch=epoch_var)
    with scratch_dir(strategy) as scratch:
        checkpoints = _EpochCheckpoints(checkpoint, out_dir / CHECKPOINT_DIR, chief, scratch)
        if checkpoints.restore():
            log.info(f"resuming {out_dir} after epoch {int(epoch_var.numpy())} of {config.epochs}")
        first_epoch = int(epoch_var.numpy())
        assert_workers_agree(strategy, first_epoch, "epoch restored from the checkpoint")
        if chief:
            out_dir.mkdir(parents=True, exist_ok=True)
            save_config(out_dir, config)
            history = _History(out_dir / HISTORY_FILE, first_epoch)
            best = _BestWeights(out_dir / CHECKPOINT_DIR / BEST_WEIGHTS_FILE, history.records)
            writer = tf.summary.create_file_writer(str(out_dir / LOGS_DIR))
        preview = guard_images[:3]
        step = make_train_step(unet, optimizer, config, strategy)
        dataset = training_batches(train_images, config, global_batch, first_epoch, drop_remainder)
        batches = iter(strategy.experimental_distribute_dataset(dataset))

        for epoch in range(first_epoch, config.epochs):
            bar = None
            if progress and chief:  # a live bar on a terminal only; logs get the one line per epoch below
                bar = tqdm(
                    total=steps_per_epoch,
                    desc=f"epoch {epoch + 1}/{config.epochs}",
                    unit="step",
                    leave=False,
                    disable=None,
                    file=sys.stderr,
                )

            def set_rate(i, epoch=epoch):  # the schedule per step, at the middle of the step
                optimizer.learning_rate.assign(learning_rate(config, epoch + (i + 0.5) / steps_per_epoch, replicas))

            started = time.time()
            loss, count = _train_epoch(step, batches, steps_per_epoch, bar, set_rate)
            seconds = time.time() - started
            epoch_var.assign(epoch + 1)
            if chief:
                check = batchnorm_check(unet, guard_images, config, global_batch)
                record = {
                    "epoch": epoch + 1,
                    "loss": loss,
                    "val_loss": check["val_loss"] if has_holdout else None,
                    "guard_loss": check["val_loss"],
                    "val_loss_train_mode": check["val_loss_train_mode"],
                    "bn_diverged": check["bn_diverged"],
                    "lr": float(optimizer.learning_rate.numpy()),
                    "seconds": round(seconds, 3),
                    "images_per_s": round(count / seconds, 2),
                }
                history.append(record)  # before the checkpoint, so a resumed run never misses a record
                if has_holdout:
                    best.update(epoch + 1, check["val_loss"], unet)
            checkpoints.save(epoch + 1)
            if chief:
                log.info(_epoch_line(record, config.epochs))
                if record["bn_diverged"]:
                    log.warning(_divergence_warning(record))
                _log_epoch(writer, record, unet, preview, config)
                if on_epoch_end is not None:
                    on_epoch_end(epoch + 1, unet)

        trained = float32_copy(unet, config)
        if not chief:
            save_model(scratch / "model", trained, config)  # the documented pattern: every worker saves
            return trained
        kept = best.epoch if best.epoch is not None else config.epochs
        if kept != config.epochs:
            trained = float32_copy(unet, config, best.load())
        details = _ship_checked(trained, config, guard_images, train_images, global_batch, out_dir)
        history.mark_kept(kept, **details)
        log.info(
            f"kept epoch {kept} of {config.epochs}"
            + (" (lowest inference-mode validation loss)" if has_holdout else " (the last)")
        )
        save_model(out_dir, trained, config)
    return trained
