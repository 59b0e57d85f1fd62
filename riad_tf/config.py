"""One configuration object for every part of riad-tf.

The same `RiadConfig` is read from YAML by the CLI, drives training, is stored
next to every trained model and every export, and becomes the edge metadata,
so no value is specified twice.

Example:

>>> cfg = RiadConfig(image_size=(64, 64), widths=(8, 16, 32, 64, 64))
>>> cfg.with_overrides({"epochs": 3}).epochs
3
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

import yaml

from edge.errors import ConfigError, one_line
from edge.files import atomic_write_text
from edge.metadata import scaled_widths

# Choices of the scale-out settings (see riad_tf.distribute and docs/distributed.md).
STRATEGIES = ("default", "mirrored", "multi_worker", "slurm", "kubernetes")
MIXED_PRECISION = ("off", "mixed_float16", "mixed_bfloat16", "auto")
LR_SCALING = ("none", "linear", "sqrt")
LR_SCHEDULES = ("cosine", "step", "constant")
KERNEL_INITS = ("glorot", "pytorch")  # riad_tf.model.kernel_initializer
BN_STATISTICS = ("reestimated", "moving")  # riad_tf.batchnorm_guard.settle_batchnorm

# Experiment keys that were measured and not adopted, with the one value riad-tf
# now builds in (docs/accuracy.md has the measurements). Configs and runs that
# still name them load when they give that value; another value is an error.
RETIRED_KEYS = {
    "mask_draw": "image",  # "batch" (the PyTorch recipe's draw) was measured, "Masks per image or per batch"
    "train_mask_context": False,  # training's partitions with context, "Inference partitions with context"
    "weight_decay": 0.0,  # set by no recipe and measured nowhere
}


# Keys with a smallest value, and keys with a list of choices (`RiadConfig.validate`).
MAX_WIDTH_MULTIPLIER = 16.0
_AT_LEAST = {
    "epochs": 1,
    "batch_size": 1,
    "n": 1,
    "smoothing": 1,
    "min_region_area": 1,
    "temporal_window": 1,
    "train_frame_stride": 1,
}
_CHOICES = {
    "score_function": ("msgms", "ssim"),
    "strategy": STRATEGIES,
    "mixed_precision": MIXED_PRECISION,
    "lr_scaling": LR_SCALING,
    "lr_schedule": LR_SCHEDULES,
    "kernel_init": KERNEL_INITS,
    "bn_statistics": BN_STATISTICS,
}


@dataclasses.dataclass(frozen=True)
class RiadConfig:
    """Every value RIAD needs, with the paper's defaults (Sec. 4.3, docs/method.md).

    Model:
        image_size: (height, width), both divisible by 16 and by every k in `ks`.
        channels: 3 (grey images are repeated) or 1 (a 1-channel model).
        widths: encoder widths of the 5 U-Net levels (Fig. 4).
        width_multiplier: scales every width (rounded, at least 1) for a
            faster, smaller model; `unet_widths` gives the widths built.
            With `image_size` it sets an operating point (speed against
            accuracy; scripts/operating_points.py).
        skip_connections: False gives the paper's RIAD_ns ablation.
    Masks and scoring:
        ks: the region sizes K (Eq. 9).
        n: number of disjoint cell sets per k (Eq. 1).
        seed: seed of the fixed inference partitions (Algorithm 3).
        smoothing: mean-filter size s_f (Eq. 8).
        msgms_scales, gms_c: MSGMS pyramid depth and GMS stability constant (Eq. 4-5).
        score_function: "msgms" (the paper) or "ssim" (the RIAD_SSIM ablation).
        inpainting: False turns RIAD into a plain auto-encoder with the same
            network, loss and scoring (no masking): the baseline of Sec. 4.
    Loss (Eq. 7):
        lambda_g, lambda_s: weights of the MSGMS and SSIM terms.
    Training (Algorithm 2; docs/accuracy.md):
        epochs, batch_size, learning_rate: Adam settings; `learning_rate` is
            the rate (the peak rate of a cosine schedule).
        lr_schedule: "constant" (the default: it beat the cosine schedule on
            magnetic tile at 13 and 40 epochs, docs/accuracy.md), "cosine"
            (linear warm-up over `warmup_epochs`, then a cosine decay to 0 at
            the last step; configs/cosine_lr.yaml) or "step" (the paper's:
            divided by 10 after `lr_decay_epoch` epochs, default 5/6 of
            `epochs`; configs/paper.yaml).
        warmup_epochs: length of the cosine schedule's warm-up (may be a fraction).
        kernel_init: how the U-Net's convolution kernels start: "glorot"
            (Keras's default) or "pytorch" (uniform in +-1/sqrt(fan_in),
            PyTorch's default; riad_tf.model.kernel_initializer).
        bn_statistics: the batch-norm statistics the saved model keeps:
            "reestimated" (the default: their plain mean over 60 masked
            training batches, run on the final weights; riad_tf.batchnorm_guard.settle_batchnorm)
            or "moving" (training's moving averages, re-estimated only when
            the batch-norm guard fires: the PyTorch recipe's).
        val_fraction: share of the good images held out to choose the kept
            epoch (the lowest validation loss) and to watch batch norm.
        calibration_fraction: share of the good images held out to set the
            thresholds: other images than the validation ones, whose scores
            are optimistic (`riad_tf.data.split_good`; 0: calibrate on the
            validation images, as runs before this key did).
        target_fpr: the false-positive rate the thresholds should keep on new
            good images; held-out good images set them (`edge.verdicts`).
        min_region_area: the smallest region of the anomaly map, in pixels at
            the model's size, that makes an image anomalous (1: any pixel).
    Scale (docs/linescan.md; `riad_tf.crops`, `edge.tiling`):
        scale: None (the default): every image is squeezed whole to
            `image_size`. A number: model pixels per image pixel (1.0: the
            camera's native resolution, 0.5: half). Images are resized by it,
            training sees fresh random `image_size` crops of the scaled good
            images every epoch, and every image (held-out, test, a line
            camera's strip) is scored in model-size tiles at that scale and
            their maps stitched, by every command alike.
        tile_stride: the step between tiles, as a share of the tile (0.5: half
            a tile, each pixel seen by up to 4 tiles; 1.0: no overlap).
    Video (Sec. 4.1, 4.3; `riad_tf.video`):
        temporal_window: frame scores are averaged over the current and the
            `temporal_window - 1` previous frames (3 in the paper).
        exclude_test_videos: names of test videos left out of evaluation
            (Avenue17 drops the videos that Hinami et al. 2017 list).
        train_frame_stride: train on every s-th frame of the training videos
            (consecutive frames are near-duplicates; this bounds memory).
    Scale-out (`riad_tf.distribute`, docs/distributed.md):
        strategy: "default" (one device), "mirrored" (all local GPUs),
            "multi_worker" (cluster from TF_CONFIG), "slurm" or "kubernetes".
            `batch_size` is per replica: the global batch is
            batch_size x replicas.
        lr_scaling: how the learning rate grows with the replica count:
            "none", "linear" (x replicas) or "sqrt" (x sqrt(replicas)).
        sync_batchnorm: batch-norm statistics over the global batch instead of
            each replica's share (N replicas x b then train exactly like one
            device with batch N x b).
        mixed_precision: "off", "mixed_float16" (GPUs; with loss scaling),
            "mixed_bfloat16" (CPUs with native bfloat16 or with xla, TPUs,
            recent GPUs) or "auto" (the default: float16 on GPUs, bfloat16 on
            CPUs with AMX or AVX512-BF16, else float32; see
            riad_tf.distribute.resolve_precision). The saved model is float32.
        xla: compile the training step with XLA (`jit_compile`).
    """

    image_size: tuple[int, int] = (256, 256)
    channels: int = 3
    widths: tuple[int, ...] = (64, 128, 256, 512, 512)
    width_multiplier: float = 1.0
    skip_connections: bool = True
    ks: tuple[int, ...] = (2, 4, 8, 16)
    n: int = 3
    seed: int = 0
    smoothing: int = 21
    msgms_scales: int = 4
    gms_c: float = 0.0026
    score_function: str = "msgms"
    inpainting: bool = True
    lambda_g: float = 1.0
    lambda_s: float = 1.0
    epochs: int = 300
    batch_size: int = 8
    learning_rate: float = 1e-4
    lr_schedule: str = "constant"
    warmup_epochs: float = 1.0
    kernel_init: str = "pytorch"
    bn_statistics: str = "reestimated"
    lr_decay_epoch: int | None = None
    val_fraction: float = 0.1
    calibration_fraction: float = 0.1
    target_fpr: float = 0.01
    min_region_area: int = 1
    scale: float | None = None
    tile_stride: float = 0.5
    temporal_window: int = 3
    exclude_test_videos: tuple[str, ...] = ()
    train_frame_stride: int = 1
    strategy: str = "default"
    lr_scaling: str = "none"
    sync_batchnorm: bool = False
    mixed_precision: str = "auto"
    xla: bool = False

    def __post_init__(self):
        for field in dataclasses.fields(self):
            object.__setattr__(self, field.name, _checked_type(field.name, getattr(self, field.name), field.default))
        self.validate()

    def validate(self) -> None:
        """Raises `edge.errors.ConfigError` (a `ValueError`) naming the key and the rule it breaks."""
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{field.name} must be a finite number, got {value}")
        self._validate_geometry()
        self._validate_loss()
        for name, least in _AT_LEAST.items():
            if getattr(self, name) < least:
                raise ConfigError(f"{name} must be at least {least}, got {getattr(self, name)}")
        if self.seed < 0:
            raise ConfigError(f"seed must be a non-negative int, got {self.seed}")
        if self.channels not in (1, 3):
            raise ConfigError(f"channels must be 1 or 3, got {self.channels}")
        self._validate_schedule()
        self._validate_shares()
        if self.scale is not None and not 0.0 < self.scale <= 16.0:
            raise ConfigError(f"scale must be null (squeeze whole images) or in (0, 16], got {self.scale}")
        if not 0.0 < self.tile_stride <= 1.0:
            raise ConfigError(f"tile_stride must be a share of the tile in (0, 1], got {self.tile_stride}")
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {getattr(self, name)!r}")

    def _validate_geometry(self) -> None:
        """The image size, the U-Net's widths and K fit together."""
        if len(self.image_size) != 2 or min(self.image_size) <= 0:
            raise ConfigError(f"image_size must be two positive ints (or one for a square), got {self.image_size}")
        height, width = self.image_size
        if not self.ks:
            raise ConfigError("ks must list at least one region size k")
        if min(self.widths) < 1:
            raise ConfigError(f"widths must be positive, got {self.widths}")
        if not 0 < self.width_multiplier <= MAX_WIDTH_MULTIPLIER:
            raise ConfigError(f"width_multiplier must be in (0, {MAX_WIDTH_MULTIPLIER}], got {self.width_multiplier}")
        if len(self.widths) != 5:
            raise ConfigError(f"widths must list 5 U-Net levels, got {self.widths}")
        if height % 16 or width % 16:
            raise ConfigError(f"image_size {height}x{width} must be divisible by 16 (four 2x downsamplings)")
        for k in self.ks:
            if k <= 0 or height % k or width % k:
                raise ConfigError(f"ks: region size k={k} does not divide image_size {height}x{width}")

    def _validate_schedule(self) -> None:
        """The learning rate and its schedule."""
        if not self.learning_rate > 0:
            raise ConfigError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.warmup_epochs < 0:
            raise ConfigError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if self.lr_decay_epoch is not None and self.lr_decay_epoch < 1:
            raise ConfigError(f"lr_decay_epoch must be null or at least 1, got {self.lr_decay_epoch}")

    def _validate_loss(self) -> None:
        """The MSGMS pyramid and the mean filter fit the image, and the loss weights are usable (Eq. 3-8)."""
        if self.msgms_scales < 1 or 2 ** (self.msgms_scales - 1) > min(self.image_size) // 2:
            raise ConfigError(
                f"msgms_scales must be at least 1 and leave the coarsest scale at least 2 px "
                f"(image_size {self.image_size}), got {self.msgms_scales}"
            )
        if self.smoothing > min(self.image_size):
            raise ConfigError(f"smoothing ({self.smoothing}) must not exceed the image size {self.image_size}")
        if not self.gms_c > 0:
            raise ConfigError(
                f"gms_c must be positive (it keeps Eq. 4 defined where both gradients vanish), got {self.gms_c}"
            )
        if self.lambda_g < 0 or self.lambda_s < 0 or self.lambda_g + self.lambda_s == 0:
            raise ConfigError(
                f"lambda_g and lambda_s must be >= 0 and not both 0, got {self.lambda_g} and {self.lambda_s}"
            )

    def _validate_shares(self) -> None:
        """The held-out shares of the good images and the false-positive target are fractions that fit."""
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if not 0.0 <= self.calibration_fraction < 1.0 - self.val_fraction:
            raise ConfigError(
                f"calibration_fraction must be in [0, 1 - val_fraction), got {self.calibration_fraction} "
                f"with val_fraction {self.val_fraction}"
            )
        if not 0.0 < self.target_fpr < 1.0:
            raise ConfigError(f"target_fpr must be in (0, 1), got {self.target_fpr}")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (*self.image_size, self.channels)

    @property
    def unet_widths(self) -> tuple[int, ...]:
        """The widths of the U-Net built: `widths` x `width_multiplier`, rounded, at least 1.

        Example:

        >>> RiadConfig(widths=(8, 16, 32, 64, 64), width_multiplier=0.25).unet_widths
        (2, 4, 8, 16, 16)
        """
        return scaled_widths(self.widths, self.width_multiplier)

    @property
    def decay_epoch(self) -> int:
        """Epoch after which the learning rate is divided by 10 (250 of 300 in the paper)."""
        if self.lr_decay_epoch is not None:
            return self.lr_decay_epoch
        return max(1, round(self.epochs * 5 / 6))

    def with_overrides(self, overrides: Mapping[str, Any]) -> "RiadConfig":
        """Returns a copy with `overrides` applied; unknown keys raise `ValueError`.

        A retired key (`RETIRED_KEYS`) at its built-in value is ignored.

        Example:

        >>> RiadConfig().with_overrides({"mask_draw": "image", "n": 4}).n
        4
        """
        overrides = dict(overrides)
        for key, built_in in RETIRED_KEYS.items():
            if key in overrides and overrides.pop(key) != built_in:
                raise ConfigError(
                    f"{key} was an experiment and is retired; riad-tf always uses {built_in!r} (docs/accuracy.md)"
                )
        unknown = set(overrides) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigError(f"unknown config keys: {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "RiadConfig":
        return cls().with_overrides(values)

    @classmethod
    def load(cls, path: str | os.PathLike, _extending: tuple[Path, ...] = ()) -> "RiadConfig":
        """Reads a YAML (or JSON) config; `base:` names a config it extends.

        Raises:
            ConfigError: naming the file and the key when a value breaks a rule,
                or the configs whose `base:` chain comes back to itself.
        """
        path = Path(path)
        if path.resolve() in _extending:
            chain = " -> ".join(str(p) for p in (*_extending, path.resolve()))
            raise ConfigError(f"{path}: its base: chain comes back to itself ({chain})")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"{path}: cannot read config: {one_line(err)}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: a config must be a mapping of keys to values")
        base = values.pop("base", None)
        if base is not None and not isinstance(base, str):
            raise ConfigError(f"{path}: base must name a config file, got {base!r}")
        parent = cls.load(path.parent / base, (*_extending, path.resolve())) if base else cls()
        try:
            return parent.with_overrides(values)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None

    def save(self, path: str | os.PathLike) -> None:
        """Writes the config as YAML (JSON for a .json path), atomically."""
        path = Path(path)
        if path.suffix == ".json":
            text = json.dumps(self.to_dict(), indent=2) + "\n"
        else:
            text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        atomic_write_text(path, text)


def _checked_type(name: str, value: Any, default: Any) -> Any:
    """`value` in the type of the field's default (YAML lists become tuples); a `ConfigError` names the key."""

    def fail(kind: str):
        raise ConfigError(f"{name} must be {kind}, got {value!r}")

    if isinstance(default, tuple):
        if name == "exclude_test_videos":
            return tuple(str(v) for v in ([value] if isinstance(value, (str, int)) else value or ()))
        if name == "image_size" and isinstance(value, int) and not isinstance(value, bool):
            value = (value, value)  # one number: a square
        if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            fail("a list of integers")
        return tuple(int(v) for v in value)
    if isinstance(default, bool):
        return value if isinstance(value, bool) else fail("true or false")
    if default is None and name == "scale":
        return None if value is None else float(value) if _is_number(value) else fail("null or a number")
    if isinstance(default, int) or (default is None and name == "lr_decay_epoch"):
        if value is None and default is None:
            return None
        return value if isinstance(value, int) and not isinstance(value, bool) else fail("an integer")
    if isinstance(default, float):
        return float(value) if _is_number(value) else fail("a number")
    if isinstance(default, str):
        return value if isinstance(value, str) else fail("a string")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
