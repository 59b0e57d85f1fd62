"""Inspecting image files of any size: one record each, never a silent distortion, never one file stopping the rest.

`inspect_files` is what `riad-tf predict` (with the Keras detector) and
`riad-edge infer` (with any runtime) both run:

- Each file is read on its own. A file that cannot be read, holds NaN or
  infinite values, or has the wrong size gets an error record
  (`edge.predictions.error_record`), and the rest are still scored.
- Size: a model trained at a scale (`RiadConfig.scale`, recorded as
  `preprocessing["scale"]` in the run and in every export's metadata) scores
  every image in tiles: the image is resized by the scale, cut into
  model-size tiles `tile_stride` of a tile apart (the tiling of
  `edge.stream`), and the tile maps are stitched (`edge.tiling.tiled_map`).
  The image's score is the stitched map's maximum (Eq. 10). A model trained
  on whole images squeezed to its input (no scale) resizes an input of the
  training images' native size the same way; any other size is refused,
  naming both sizes, unless the caller asks: `"resize"` squeezes it anyway;
  `"tile"` tiles it at the scale training squeezed its images by.
- Verdicts and regions (`edge.verdicts`): regions are the 8-connected parts
  of the map above the region threshold with at least `min_region_area`
  pixels, reported as boxes in the input image's pixel coordinates.

Example:

>>> records = inspect_files(paths, runner, runner.image_size, runner.channels,   # doctest: +SKIP
...                         runner.thresholds, preprocessing=runner.metadata.preprocessing, mode="tile")
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from edge.images import load_image, to_model_input
from edge.predictions import MapNames, error_record, prediction_record
from edge.regions import connected_regions
from edge.tiling import ScoreFunction, scaled_size, tile_stride, tiled_map

log = logging.getLogger(__name__)

SIZE_MODES = ("strict", "resize", "tile")
RESIZE = "bilinear (Pillow), colour to grey before, grey to colour after"


def preprocessing_record(
    native_sizes: Sequence[tuple[int, int]], scale: float | None = None, stride: float = 0.5
) -> dict:
    """What a run and its exports record about their inputs: the training images' native size and scale.

    Args:
        native_sizes: (height, width) of every training image before resizing.
        scale: `RiadConfig.scale`: None (whole images squeezed) or the scale of tiled training.
        stride: `RiadConfig.tile_stride`, the step between tiles as a share of the tile.

    Returns:
        `{"native_size": [h, w] (the most common), "mixed_sizes": bool, "size_range": [[h, w] smallest,
        [h, w] largest], "aspect_range": [w/h smallest, largest], "resize": ..., "scale": scale or None,
        "tile_stride": stride}`.

    Example:

    >>> preprocessing_record([(512, 512), (512, 512), (480, 640)])["native_size"]
    [512, 512]
    """
    sizes, counts = np.unique(np.asarray(native_sizes, np.int64).reshape(-1, 2), axis=0, return_counts=True)
    common = sizes[int(np.argmax(counts))]
    aspects = sizes[:, 1] / sizes[:, 0]
    return {
        "native_size": [int(common[0]), int(common[1])],
        "mixed_sizes": len(sizes) > 1,
        "size_range": [sizes.min(axis=0).tolist(), sizes.max(axis=0).tolist()],
        "aspect_range": [round(float(aspects.min()), 4), round(float(aspects.max()), 4)],
        "resize": RESIZE,
        "scale": scale,
        "tile_stride": stride,
    }


def preprocessing_problem(preprocessing) -> str | None:
    """What is wrong with a preprocessing record (`preprocessing.json`, the metadata's), or None.

    Example:

    >>> preprocessing_problem(preprocessing_record([(200, 300)], scale=1.0)) is None
    True
    >>> preprocessing_problem({"native_size": 5})
    'native_size must be [height, width] of positive integers, got 5'
    """
    if not isinstance(preprocessing, dict):
        return f"must be a JSON object, got {type(preprocessing).__name__}"
    size = preprocessing.get("native_size")
    if size is not None and not (
        isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)
    ):
        return f"native_size must be [height, width] of positive integers, got {size!r}"
    scale, stride = preprocessing.get("scale"), preprocessing.get("tile_stride", 0.5)
    if scale is not None and not (_number(scale) and 0 < scale <= 16):
        return f"scale must be null or a number in (0, 16], got {scale!r}"
    if not (_number(stride) and 0 < stride <= 1):
        return f"tile_stride must be a share of the tile in (0, 1], got {stride!r}"
    if scale is None and size is None:
        return "has neither native_size nor scale"
    aspects = preprocessing.get("aspect_range")
    if aspects is not None and not (isinstance(aspects, list) and len(aspects) == 2 and all(map(_number, aspects))):
        return f"aspect_range must be [smallest, largest] width/height, got {aspects!r}"
    return None


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def size_problem(shape: tuple[int, int], preprocessing: dict | None) -> str | None:
    """Why an input of `shape` cannot simply be resized to the model, or None when it can.

    Training images of one size: only that size. Of mixed sizes (all squeezed to the model's size
    in training): any size whose width/height lies within theirs (5 % slack).

    Example:

    >>> record = preprocessing_record([(200, 300), (240, 330)])
    >>> size_problem((400, 620), record) is None, size_problem((220, 600), record) is None
    (True, False)
    """
    native_size = (preprocessing or {}).get("native_size")
    if trained_at_scale(preprocessing):
        return None  # every size is tiled
    if native_size is None or tuple(shape) == tuple(native_size):
        return None
    if preprocessing.get("mixed_sizes") and "aspect_range" in preprocessing:
        low, high = preprocessing["aspect_range"]
        if 0.95 * low <= shape[1] / shape[0] <= 1.05 * high:
            return None  # training squeezed images of such shapes to the model's size alike
        return (
            f"the image is {shape[0]} x {shape[1]} px (height x width; width/height {shape[1] / shape[0]:.2f}) but the model was "
            f"trained on images with width/height {low:.2f} to {high:.2f}; pass --tile to inspect it in tiles at "
            "the training scale, or --resize to squeeze it"
        )
    return (
        f"the image is {shape[0]} x {shape[1]} px (height x width) but the model was trained on "
        f"{native_size[0]} x {native_size[1]} images; pass --tile to inspect it in tiles at the training scale, or --resize to squeeze it"
    )


def trained_at_scale(preprocessing: dict | None) -> bool:
    """Whether the model was trained on crops at a scale (every input is then tiled)."""
    return bool(preprocessing) and preprocessing.get("scale") is not None


def tiling_of(preprocessing: dict, model_size: tuple[int, int]) -> tuple[tuple[float, float], tuple[int, int]]:
    """((row, column) scale, stride) at which inputs are tiled: the recorded scale, or the squeeze of training.

    Example:

    >>> tiling_of({"native_size": [256, 512], "scale": None}, (128, 128))
    ((0.5, 0.25), (64, 64))
    >>> tiling_of({"native_size": [256, 512], "scale": 1.0, "tile_stride": 1.0}, (128, 128))
    ((1.0, 1.0), (128, 128))
    """
    share = float(preprocessing.get("tile_stride", 0.5))
    if trained_at_scale(preprocessing):
        scale = float(preprocessing["scale"])
        return (scale, scale), tile_stride(model_size, share)
    native = preprocessing["native_size"]
    return (model_size[0] / native[0], model_size[1] / native[1]), tile_stride(model_size, share)


def inspect_files(paths: Sequence[Path], *args, **kwargs) -> Iterator[dict]:
    """Yields one record per image file, in order: `inspect` of the files (same arguments after `paths`)."""
    return inspect([(Path(p), lambda p=p: load_image(p)) for p in paths], *args, **kwargs)


def inspect(
    items: Sequence[tuple[object, Callable[[], np.ndarray]]],
    score: ScoreFunction,
    model_size: tuple[int, int],
    channels: int,
    thresholds: dict | None,
    preprocessing: dict | None = None,
    mode: str = "strict",
    maps: MapNames | None = None,
    batch_size: int = 8,
    on_map: Callable[[dict, np.ndarray], None] | None = None,
) -> Iterator[dict]:
    """Yields one record per image (`edge.predictions`), in order.

    Args:
        items: (name, load) pairs: the record's `path`, and a function that
            decodes the image (`edge.images.load_image`) or raises `ValueError`
            / `OSError`, which gives the image an error record.
        score: float32 `(B, H, W, C)` in [0, 1] at `model_size` -> `(maps, scores)`.
        model_size: the model's (height, width).
        channels: the model's channels.
        thresholds: the thresholds in force (`edge.predictions.with_overrides`) or None.
        preprocessing: the run's or the export's `preprocessing_record`; None
            when unknown: every input is resized, as before.
        mode: "strict", "resize" or "tile" for inputs of another size (module docstring).
        maps: where to write the map files, or None.
        batch_size: images (or tiles) per call of `score`.
        on_map: called with each scored image's record and its map (stitched, when tiled).
    """
    if mode not in SIZE_MODES:
        raise ValueError(f"mode must be one of {', '.join(SIZE_MODES)}, got {mode!r}")
    pending: list[tuple[object, np.ndarray, tuple[int, int]]] = []  # (name, model input, native shape)

    def flush() -> Iterator[dict]:
        if pending:
            batch = np.stack([image for _, image, _ in pending])
            batch_maps, batch_scores = score(batch)
            for (path, _, shape), anomaly_map, value in zip(pending, batch_maps, batch_scores):
                yield _with_map(
                    _record(path, float(value), np.asarray(anomaly_map), thresholds, maps, shape), anomaly_map, on_map
                )
            pending.clear()

    for path, load in items:
        image, problem, other_size = _loaded(path, load, preprocessing)
        tiled = trained_at_scale(preprocessing) and mode != "resize"
        if problem or tiled or (other_size and mode != "resize"):
            yield from flush()  # records stay in input order
            if problem or (mode == "strict" and not tiled):
                yield error_record(path, problem or f"{path}: {other_size}")
            else:
                yield _tiled(
                    path, image, score, model_size, channels, preprocessing, thresholds, maps, batch_size, on_map
                )
            continue
        pending.append((path, to_model_input([image], model_size, channels, "float32")[0], image.shape[:2]))
        if len(pending) >= batch_size:
            yield from flush()
    yield from flush()


def _loaded(path, load, preprocessing) -> tuple[np.ndarray | None, str | None, str | None]:
    """(the decoded image, why it cannot be scored, why it cannot simply be resized); decoding errors are problems."""
    try:
        image = load()
        return (image, *_problems(path, image, preprocessing))
    except (ValueError, OSError) as err:
        return None, str(err), None


def _problems(path, image: np.ndarray, preprocessing) -> tuple[str | None, str | None]:
    """(why the image cannot be scored at all, why it cannot simply be resized): each None when there is none."""
    if not np.all(np.isfinite(image)):
        return f"{path}: the image holds NaN or infinite values", None
    return None, size_problem(image.shape[:2], preprocessing)


def _with_map(record: dict, anomaly_map, on_map) -> dict:
    if on_map is not None and "error" not in record:
        on_map(record, np.asarray(anomaly_map))
    return record


def _tiled(path, image, score, model_size, channels, preprocessing, thresholds, maps, batch_size, on_map) -> dict:
    """One image at the model's scale, scored tile by tile, maps stitched (`edge.tiling.tiled_map`)."""
    scale, stride = tiling_of(preprocessing, model_size)
    size = scaled_size(image.shape[:2], scale)
    scaled = to_model_input([image], size, channels, "float32")[0]
    tiled = tiled_map(scaled, score, model_size, stride, batch_size, progress=tile_progress(path))
    stitched = tiled.map
    record = _with_map(
        _record(path, float(stitched.max()), stitched, thresholds, maps, image.shape[:2]), stitched, on_map
    )
    if "error" not in record:
        to_image = (image.shape[0] / size[0], image.shape[1] / size[1])
        record["tiles"] = [
            {"origin": [round(r * to_image[0]), round(c * to_image[1])], "score": round(float(s), 6)}
            for (r, c), s in zip(tiled.origins, tiled.tile_scores)
        ]
    return record


def tile_progress(path, every_s: float = 5.0, emit: Callable[[str], None] = log.info) -> Callable[[int, int], None]:
    """A `tiled_map` progress callback: a line to `emit` (the log) every `every_s` seconds, with the time left.

    A large image in small tiles takes minutes on a small CPU; silence would look like a hang.
    """
    started = time.monotonic()
    last = [started]

    def report(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= every_s and done < total:
            last[0] = now
            left = (now - started) / done * (total - done)
            emit(f"{path}: {done} of {total} tiles scored, about {left:.0f} s left")

    return report


def _record(path, value: float, anomaly_map, thresholds, maps, shape) -> dict:
    map_file, map_float = maps.write(path, anomaly_map) if maps is not None and np.isfinite(value) else (None, None)
    record = prediction_record(path, value, thresholds, map_file, anomaly_map, map_float)
    if "error" in record or not thresholds or thresholds.get("region") is None:
        return record
    area = int(thresholds.get("min_region_area", 1) or 1)
    regions, _ = connected_regions(np.asarray(anomaly_map, np.float32), float(thresholds["region"]), min_pixels=area)
    to_image = (shape[0] / anomaly_map.shape[0], shape[1] / anomaly_map.shape[1])
    record["regions"] = [
        {
            "rows": [int(r.top * to_image[0]), int((r.bottom + 1) * to_image[0]) - 1],
            "columns": [int(r.left * to_image[1]), int((r.right + 1) * to_image[1]) - 1],
            "peak": round(r.peak, 6),
        }
        for r in regions
    ]
    return record
