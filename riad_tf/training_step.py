"""The training step of Algorithm 2: Eq. 7 on inpainted batches, the input pipeline and the schedule.

Every step draws a fresh k from K and a fresh partition for each image
(`random_grid_masks`), reconstructs it by inpainting (Eq. 2) and minimises
L = lambda_G L_G + lambda_S L_S + L_2 (Eq. 7) with Adam, at the rate
`learning_rate` gives for that step.

- One custom step (`make_train_step`) serves every `tf.distribute` strategy
  (Keras 3.15's `fit` fails under MultiWorkerMirroredStrategy): each replica
  takes its share of the global batch, the optimizer sums the gradients.
- The input pipeline (`training_batches`) shuffles and draws the masks from
  stateless seeds keyed by (seed, epoch, global batch index), so an image's
  masks depend on its place in the global batch, never on the replica that
  trains it, and a resumed run continues the pipeline exactly.

Example:

>>> import numpy as np
>>> from riad_tf.config import RiadConfig
>>> from riad_tf.model import build_unet
>>> cfg = RiadConfig(image_size=(32, 32), widths=(4, 8, 8, 16, 16), ks=(2, 4))
>>> unet = build_unet(cfg.input_shape, cfg.unet_widths)
>>> loss, _ = per_image_loss(unet, np.zeros((2, 32, 32, 3), np.float32), cfg, training=False, seed=0)
>>> loss.shape
TensorShape([2])
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from riad_tf.config import RiadConfig
from riad_tf.inpaint import reconstruct
from riad_tf.losses import riad_loss
from riad_tf.masks import random_grid_masks

_SHUFFLE_STREAM, _MASK_STREAM = 1, 2  # independent random streams derived from config.seed


def training_masks(batch_size, config: RiadConfig, seed=None):
    """Algorithm 2's fresh partitions for a batch (`random_grid_masks` with the config's K and n)."""
    height, width = config.image_size
    return random_grid_masks(batch_size, height, width, config.ks, config.n, seed)


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
        reconstructions = reconstruct(unet, images, tf.cast(masks, tf.float32), training=training)
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
    decoded once beforehand (`riad_tf.image_files.load_arrays`); here they are only
    gathered from memory, so multi-worker sharding is by data
    (`AutoShardPolicy.DATA`: every worker builds the same global batches and
    keeps its replicas' shares).

    Args:
        images: `(N, H, W, C)` float32 in [0, 1], or `riad_tf.crops.RandomCrops`
            (training at a scale: each epoch's crops are drawn as it reads them).
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
    gather, shape = _gatherer(images)
    num_images = len(images)

    def epoch_batches(epoch):
        key = tf.random.experimental.stateless_fold_in(tf.constant([config.seed, _SHUFFLE_STREAM], tf.int64), epoch)
        order = tf.random.experimental.stateless_shuffle(tf.range(num_images, dtype=tf.int64), seed=key)
        batches = tf.data.Dataset.from_tensor_slices(order).batch(global_batch, drop_remainder=drop_remainder)
        return batches.enumerate().map(lambda i, indices: (epoch, i, indices))

    def load(epoch, index, indices):
        # Gathered from the numpy array itself: no copy of the data set in the graph (which
        # multi-worker sharding would have to serialise, and protobufs stop at 2 GB).
        batch = tf.numpy_function(gather, [epoch, indices], tf.float32, stateful=False)
        batch.set_shape((None, *shape))
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


def _gatherer(images):
    """(`gather(epoch, indices) -> float32 batch`, the shape of one image) of an array or `RandomCrops`."""
    if hasattr(images, "crops"):
        return (lambda epoch, indices: images.crops(int(epoch), indices)), images.crop_shape
    pixels = np.ascontiguousarray(images, np.float32)
    return (lambda epoch, indices: pixels[indices]), pixels.shape[1:]


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
