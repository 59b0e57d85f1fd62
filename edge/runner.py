"""One interface over LiteRT, ONNX Runtime, OpenVINO and TensorRT: images in, anomaly maps and scores out.

`Runner.open(path)` picks the runtime from the file extension (`.tflite`,
`.onnx`, `.engine`/`.plan`) and reads `MODEL.json` beside the model. Two kinds
of export run the same way:

- the whole graph (`graph: detector`): the model does everything; the runner
  feeds it batches of images and returns its maps and scores;
- the bare U-Net (`graph: unet`): the runner builds the n x |K| masked copies
  of every image in numpy, sends them through the U-Net in as few calls as the
  memory budget allows, assembles the reconstructions (Eq. 2) and scores them
  with `edge.scoring` (Eq. 3-10).

No TensorFlow or Keras is imported, here or below.

Example:

>>> runner = Runner.open("export/riad_fp32.tflite", threads=4)     # doctest: +SKIP
>>> batch = runner.preprocess([load_image("part.png")])             # doctest: +SKIP
>>> maps, scores = runner(batch)                                    # doctest: +SKIP
>>> runner.verdicts(scores)                                         # doctest: +SKIP
array([False])
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from edge import scoring
from edge.errors import InputError, one_line
from edge.images import to_model_input
from edge.inpaint import assemble, check_masks, masked_copies
from edge.metadata import EXTENSIONS, MetadataError, ModelMetadata, read_metadata
from edge.session import Session
from edge.verdicts import is_anomalous

if TYPE_CHECKING:
    from edge.openvino import OpenVinoSettings

DEFAULT_MEMORY_MB = 1024


def open_session(
    path: str | os.PathLike,
    threads: int | None = None,
    providers: Sequence[str] | None = None,
    openvino: OpenVinoSettings | None = None,
) -> Session:
    """The runtime session for a model file, chosen by its extension (an `.onnx` on OpenVINO when `openvino` is given)."""
    path = Path(path)
    kind = EXTENSIONS.get(path.suffix.lower())
    if kind == "tflite":
        from edge.litert import LiteRTSession

        return LiteRTSession(path, threads)
    if kind == "onnx" and openvino is not None:
        from edge.openvino import OpenVinoSession

        return OpenVinoSession(path, threads, openvino)
    if kind == "onnx":
        from edge.onnxrt import OnnxSession

        return OnnxSession(path, threads, providers)
    if kind == "tensorrt":
        from edge.trt import TensorRTSession

        return TensorRTSession(path, threads)
    raise InputError(f"{path}: unknown model type {path.suffix!r} (expected one of {', '.join(EXTENSIONS)})")


def activation_bytes_per_input(metadata: ModelMetadata) -> int:
    """A rough upper bound of the U-Net's float32 activations for one network input.

    About six feature maps of each level's width live at once (encoder block,
    upsampling, skip concatenation, decoder block).
    """
    height, width = metadata.image_size
    levels = sum(w / 4**level for level, w in enumerate(metadata.unet_widths))
    return int(4 * height * width * (6 * levels + 2 * metadata.channels))


class Runner:
    """A loaded model and its metadata, ready for images.

    Args:
        session: a runtime session (`open_session`).
        metadata: the model's `ModelMetadata`.
        model_dir: folder of the model (the bare U-Net's masks file is there).
        max_batch: the most inputs per model call (images for a whole graph,
            masked copies for a bare U-Net); default: the model's fixed batch,
            the engine's largest, or what `memory_mb` allows.
        memory_mb: activation memory budget used when `max_batch` is not given.

    Call:
        images `(B, H, W, C)` at the model's size (see `preprocess`) ->
        `(maps (B, H, W), scores (B,))` float32.
    """

    def __init__(
        self, session, metadata: ModelMetadata, model_dir: Path, *, max_batch=None, memory_mb=DEFAULT_MEMORY_MB
    ):
        self.session = session
        self.metadata = metadata
        self._check_session()
        self._config = metadata.config
        self._masks = None
        if metadata.graph == "unet":
            self._masks = _load_masks(model_dir / metadata.masks_file, metadata)
        self.max_batch = self._max_batch(max_batch, memory_mb)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        *,
        threads: int | None = None,
        max_batch: int | None = None,
        memory_mb: int = DEFAULT_MEMORY_MB,
        providers: Sequence[str] | None = None,
        openvino: OpenVinoSettings | None = None,
        verify: bool = True,
    ) -> "Runner":
        """Opens a model and the metadata beside it.

        Args:
            path: `.tflite`, `.onnx` or `.engine`/`.plan` file.
            threads: CPU threads of LiteRT / ONNX Runtime (None: their default).
            max_batch, memory_mb: see the class.
            providers: ONNX Runtime execution providers (None: all available).
            openvino: run an `.onnx` on OpenVINO instead, with these `edge.openvino.OpenVinoSettings`.
            verify: check the model's sha256 against its metadata.

        Raises:
            MetadataError: the metadata is missing or does not match the model.
            ValueError: unknown extension, or a model that is not what its metadata says.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: model file not found")
        metadata = read_metadata(path, verify=verify)
        if EXTENSIONS.get(path.suffix.lower()) != metadata.format:
            raise InputError(f"{path}: the metadata describes a {metadata.format} model, not a {path.suffix} file")
        session = open_session(path, threads, providers, openvino)
        return cls(session, metadata, path.parent, max_batch=max_batch, memory_mb=memory_mb)

    def _check_session(self) -> None:
        meta, session = self.metadata, self.session
        if tuple(session.input_shape[1:]) != tuple(meta.input_shape[1:]) or session.input_dtype != meta.input_dtype:
            raise InputError(
                f"{meta.model_file}: the model takes {session.input_dtype} {list(session.input_shape)}, "
                f"its metadata says {meta.input_dtype} {list(meta.input_shape)}"
            )
        missing = set(meta.output_names) - set(session.output_names)
        if missing:
            raise InputError(f"{meta.model_file}: outputs {sorted(missing)} named in the metadata are not in the model")

    def _max_batch(self, requested, memory_mb) -> int:
        fixed = self.session.input_shape[0]
        if fixed is not None:
            return fixed  # a fixed-batch model is always fed exactly its batch
        per_input = activation_bytes_per_input(self.metadata) * getattr(self.session, "activation_memory_factor", 1)
        if self.metadata.graph == "detector":
            per_input *= self.copies_per_image
        limit = requested or max(1, int(memory_mb) * 2**20 // per_input)
        engine_max = getattr(self.session, "max_batch", None)
        return min(limit, engine_max) if engine_max else limit

    # ------------------------------------------------------------------
    # Properties from the metadata

    @property
    def image_size(self) -> tuple[int, int]:
        return self.metadata.image_size

    @property
    def channels(self) -> int:
        return self.metadata.channels

    @property
    def input_dtype(self) -> str:
        return self.metadata.input_dtype

    @property
    def thresholds(self) -> dict | None:
        return self.metadata.thresholds

    @property
    def copies_per_image(self) -> int:
        """Network inputs per image: n x |K| masked copies (1 for the auto-encoder baseline)."""
        return len(self.metadata.ks) * self.metadata.n if self._config.get("inpainting", True) else 1

    # ------------------------------------------------------------------
    # Images in, maps out

    def preprocess(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Images of any size (`(H, W)` or `(H, W, C)`, uint8/uint16/float) -> the model's input batch."""
        return to_model_input(images, self.image_size, self.channels, self.input_dtype)

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images = self._as_model_input(images)
        if len(images) == 0:
            return np.zeros((0, *self.image_size), np.float32), np.zeros((0,), np.float32)
        if self.metadata.graph == "detector":
            return self._run_detector(images)
        return self._run_unet(images)

    def _as_model_input(self, images) -> np.ndarray:
        images = np.asarray(images)
        expected = (*self.image_size, self.channels)
        if images.ndim != 4 or images.shape[1:] != expected:
            raise ValueError(
                f"expected images (B, {', '.join(map(str, expected))}), got {images.shape}; use runner.preprocess(images)"
            )
        if self.input_dtype == "uint8" and images.dtype != np.uint8:
            return np.round(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)
        if self.input_dtype == "float32" and images.dtype == np.uint8:
            return images.astype(np.float32) / 255.0
        return np.ascontiguousarray(images, dtype=self.input_dtype)

    def _run_network(self, inputs: np.ndarray) -> list[dict[str, np.ndarray]]:
        """Feeds `inputs` in chunks of `max_batch` (padding a fixed-batch model's last chunk)."""
        fixed = self.session.input_shape[0]
        results = []
        for start in range(0, len(inputs), self.max_batch):
            chunk = inputs[start : start + self.max_batch]
            real = len(chunk)
            if fixed is not None and real < fixed:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], fixed - real, axis=0)])
            outputs = self.session.run(np.ascontiguousarray(chunk))
            results.append({name: value[:real] for name, value in outputs.items()})
        return results

    def _run_detector(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        maps_name, scores_name = self.metadata.output_names
        results = self._run_network(images)
        maps = np.concatenate([r[maps_name] for r in results]).astype(np.float32)
        scores = np.concatenate([r[scores_name] for r in results]).astype(np.float32)
        return maps, scores

    def _run_unet(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Algorithm 3 around the bare U-Net: masked copies, Eq. 2, then Eq. 3-10 in numpy."""
        (output_name,) = self.metadata.output_names[:1]
        config = self._config
        images_per_group = max(1, self.max_batch // self.copies_per_image)
        maps, scores = [], []
        for start in range(0, len(images), images_per_group):
            group = images[start : start + images_per_group]
            if config.get("inpainting", True):
                results = self._run_network(masked_copies(group, self._masks))
                reconstructions = assemble(np.concatenate([r[output_name] for r in results]), self._masks)  # Eq. 2
            else:  # auto-encoder baseline: one plain reconstruction serves every k
                results = self._run_network(group)
                plain = np.concatenate([r[output_name] for r in results]).astype(np.float32)
                reconstructions = np.broadcast_to(plain[None], (len(self.metadata.ks), *plain.shape))
            unit = group.astype(np.float32) / 255.0 if group.dtype == np.uint8 else group
            group_maps, group_scores = scoring.anomaly_map(
                unit,
                reconstructions,
                smoothing=int(config.get("smoothing", 21)),
                scales=int(config.get("msgms_scales", 4)),
                c=float(config.get("gms_c", scoring.GMS_C)),
                score_function=config.get("score_function", "msgms"),
            )
            maps.append(group_maps)
            scores.append(group_scores)
        return np.concatenate(maps), np.concatenate(scores)

    # ------------------------------------------------------------------
    # Verdicts

    def _threshold(self, key: str) -> float:
        if not self.thresholds or self.thresholds.get(key) is None:
            raise InputError(
                f"{self.metadata.model_file}: no {key} threshold in its metadata; "
                "calibrate the run before exporting (riad-tf evaluate)"
            )
        return float(self.thresholds[key])

    def verdicts(self, scores: np.ndarray, maps: np.ndarray | None = None) -> np.ndarray:
        """True where an image is anomalous (`edge.verdicts.is_anomalous`).

        Pass the maps when the calibrated `min_region_area` is above 1.
        """
        self._threshold("image")
        maps = [None] * len(scores) if maps is None else maps
        return np.array([is_anomalous(s, m, self.thresholds) for s, m in zip(np.asarray(scores), maps)], bool)

    def anomalous_pixels(self, maps: np.ndarray) -> np.ndarray:
        """True where a pixel lies in a region: map value > the calibrated region threshold."""
        return np.asarray(maps) > self._threshold("region")


def _load_masks(path: Path, metadata: ModelMetadata) -> np.ndarray:
    """A bare U-Net's inference masks, checked against its config (`edge.inpaint.check_masks`).

    Raises:
        MetadataError: one line naming the file: unreadable, not one plain
            array (pickled objects are never loaded), or not the partitions.
    """
    try:
        masks = np.load(path, allow_pickle=False)
        if not isinstance(masks, np.ndarray):
            raise ValueError("not a single .npy array")
        return check_masks(masks, metadata.ks, metadata.n, metadata.image_size, path.name)
    except (OSError, ValueError, EOFError) as err:
        raise MetadataError(f"{path}: not the model's inference masks: {one_line(err)}") from None
