"""The JSON file beside every exported model: what the device needs to run it.

`riad-tf export` writes `MODEL.json` beside each `MODEL` (`riad_fp32.tflite`
gets `riad_fp32.tflite.json`), and `riad-edge` reads it back: the input size,
channels and dtype for preprocessing, the RIAD settings (K, n, seed, smoothing:
the training `RiadConfig.to_dict()`, so nothing is specified twice), the
calibrated thresholds for verdicts, and a sha256 of the model file so a model
and a metadata file that do not belong together are caught.

The exported `.onnx` and `.tflite` files also carry a copy inside
(`edge.embedded`), so a model file copied alone still runs; a JSON beside it
must agree with that copy.

Schema `riad-edge/1` (keys of the JSON object):

    schema            "riad-edge/1"
    riad_tf_version   version of riad-tf that exported the model
    format            "tflite" | "onnx" | "tensorrt"
    graph             "detector": images -> (maps, scores), the whole RIAD inference;
                      "unet": the bare U-Net, masked copies -> reconstructions
                      (the edge runner masks, assembles and scores in numpy)
    precision         "fp32" | "fp16" | "int8" | "int16x8" (TFLite bare U-Net: int16 activations, int8 weights)
    quantization      one line saying what was quantized and what stayed float
    model_file        the model's file name (beside this JSON)
    sha256            sha256 of the model file ("" when read from inside the model)
    input_name        name of the input tensor
    input_shape       [batch or null (dynamic), height, width, channels]
    input_dtype       "float32" (values in [0, 1]) | "uint8" (0-255, divided in-graph)
    output_names      ["maps", "scores"] or ["reconstruction"]
    config            RiadConfig.to_dict() of the trained model (ks, n, seed, smoothing, ...)
    thresholds        {"image": t, "region": t, "min_region_area": a, "segmentation": t,
                      "target_fpr": f, "supported_fpr": b, "num_images": n, ...}
                      (`edge.verdicts`) or null before calibration
    masks_file        bare U-Net only: .npy of the inference masks (|K|, n, H, W, 1) uint8
    masks_sha256      bare U-Net only: its sha256
    unet_scope        name fragment of the U-Net's nodes in the graph (TensorRT keeps
                      the other layers in float32), or null
    verification      {"max_abs_diff_maps": .., "max_abs_diff_scores": .., "images": N}
                      measured at export against the Keras detector, or null; fp16 and
                      int8 models add "accuracy": the check on real images
                      (`riad_tf.accuracy_check.accuracy_record`, with "passed")
    preprocessing     {"native_size": [h, w], ...}: the training images' size before
                      the resize to the model's (`edge.inspection`), or null
    notes             free text

Example:

>>> meta = ModelMetadata.from_dict(json.loads(Path("riad_fp32.tflite.json").read_text()))  # doctest: +SKIP
>>> meta.image_size, meta.ks                                                               # doctest: +SKIP
((256, 256), (2, 4, 8, 16))
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

from edge.embedded import EMBEDDED_FORMATS, comparable, embed, embedded_payload, read_embedded
from edge.errors import InputError, one_line
from edge.files import atomic_write_bytes
from edge.inspection import preprocessing_problem
from edge.verdicts import thresholds_problem

SCHEMA = "riad-edge/1"
FORMATS = ("tflite", "onnx", "tensorrt")
GRAPHS = ("detector", "unet")
PRECISIONS = ("fp32", "fp16", "int8", "int16x8")
INPUT_DTYPES = ("float32", "uint8")
# Model file extension -> format.
EXTENSIONS = {".tflite": "tflite", ".onnx": "onnx", ".engine": "tensorrt", ".plan": "tensorrt"}


def scaled_widths(widths, multiplier: float = 1.0) -> tuple[int, ...]:
    """The U-Net widths built from a config: each width x `multiplier`, rounded, at least 1.

    Example:

    >>> scaled_widths((8, 16, 32, 64, 64), 0.25)
    (2, 4, 8, 16, 16)
    """
    return tuple(max(1, round(w * multiplier)) for w in widths)


class MetadataError(InputError):
    """A missing, unreadable or inconsistent metadata file; the message names the file."""


@dataclasses.dataclass(frozen=True)
class ModelMetadata:
    """The contents of `MODEL.json` (schema `riad-edge/1`, see the module docstring)."""

    format: str
    graph: str
    precision: str
    quantization: str
    model_file: str
    sha256: str
    input_name: str
    input_shape: tuple
    input_dtype: str
    output_names: tuple
    config: dict
    thresholds: dict | None = None
    masks_file: str | None = None
    masks_sha256: str | None = None
    unet_scope: str | None = None
    verification: dict | None = None
    preprocessing: dict | None = None
    riad_tf_version: str = "unknown"
    notes: str = ""
    schema: str = SCHEMA

    def __post_init__(self):
        object.__setattr__(self, "input_shape", tuple(None if d is None else int(d) for d in self.input_shape))
        object.__setattr__(self, "output_names", tuple(self.output_names))
        self._check()

    def _check(self) -> None:
        config = self.config if isinstance(self.config, dict) else {}
        checks = (
            (isinstance(self.config, dict), "config is not a JSON object"),
            (self.schema == SCHEMA, f"schema {self.schema!r} is not {SCHEMA!r}"),
            (self.format in FORMATS, f"format {self.format!r} is not one of {FORMATS}"),
            (self.graph in GRAPHS, f"graph {self.graph!r} is not one of {GRAPHS}"),
            (self.precision in PRECISIONS, f"precision {self.precision!r} is not one of {PRECISIONS}"),
            (self.input_dtype in INPUT_DTYPES, f"input_dtype {self.input_dtype!r} is not one of {INPUT_DTYPES}"),
            (len(self.input_shape) == 4, f"input_shape {list(self.input_shape)} is not [batch, H, W, C]"),
            (self.graph != "unet" or bool(self.masks_file), "a bare U-Net needs masks_file"),
            (
                self.masks_file is None or _plain_file_name(self.masks_file),
                f"masks_file {self.masks_file!r} must be a file name beside the model, not a path",
            ),
        )
        for ok, problem in checks:
            if not ok:
                raise MetadataError(problem)
        for key in ("image_size", "channels", "ks", "n", "widths"):
            if key not in config:
                raise MetadataError(f"config has no {key!r}")
        _check_config(config, self.input_shape)
        problem = None if self.thresholds is None else thresholds_problem(self.thresholds)
        if problem:
            raise MetadataError(f"thresholds {problem}")
        problem = None if self.preprocessing is None else preprocessing_problem(self.preprocessing)
        if problem:
            raise MetadataError(f"preprocessing {problem}")

    # Values the runner needs, read from the stored training config.
    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(int(v) for v in self.config["image_size"])

    @property
    def channels(self) -> int:
        return int(self.config["channels"])

    @property
    def ks(self) -> tuple[int, ...]:
        return tuple(int(k) for k in self.config["ks"])

    @property
    def n(self) -> int:
        return int(self.config["n"])

    @property
    def unet_widths(self) -> tuple[int, ...]:
        """The widths of the U-Net in the model file (`RiadConfig.unet_widths`)."""
        return scaled_widths(self.config["widths"], self.config.get("width_multiplier", 1.0))

    @property
    def batch(self) -> int | None:
        """The model's fixed batch (images, or masked copies for a bare U-Net); None when dynamic."""
        return self.input_shape[0]

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["input_shape"] = list(self.input_shape)
        out["output_names"] = list(self.output_names)
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "ModelMetadata":
        known = {f.name for f in dataclasses.fields(cls)}
        # Keys a later schema may add are ignored; missing required keys raise TypeError.
        return cls(**{k: v for k, v in values.items() if k in known})


def metadata_path(model_path: str | os.PathLike) -> Path:
    """`riad.onnx` -> `riad.onnx.json`."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.name + ".json")


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_metadata(model_path: str | os.PathLike, metadata: ModelMetadata) -> Path:
    """Writes `MODEL.json` beside `model_path` atomically; returns its path."""
    path = metadata_path(model_path)
    text = json.dumps(metadata.to_dict(), indent=2) + "\n"
    return atomic_write_bytes(path, text.encode())


def update_metadata(model_path: str | os.PathLike, metadata: ModelMetadata) -> Path:
    """Puts new metadata into an `.onnx` or `.tflite` model and beside it, so both copies agree (an engine: beside it).

    For a recalibration on the device (new thresholds), without TensorFlow or
    the ONNX library. The model file is rewritten atomically (its weights
    unchanged), then the JSON with the new sha256.

    Returns:
        The JSON's path.
    """
    model_path = Path(model_path)
    if metadata.format in EMBEDDED_FORMATS:
        model = embed(model_path.read_bytes(), metadata.format, embedded_payload(metadata))
        atomic_write_bytes(model_path, model)
    return write_metadata(model_path, dataclasses.replace(metadata, sha256=file_sha256(model_path)))


def _plain_file_name(name) -> bool:
    return isinstance(name, str) and name not in ("", ".", "..") and Path(name).name == name and "\\" not in name


def _positive_ints(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, int) and v > 0 for v in value)


def _check_config(config: dict, input_shape: tuple) -> None:
    """The training config's values the runner relies on, checked against the model's input."""
    rules = (
        ("ks", _positive_ints(config["ks"]), "a non-empty list of positive integers"),
        ("widths", _positive_ints(config["widths"]), "a list of positive integers"),
        ("n", isinstance(config["n"], int) and config["n"] >= 1, "a positive integer"),
        ("channels", config["channels"] in (1, 3), "1 or 3"),
        ("image_size", _positive_ints(config["image_size"]) and len(config["image_size"]) == 2, "[height, width]"),
    )
    for key, ok, rule in rules:
        if not ok:
            raise MetadataError(f"config {key} must be {rule}, got {config[key]!r}")
    if list(input_shape[1:3]) != list(config["image_size"]) or input_shape[3] != config["channels"]:
        raise MetadataError(
            f"input_shape {list(input_shape)} disagrees with the config's image_size {config['image_size']} "
            f"and channels {config['channels']}"
        )


def read_metadata(model_path: str | os.PathLike, verify: bool = True) -> ModelMetadata:
    """Reads a model's metadata: `MODEL.json` beside it, or the copy inside the model file.

    With both, they must agree (`edge.embedded.comparable`: everything but the
    file's name, sha256 and verification). With only the copy inside (a model
    file copied alone), `sha256` is "": there is nothing to check it against,
    and nothing to mismatch.

    Args:
        model_path: the model (`.tflite`, `.onnx`, `.engine`).
        verify: check the model's sha256 (and the masks file's, for a bare U-Net)
            against the metadata.

    Returns:
        The `ModelMetadata`.

    Raises:
        MetadataError: one line naming the file: missing, not JSON, wrong
            schema, a model file that does not match its sha256, or a JSON
            that disagrees with the copy inside the model.
    """
    model_path = Path(model_path)
    path = metadata_path(model_path)
    try:
        embedded = read_embedded(model_path) if model_path.is_file() else None
    except ValueError as err:
        raise MetadataError(f"{model_path}: the metadata inside is not riad-edge metadata: {one_line(err)}") from None
    if not path.is_file():
        if embedded is None:
            raise MetadataError(
                f"{path}: metadata not found, and {model_path.name} has none inside; "
                "copy it with the model (riad-tf export writes it)"
            )
        metadata = _from_values({**embedded, "model_file": model_path.name, "sha256": ""}, f"{model_path} (inside)")
    else:
        try:
            values = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise MetadataError(f"{path}: not riad-edge metadata: {one_line(err)}") from None
        metadata = _from_values(values, path)
        if embedded is not None:
            _check_agreement(values, embedded, path, model_path)
        if verify:
            _verify_file(model_path, metadata.sha256, path)
    if verify and metadata.masks_file:
        _verify_file(model_path.parent / metadata.masks_file, metadata.masks_sha256, path)
    return metadata


def _from_values(values, where) -> ModelMetadata:
    try:
        if not isinstance(values, dict):
            raise MetadataError(f"a JSON object was expected, found {type(values).__name__}")
        return ModelMetadata.from_dict(values)
    except (ValueError, TypeError) as err:
        raise MetadataError(f"{where}: not riad-edge metadata: {one_line(err)}") from None


def _check_agreement(beside: dict, inside: dict, path: Path, model_path: Path) -> None:
    beside, inside = comparable(beside), comparable(inside)
    differing = sorted(k for k in beside.keys() | inside.keys() if beside.get(k) != inside.get(k))
    if differing:
        raise MetadataError(
            f"{path}: disagrees with the metadata inside {model_path.name} on {', '.join(differing)}; "
            "re-export the model, or delete the JSON to use the copy inside"
        )


def _verify_file(path: Path, expected: str | None, meta_path: Path) -> None:
    if not path.is_file():
        raise MetadataError(f"{path}: file not found (named in {meta_path.name})")
    if not expected:
        raise MetadataError(
            f"{meta_path}: no sha256 for {path.name}, so its integrity cannot be checked; re-export it, "
            "or pass --no-integrity-check to run it anyway"
        )
    if file_sha256(path) != expected:
        raise MetadataError(
            f"{path}: sha256 differs from {meta_path.name}; the model and its metadata do not belong together"
        )
