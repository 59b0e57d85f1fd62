"""The jobs `riad-tf` runs, end to end: train and calibrate, evaluate, predict, the demo.

Image data sets are handled here; video data sets by the jobs of the same
names in `riad_tf.video.jobs`. `load_data` tells the two apart from a data
spec (`riad_tf.data.data_spec`), and `train_job` / `evaluate_job` hand the
split to the matching job. The CLI only parses options and calls these;
scripts and notebooks can call them too.

Example:

>>> spec = data_spec("data/bottle")                               # doctest: +SKIP
>>> train_job(RiadConfig(epochs=10), spec, "runs/bottle")         # doctest: +SKIP
>>> evaluate_job("runs/bottle")["image_auroc"]                    # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from edge.errors import InputError
from edge.files import atomic_write_text, check_writable
from edge.inspection import inspect_files, preprocessing_record
from edge.predictions import MapNames, error_record, warn_if_uncalibrated, with_overrides
from edge.verdicts import is_anomalous
from riad_tf import metrics
from riad_tf import run as runs
from riad_tf.config import RiadConfig
from riad_tf.crops import RandomCrops, grid_tiles, read_all_scaled
from riad_tf.data import DataError, DataSplit, Sample, data_spec, split_good
from riad_tf.image_files import has_pixel_masks, load_arrays, load_split, read_mask
from riad_tf.markdown import cell, markdown_table
from riad_tf.masks import PARTITIONS
from riad_tf.thresholds import calibrate, hot_spot, hot_spot_warning

log = logging.getLogger(__name__)

# A reduced model at 64 px: the demo finishes in minutes on two CPU cores. Of its 100 good
# training images, 10 choose the kept epoch and 20 calibrate: enough for its 5 % target.
DEMO_CONFIG = RiadConfig(
    image_size=(64, 64),
    widths=(16, 32, 64, 64, 64),
    ks=(2, 4, 8, 16),
    smoothing=7,
    epochs=40,
    batch_size=8,
    learning_rate=1e-3,
    val_fraction=0.1,
    calibration_fraction=0.2,
    target_fpr=0.05,
)
DEMO_IMAGES = {"n_train": 100, "n_test_good": 15, "n_test_defect": 15}

__all__ = [
    "DEMO_CONFIG",
    "calibrate_job",
    "calibrate_images",
    "data_spec",
    "evaluate_job",
    "evaluate_images",
    "load_data",
    "predict_images",
    "recalibration_summary",
    "demo_job",
    "train_job",
    "train_on_images",
]


# ----------------------------------------------------------------------------
# Data, and the image / video dispatch


def load_data(spec: dict, skip_unreadable: bool = False):
    """The checked split of a data spec: a `DataSplit` for images, a `VideoSplit` for video layouts.

    Says on stderr what was found (and how many unreadable images were skipped).
    Unreadable video frames always stop: skipping one would shift the labels.

    Returns:
        (the split, the skipped images as (path, reason) pairs).
    """
    from riad_tf.video import load_video_dataset, resolve_video_layout, validate_videos

    video_layout = resolve_video_layout(spec["path"], spec["layout"])
    skipped = []
    if video_layout:
        split = validate_videos(load_video_dataset(spec["path"], video_layout))
    else:
        split, skipped = load_split(spec, skip_unreadable=skip_unreadable)
        if skipped:
            log.warning(f"skipped {len(skipped)} unreadable image(s), first: {skipped[0][0]}: {skipped[0][1]}")
    log.info(f"data: {split.describe()}")
    return split, skipped


def _is_video(split) -> bool:
    from riad_tf.video import VideoSplit

    return isinstance(split, VideoSplit)


def train_job(
    config: RiadConfig,
    spec: dict | None,
    out_dir,
    progress: bool = True,
    skip_unreadable: bool = False,
    strategy=None,
) -> dict | None:
    """`riad-tf train`: trains a run on a data set and calibrates its thresholds.

    Args:
        config: the run's config (its `strategy` says where to train).
        spec: the data set (`data_spec`); None re-uses the one `out_dir` records.
        out_dir: the run directory; re-run to resume.
        progress: show progress bars.
        skip_unreadable: skip unreadable images instead of stopping.
        strategy: the `tf.distribute` strategy, when the caller made it already
            (default: `make_strategy(config.strategy)`, before any TensorFlow op).

    Returns:
        The calibrated thresholds; None on a non-chief worker of a multi-worker job.
    """
    from riad_tf.distribute import is_chief, make_strategy, task
    from riad_tf.video.jobs import train_on_videos

    strategy = strategy or make_strategy(config.strategy)  # multi-worker strategies: before any TensorFlow op
    runs.check_rerun(out_dir, config, spec)  # before anything is written
    spec = spec or runs.load_data_spec(out_dir)
    if spec is None:
        raise InputError(f"{out_dir}: give the data set (--data or --normal); the run does not record one")
    skip_unreadable = skip_unreadable or bool(spec.get("skip_unreadable"))
    chief = is_chief(strategy)  # only the chief writes the run; other workers of a multi-worker job train along
    with runs.writing_run(out_dir, "riad-tf train", runs.estimated_run_bytes(config), writes=chief):
        split, _ = load_data(spec, skip_unreadable)
        if chief:
            runs.save_data_spec(out_dir, {**spec, "skip_unreadable": skip_unreadable})
        train_on = train_on_videos if _is_video(split) else train_on_images
        thresholds = train_on(config, split, out_dir, progress=progress, strategy=strategy)
    if not chief:
        log.info("{} {} finished; the chief writes {}".format(*task(strategy), out_dir))
    return thresholds


def evaluate_job(
    run_dir,
    spec: dict | None = None,
    out_dir=None,
    batch_size: int = 4,
    report: bool = True,
    skip_unreadable: bool = False,
) -> dict:
    """`riad-tf evaluate`: metrics on the test part of a data set (default: the run's own).

    An unreadable image does not stop the evaluation: the rest are scored, the
    image is listed in `OUT/errors.jsonl`, and unless `skip_unreadable` a
    `DataError` naming it is raised once everything is written.

    Returns:
        The metrics, as written to `OUT/metrics.json` (OUT defaults to `RUN/eval`).
    """
    from riad_tf.video.jobs import evaluate_videos

    spec = spec or runs.load_data_spec(run_dir)
    if spec is None:
        raise InputError(f"{run_dir}: give the data set (--data); the run does not record one")
    skip_unreadable = skip_unreadable or bool(spec.get("skip_unreadable"))  # as the run was trained
    split, skipped = load_data(spec, skip_unreadable=True)
    if not split.test:
        raise DataError(f"{spec['path'] or spec['normal'][0]}: no test images in the data set")
    out_dir = Path(out_dir or runs.eval_dir(run_dir))
    check_writable(out_dir)  # before the scoring, not after it
    job = evaluate_videos if _is_video(split) else evaluate_images
    summary = job(run_dir, split.test, out_dir, batch_size=batch_size, report=report)
    errors = "".join(json.dumps(error_record(path, f"{path}: {reason}")) + "\n" for path, reason in skipped)
    atomic_write_text(out_dir / "errors.jsonl", errors)
    if skipped and not skip_unreadable:
        first, reason = skipped[0]
        raise DataError(
            f"{len(skipped)} image(s) could not be read and were left out ({out_dir / 'errors.jsonl'}; first: "
            f"{first}: {reason}); the metrics cover the rest"
        )
    return summary


# ----------------------------------------------------------------------------
# Image jobs


def train_on_images(config: RiadConfig, split: DataSplit, out_dir, progress: bool = True, strategy=None) -> dict | None:
    """Trains on the good training images and calibrates on a held-out share of them.

    Returns:
        The calibrated thresholds (also in `out_dir/thresholds.json`); None on
        a non-chief worker of a multi-worker job.
    """
    from riad_tf.distribute import is_chief, make_strategy
    from riad_tf.train import train_unet

    kept, validation, calibration = split_good(
        split.train, config.val_fraction, config.calibration_fraction, config.seed
    )
    if config.scale is None:
        train_images = load_arrays(kept, config)
        validation_images = load_arrays(validation, config) if validation else None
    else:  # fresh random crops every epoch; the validation images as a fixed grid of tiles
        train_images = RandomCrops(read_all_scaled(kept, config.scale, config.channels), config.image_size, config.seed)
        validation_images = grid_tiles(read_images(validation, config), config.image_size) if validation else None
    strategy = strategy or make_strategy(config.strategy)
    train_unet(config, train_images, out_dir, validation_images, strategy=strategy, progress=progress)
    if not is_chief(strategy):
        return None  # a non-chief worker of a multi-worker job: the chief calibrates and writes the run
    sizes = [_native_size(s.path) for s in split.train]
    runs.save_preprocessing(out_dir, preprocessing_record(sizes, config.scale, config.tile_stride))
    if not calibration:
        log.warning(
            "warning: no calibration images (calibration_fraction 0): thresholds come from the validation images "
            "that chose the kept epoch, whose scores are optimistic; run `riad-tf calibrate` with good images "
            "training never saw"
            if validation
            else "warning: no held-out good images (val_fraction and calibration_fraction 0): thresholds come from "
            "the training images and their false-positive bound does not hold; run `riad-tf calibrate` with good "
            "images training never saw"
        )
    calibration_images = read_images(calibration or validation or kept, config)
    return calibrate_images(out_dir, calibration_images, config.target_fpr, min_region_area=config.min_region_area)


def read_images(samples: Sequence[Sample], config: RiadConfig):
    """Images as the run's model sees them whole: an `(N, H, W, C)` array at `image_size`, or a list at `scale`."""
    if config.scale is None:
        return load_arrays(samples, config)
    return read_all_scaled(samples, config.scale, config.channels)


def score_images(detector, images, batch_size: int = 4) -> tuple[list | np.ndarray, np.ndarray, np.ndarray]:
    """`(maps, scores, tile maps)` of images read by `read_images`: whole, or in tiles at the run's scale.

    A tiled image's map is the stitched map at its scaled size and its score
    the map's maximum (Eq. 10); the tile maps (the maps themselves for whole
    images) are what a fixed hot spot shows in (`riad_tf.thresholds.hot_spot`).
    """
    if detector.config.scale is None:
        maps, scores = detector.score(images, batch_size)
        return maps, scores, maps
    tiled = detector.score_tiled(images, batch_size, progress=True)
    maps = [t.map for t in tiled]
    return maps, np.array([m.max() for m in maps], np.float32), np.concatenate([t.tile_maps for t in tiled])


def _native_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:  # the header only: every file was decoded once by `validate`
        return image.height, image.width


def calibrate_images(
    run_dir, good_images: np.ndarray, target_fpr: float, batch_size: int = 4, min_region_area: int = 1
) -> dict:
    """Thresholds from good images training never saw, saved as `thresholds.json` (`riad_tf.thresholds.calibrate`).

    An image is anomalous when its score (its region score, with
    `min_region_area` > 1) is above thresholds["image"]; regions are drawn
    above thresholds["region"], the same value. When `target_fpr` needs more
    images than given, says so on stderr and records the rate they support.
    """
    from edge.verdicts import support_warning

    if len(good_images) == 0:
        raise InputError(f"{run_dir}: no held-out good images to calibrate thresholds on")
    detector = runs.load_detector(run_dir)
    maps, scores, tile_maps = score_images(detector, good_images, batch_size)
    thresholds = calibrate(scores, maps, target_fpr, min_region_area=min_region_area)
    # The check for a false defect planted in the same place of every image (of every tile).
    thresholds["hot_spot"] = hot_spot(tile_maps, max(detector.config.ks))
    thresholds["partitions"] = PARTITIONS
    if detector.config.scale is not None:
        thresholds.update(line_promise(thresholds["supported_fpr"], [m.shape[0] for m in maps]))
    warnings = [
        support_warning(target_fpr, thresholds["supported_fpr"], thresholds["num_images"]),
        hot_spot_warning(thresholds["hot_spot"], f"the {len(maps)} calibration images"),
    ]
    for warning in filter(None, warnings):
        log.warning(warning)
    runs.save_thresholds(run_dir, thresholds)
    return thresholds


def line_promise(supported_fpr: float, heights: Sequence[int]) -> dict:
    """The false-alarm promise per 1000 lines (at the training scale) of calibration images `heights` lines tall.

    A strip of good product is a run of image-like pieces, each raising a false
    alarm with probability at most `supported_fpr`: so about
    `supported_fpr * 1000 / mean height` false alarms per 1000 lines.

    Example:

    >>> line_promise(0.05, [200, 300])["false_alarms_per_1000_lines"]
    0.2
    """
    lines = float(np.mean(heights))
    return {"lines_per_image": round(lines, 1), "false_alarms_per_1000_lines": supported_fpr * 1000.0 / lines}


def calibrate_job(
    run_dir,
    good: Sequence[Path],
    target_fpr: float | None = None,
    min_region_area: int | None = None,
    batch_size: int = 4,
) -> dict:
    """`riad-tf calibrate`: new thresholds for a trained run from good images (files or folders), no retraining.

    The images must be good parts that training never saw; `target_fpr` and
    `min_region_area` default to the run's config, and a new value is stored
    in the run's config so that later commands agree.

    Returns:
        What changed (`recalibration_summary`), with the command that updates
        each model exported from the run before.
    """
    from edge.images import find_images

    config = runs.load_config(run_dir)
    overrides = {"target_fpr": target_fpr, "min_region_area": min_region_area}
    config = config.with_overrides({k: v for k, v in overrides.items() if v is not None})
    paths = find_images(good)
    if not paths:
        raise InputError(f"no images in {', '.join(map(str, good))}")
    _check_calibration_images(paths, run_dir, config)
    images = read_images([Sample(p, 0) for p in paths], config)
    with runs.run_lock(run_dir, "riad-tf calibrate"):
        previous = runs.previous_thresholds(run_dir)
        thresholds = calibrate_images(run_dir, images, config.target_fpr, batch_size, config.min_region_area)
        runs.save_config(run_dir, config)
    return recalibration_summary(run_dir, previous, thresholds)


def recalibration_summary(run_dir, previous: dict | None, thresholds: dict) -> dict:
    """What a recalibration changed, and the command that puts the new thresholds into each export of the run.

    Models exported before keep their old thresholds until `riad-edge
    set-thresholds` updates them; the run knows the ones it exported
    (`riad_tf.run.load_exports`) and lists those whose file is still there.

    Args:
        run_dir: the recalibrated run.
        previous: its thresholds before (None: it had none).
        thresholds: the new ones.

    Returns:
        A JSON-serialisable dict: `run`, `thresholds_file`, `target_fpr`,
        `num_images`, `image` and `region` (each `{"old": ..., "new": ...}`),
        `thresholds` (the new record) and `commands` (one `riad-edge
        set-thresholds` command per export still on disk).
    """
    from edge.recalibration import set_thresholds_command

    exports = [entry["model"] for entry in runs.load_exports(run_dir) if Path(entry["model"]).is_file()]
    return {
        "run": str(run_dir),
        "thresholds_file": str(Path(run_dir) / runs.THRESHOLDS_FILE),
        "target_fpr": thresholds["target_fpr"],
        "num_images": thresholds["num_images"],
        **{key: {"old": (previous or {}).get(key), "new": thresholds[key]} for key in ("image", "region")},
        "thresholds": thresholds,
        "commands": [set_thresholds_command(model, Path(run_dir).resolve()) for model in exports],
    }


def _check_calibration_images(paths: Sequence[Path], run_dir, config: RiadConfig) -> None:
    """Calibration images follow `predict`'s rules (readable, finite, a size the model takes) and are not training's.

    Raises:
        InputError: one line naming the first file that breaks a rule.
    """
    from edge.images import load_image
    from edge.inspection import size_problem

    training = runs.training_paths(run_dir)
    reused = [p for p in paths if Path(p).resolve() in training]
    if reused:
        raise InputError(
            f"{reused[0]}: {len(reused)} of the {len(paths)} calibration images are the run's training images; "
            "calibrate on good images training never saw (their scores are optimistic)"
        )
    preprocessing = runs.load_preprocessing(run_dir)
    for path in paths:
        image = load_image(path)  # ImageError (an InputError) names the file
        if not np.all(np.isfinite(image)):
            raise InputError(f"{path}: the image holds NaN or infinite values")
        problem = None if config.scale is not None else size_problem(image.shape[:2], preprocessing)
        if problem:
            raise InputError(f"{path}: {problem.split('; pass --tile')[0]}; calibrate on images like the training ones")


def evaluate_images(run_dir, samples: Sequence[Sample], out_dir=None, batch_size: int = 4, report: bool = True) -> dict:
    """Scores the test samples and writes `metrics.json`, `metrics.md`, `scores.jsonl` and `report/index.html`.

    Args:
        run_dir: a trained run (see `riad_tf.run`).
        samples: test images, good and anomalous, with masks where available.
        out_dir: where to write; default `run_dir/eval`.
        batch_size: images per detector call.
        report: also write the visual report.

    Returns:
        The metrics dict written to `metrics.json`.
    """
    from riad_tf.identity import run_identity
    from riad_tf.report import write_report

    out_dir = Path(out_dir or runs.eval_dir(run_dir))
    detector = runs.load_detector(run_dir)
    config = detector.config
    log.info(f"evaluate: scoring {len(samples)} images ({len(detector.masks) * config.n} U-Net passes per tile)")
    if config.scale is None:
        images, masks = load_arrays(samples, config, with_masks=True)
        maps, scores, reconstructions = detector.score(images, batch_size, with_reconstructions=True)
    else:
        images = read_images(samples, config)
        masks = [_mask_at(sample, image.shape[:2]) for sample, image in zip(samples, images)]
        maps, scores, _ = score_images(detector, images, batch_size)
        reconstructions = None
    labels = np.array([s.label for s in samples])
    types = [s.defect_type for s in samples]
    pixel = has_pixel_masks(samples)
    summary = metrics.summarize(scores, labels, maps if pixel else None, masks if pixel else None, types)
    thresholds = runs.load_thresholds(run_dir)
    summary["calibrated_threshold_rates"] = None
    if thresholds:
        predicted = [is_anomalous(s, m, thresholds) for s, m in zip(scores, maps)]
        summary["calibrated_threshold_rates"] = metrics.verdict_rates(predicted, labels)
    summary["resolution"] = list(config.image_size) if config.scale is None else f"scale {config.scale:g}"
    log.info(f"evaluate: {promise_line(summary['calibrated_threshold_rates'], thresholds)}")
    runs.save_metrics(out_dir, summary, _markdown(summary, run_dir, config))
    atomic_write_text(
        out_dir / "scores.jsonl",
        "".join(
            json.dumps({"path": str(s.path), "label": s.label, "score": float(v)}) + "\n"
            for s, v in zip(samples, scores)
        ),
    )
    if report:
        shown_elsewhere = ("per_defect_type", "calibrated_threshold_rates", "resolution")  # operating point, summary
        overall = {k: v for k, v in summary.items() if k not in shown_elsewhere}
        if config.scale is not None:  # the report shows every image at the model's size
            images, maps, masks = _at_size(config.image_size, images, maps, masks)
        write_report(
            out_dir / runs.REPORT_DIR,
            names=[f"{s.defect_type}/{s.path.name}" for s in samples],
            images=images,
            reconstructions=reconstructions,
            maps=maps,
            scores=scores,
            labels=labels,
            defect_types=types,
            masks=masks if pixel else None,
            thresholds=thresholds,
            metrics={"overall": overall, "per_defect": summary["per_defect_type"]},
            identity=run_identity(run_dir),
            scores_file="../scores.jsonl",
        )
    return summary


def _mask_at(sample: Sample, size: tuple[int, int]) -> np.ndarray:
    """The sample's ground truth at `size` (all False for an image without a mask)."""
    if sample.mask_path is None:
        return np.zeros(size, bool)
    return read_mask(sample.mask_path, size)


def _at_size(size: tuple[int, int], images, maps, masks) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images, maps and masks of their own sizes resized to one `size` (bilinear; masks nearest), for the report."""
    from edge.images import resize_image

    def resized(arrays, method):
        return np.stack([resize_image(np.atleast_3d(a).astype(np.float32), size, method) for a in arrays])

    return resized(images, "bilinear"), resized(maps, "bilinear")[..., 0], resized(masks, "nearest")[..., 0] > 0.5


def _markdown(summary: dict, run_dir, config: RiadConfig) -> str:
    keys = ("num_images", "num_anomalous", "image_auroc", "pixel_auroc", "aupro", "f1_max")
    rows = [("overall", summary)] + sorted(summary["per_defect_type"].items())
    height, width = config.image_size
    where = (
        f"at {height} x {width} px (height x width, the model's input size)"
        if config.scale is None
        else f"at scale {config.scale:g} of the images (each scored in {height} x {width} px tiles, height x width, maps stitched)"
    )
    lines = [
        f"# Evaluation of `{run_dir}`",
        "",
        f"Maps compared with ground truth {where}.",
        "F1-max is tuned on the test data itself; the calibrated thresholds are not.",
        "",
        markdown_table(["subset", *keys], [[name] + [cell(block.get(k)) for k in keys] for name, block in rows]),
    ]
    return "\n".join(lines) + "\n"


def promise_line(rates: dict | None, thresholds: dict | None) -> str:
    """One line: good test images rejected and defects found at the calibrated thresholds, against the promise.

    Example:

    >>> rates = {"false_positives": 1, "num_good": 15, "true_positives": 15, "num_anomalous": 15}
    >>> promise_line(rates, {"supported_fpr": 0.0476, "num_images": 20})
    'calibrated thresholds: 1 of 15 good test images rejected (0.067; promised at most 0.0476 from 20 good images), 15 of 15 defective found'
    """
    if not rates or not thresholds:
        return "no calibrated thresholds: no verdicts"
    line = (
        f"calibrated thresholds: {rates['false_positives']} of {rates['num_good']} good test images rejected "
        f"({rates['false_positives'] / max(rates['num_good'], 1):.3f}; promised at most "
        f"{thresholds['supported_fpr']:.3g} from {thresholds['num_images']} good images)"
    )
    if rates["num_anomalous"]:
        line += f", {rates['true_positives']} of {rates['num_anomalous']} defective found"
    return line


def predict_images(
    run_dir,
    paths: Sequence[Path],
    maps_dir=None,
    batch_size: int = 4,
    mode: str = "strict",
    image_threshold: float | None = None,
    float_maps: bool = False,
) -> Iterator[dict]:
    """`riad-tf predict`: one record per image, exactly as `riad-edge infer` (`edge.inspection.inspect_files`).

    Args:
        run_dir: a trained run.
        paths: image files.
        maps_dir: where to write `NAME_map.png` (`edge.predictions.MapNames`);
            None writes none.
        batch_size: images per detector call.
        mode: inputs of another size than the training images': "strict"
            (an error record), "resize" or "tile" (`edge.inspection`).
        image_threshold: overrides the calibrated threshold.
        float_maps: also write each map as float32 `NAME_map.npy`.
    """
    detector = runs.load_detector(run_dir)
    config = detector.config
    thresholds = with_overrides(runs.load_thresholds(run_dir), image_threshold)
    warn_if_uncalibrated(thresholds, run_dir)
    preprocessing = runs.load_preprocessing(run_dir)
    yield from inspect_files(
        paths,
        lambda images: detector.score(images, batch_size),
        config.image_size,
        config.channels,
        thresholds,
        preprocessing=preprocessing,
        mode=mode,
        maps=MapNames(maps_dir, thresholds, float_maps) if maps_dir is not None else None,
        batch_size=batch_size,
    )


def demo_job(out_dir: Path, epochs: int | None = None, progress: bool = True) -> dict:
    """Synthetic textures with planted defects -> train -> calibrate -> evaluate -> report."""
    from riad_tf.synthetic import make_synthetic_dataset

    config = DEMO_CONFIG if epochs is None else DEMO_CONFIG.with_overrides({"epochs": epochs})
    log.info(f"demo: drawing synthetic textures with planted defects into {out_dir / 'data'}")
    data_dir = make_synthetic_dataset(out_dir / "data", image_size=config.image_size[0], **DEMO_IMAGES)
    spec = data_spec(data_dir, "mvtec")
    split, _ = load_split(spec)
    run_dir = out_dir / "run"
    runs.save_data_spec(run_dir, spec)  # like any run: int8 export and `experiments/partition_check.py --run` read it
    thresholds = train_on_images(config, split, run_dir, progress=progress)
    summary = evaluate_images(run_dir, split.test, runs.eval_dir(run_dir))
    log.info(
        f"demo: image AUROC {summary['image_auroc']:.3f}, pixel AUROC {summary['pixel_auroc']:.3f}, "
        f"AUPRO {summary['aupro']:.3f}; {promise_line(summary['calibrated_threshold_rates'], thresholds)}"
    )
    return {
        "data": data_dir,
        "run": run_dir,
        "metrics": runs.eval_dir(run_dir) / runs.METRICS_TABLE_FILE,
        "report": runs.eval_dir(run_dir) / runs.REPORT_DIR / "index.html",
    }
