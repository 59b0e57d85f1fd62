"""The RIAD detector: raw images in, anomaly maps and scores out (Algorithm 3).

All n x |K| masked copies of every image go through the U-Net as one batch,
with the partitions fixed by the config's seed (`riad_tf.masks.inference_masks`),
so results are deterministic and the masks are constants of an exported graph.
This is the object that evaluation, prediction and export use.

Example:

>>> import numpy as np
>>> from riad_tf.config import RiadConfig
>>> from riad_tf.model import build_unet
>>> cfg = RiadConfig(image_size=(32, 32), widths=(4, 8, 8, 16, 16), ks=(2, 4), smoothing=5)
>>> detector = Detector(build_unet(cfg.input_shape, cfg.unet_widths), cfg)
>>> maps, scores = detector(np.zeros((2, 32, 32, 3), np.float32))
>>> tuple(maps.shape), tuple(scores.shape)
((2, 32, 32), (2,))
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from edge.tiling import TiledMap, tile_stride, tiled_map
from riad_tf.config import RiadConfig
from riad_tf.inpaint import reconstruct
from riad_tf.masks import inference_masks
from riad_tf.scoring import anomaly_map


class Detector(keras.Model):
    """RIAD inference around a trained inpainting network.

    Args:
        unet: the inpainting network (`riad_tf.model.build_unet`).
        config: the `RiadConfig` it was trained with; K, n, seed, smoothing and
            the scoring function come from it.
        masks: `(|K|, n, H, W, 1)` partitions to use instead of the config's
            `inference_masks` (a study of partitions; exports use the default).

    Call:
        images `(B, H, W, C)` float in [0, 1] -> `(maps (B, H, W), scores (B,))`.
    """

    def __init__(self, unet: keras.Model, config: RiadConfig, masks: np.ndarray | None = None, **kwargs):
        super().__init__(name=kwargs.pop("name", "riad_detector"), **kwargs)
        self.unet = unet
        self.config = config
        height, width = config.image_size
        # (|K|, n, H, W, 1), fixed by the seed: the same partitions on every call.
        self.masks = inference_masks(height, width, config.ks, config.n, config.seed) if masks is None else masks

    def reconstructions(self, images):
        """One reconstruction per k: `(|K|, B, H, W, C)` (Algorithm 1 for every k at once)."""
        images = tf.cast(tf.convert_to_tensor(images), tf.float32)
        num_k = len(self.config.ks)
        if not self.config.inpainting:  # auto-encoder baseline: one plain reconstruction for every k
            return tf.tile(tf.cast(self.unet(images), tf.float32)[None], [num_k, 1, 1, 1, 1])
        batch = tf.shape(images)[0]
        # Each (image, k) pair is one item of a B * |K| batch carrying that k's n masks,
        # so the U-Net sees all B * |K| * n masked copies in one call.
        pairs = tf.repeat(images, num_k, axis=0)
        masks = tf.tile(tf.constant(self.masks), tf.stack([batch, 1, 1, 1, 1]))
        recs = reconstruct(self.unet, pairs, masks)  # (B * |K|, H, W, C), image-major
        recs = tf.reshape(recs, tf.concat([[batch, num_k], tf.shape(images)[1:]], 0))
        return tf.transpose(recs, [1, 0, 2, 3, 4])

    def call(self, images):
        return self._score(images, self.reconstructions(images))

    def _score(self, images, reconstructions):
        cfg = self.config
        return anomaly_map(
            images,
            reconstructions,
            smoothing=cfg.smoothing,
            scales=cfg.msgms_scales,
            c=cfg.gms_c,
            score_function=cfg.score_function,
        )

    def score(self, images: np.ndarray, batch_size: int = 4, with_reconstructions: bool = False):
        """Runs the detector over a numpy array in batches.

        Args:
            images: `(N, H, W, C)` float32 in [0, 1].
            batch_size: images per call (each call runs `batch_size * n * |K|` copies).
            with_reconstructions: also return the reconstructions averaged over K
                (for reports).

        Returns:
            numpy `(maps (N, H, W), scores (N,))`, plus `(N, H, W, C)` reconstructions
            when asked.
        """
        outputs = []
        step = self._compiled_call(with_reconstructions)
        for start in range(0, len(images), batch_size):
            batch = tf.convert_to_tensor(images[start : start + batch_size], tf.float32)
            outputs.append([t.numpy() for t in step(batch)])
        if not outputs:
            height, width = self.config.image_size
            empty = [np.zeros((0, height, width), np.float32), np.zeros((0,), np.float32)]
            return tuple(empty + [np.zeros((0, *self.config.input_shape), np.float32)] * with_reconstructions)
        return tuple(np.concatenate(parts) for parts in zip(*outputs))

    def score_tiled(self, images, batch_size: int = 4, progress: bool = False) -> list[TiledMap]:
        """Images of any size, already at the config's `scale`, each scored in tiles and stitched.

        Tiles are `config.tile_stride` of a tile apart (`edge.tiling.tiled_map`),
        exactly as `riad-edge infer` and `riad-edge stream` tile.

        Args:
            images: float32 `(H, W, C)` arrays in [0, 1] (a list, or an `(N, H, W, C)` array).
            batch_size: tiles per call.
            progress: show a progress bar.

        Returns:
            One `edge.tiling.TiledMap` per image; its `map` has the image's size.
        """
        from tqdm.auto import tqdm

        stride = tile_stride(self.config.image_size, self.config.tile_stride)
        score = lambda tiles: self.score(tiles, batch_size)  # noqa: E731
        shown = tqdm(images, desc="scoring in tiles", unit="img", disable=None if progress else True)
        return [tiled_map(image, score, self.config.image_size, stride, batch_size) for image in shown]

    def _maps_scores_reconstruction(self, images):
        recs = self.reconstructions(images)
        maps, scores = self._score(images, recs)
        return maps, scores, tf.reduce_mean(recs, axis=0)

    def _compiled_call(self, with_reconstructions: bool):
        key = "_step_recs" if with_reconstructions else "_step"
        if getattr(self, key, None) is None:
            spec = tf.TensorSpec([None, *self.config.input_shape], tf.float32)
            fn = self._maps_scores_reconstruction if with_reconstructions else self.call
            setattr(self, key, tf.function(fn, input_signature=[spec], reduce_retracing=True))
        return getattr(self, key)
