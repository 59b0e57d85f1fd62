"""The batch-norm policy of training: the guard after every epoch, and the statistics the saved model keeps.

Every score, threshold and export runs the U-Net in inference mode, on batch
norm's moving statistics (`riad_tf.batchnorm`). Training therefore:

- after every epoch, compares Eq. 7 on held-out images in both batch-norm
  modes with the same masks (`batchnorm_check`) and warns when they diverge;
- gives the kept model the statistics `config.bn_statistics` asks for
  (`settle_batchnorm`: re-estimated on masked training batches by default);
- checks the model about to be saved once more (`ship_checked`) and refuses to
  save one that scores differently from what it learned.

Example:

>>> import numpy as np
>>> from riad_tf.config import RiadConfig
>>> from riad_tf.model import build_unet
>>> cfg = RiadConfig(image_size=(32, 32), widths=(4, 8, 8, 16, 16), ks=(2, 4), batch_size=4)
>>> unet = build_unet(cfg.input_shape, cfg.unet_widths)
>>> images = np.random.default_rng(0).random((8, 32, 32, 3), dtype=np.float32)
>>> sorted(batchnorm_check(unet, images, cfg, batch_size=4))
['bn_diverged', 'val_loss', 'val_loss_train_mode']
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

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
from riad_tf.training_step import per_image_loss, training_batches

log = logging.getLogger(__name__)
VALIDATION_SEED = 1234  # fixed partitions, so validation losses compare across epochs
BATCHNORM_BATCHES = 60  # masked training batches that re-estimate batch-norm statistics


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
    # A bar on a terminal (this takes about as long as an epoch); nothing in a log file.
    shown = tqdm(
        batches, total=max_batches, desc="batch norm", unit="batch", leave=False, disable=None, file=sys.stderr
    )
    return reestimate_statistics(
        unet,
        shown,
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


def divergence_note(record: dict) -> str:
    """The note for an epoch whose batch-norm guard fired: expected early on, acted on only for the kept model."""
    return (
        f"batch norm: this epoch's moving statistics lag the weights (inference-mode loss {record['guard_loss']:.4f} "
        f"> {DIVERGENCE_RATIO:g}x the training-mode {record['val_loss_train_mode']:.4f}); common while the weights "
        "move fast, and no harm unless the kept model shows it too: its statistics are then re-estimated before "
        "saving, or training stops with an error (docs/accuracy.md)"
    )


def ship_checked(
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
