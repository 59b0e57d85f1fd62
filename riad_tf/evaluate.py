"""Calibration, evaluation and prediction on a trained run.

- `calibrate_run`: image and pixel thresholds at a target false-positive rate on
  held-out good images (never on defective ones), stored in the run.
- `evaluate_run`: image AUROC, pixel AUROC, AUPRO and F1-max overall and per
  defect type, as JSON and Markdown, plus the visual HTML report.
- `predict_images`: score, verdict and map for image files.

Example:

>>> detector = load_detector("runs/demo")                       # doctest: +SKIP
>>> evaluate_run("runs/demo", split.test, "runs/demo/eval")    # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from riad_tf import metrics
from riad_tf.config import atomic_write_text
from riad_tf.data import Sample, has_pixel_masks, load_arrays
from riad_tf.run import load_detector, load_thresholds, save_thresholds


def calibrate_run(run_dir, good_images: np.ndarray, target_fpr: float, batch_size: int = 4) -> dict:
    """Thresholds from held-out good images at `target_fpr`, saved as `thresholds.json`.

    Rule: an image is anomalous if its score > thresholds["image"]; a pixel if
    its map value > thresholds["pixel"].
    """
    if len(good_images) == 0:
        raise ValueError(f"{run_dir}: no held-out good images to calibrate thresholds on")
    maps, scores = load_detector(run_dir).score(good_images, batch_size)
    thresholds = metrics.calibrate(scores, maps, target_fpr)
    save_thresholds(run_dir, thresholds)
    return thresholds


def _markdown(summary: dict, run_dir, resolution: tuple[int, int]) -> str:
    keys = ("num_images", "num_anomalous", "image_auroc", "pixel_auroc", "aupro", "f1_max")
    rows = [("overall", summary)] + sorted(summary["per_defect_type"].items())

    def cell(value):
        return "n/a" if value is None else (f"{value:.4f}" if isinstance(value, float) else str(value))

    lines = [
        f"# Evaluation of `{run_dir}`",
        "",
        f"Maps compared with ground truth at {resolution[0]} x {resolution[1]} (the model's input size).",
        "F1-max is tuned on the test data itself; the calibrated thresholds are not.",
        "",
        "| subset | " + " | ".join(keys) + " |",
        "|---" * (len(keys) + 1) + "|",
    ]
    lines += [f"| {name} | " + " | ".join(cell(block.get(k)) for k in keys) + " |" for name, block in rows]
    return "\n".join(lines) + "\n"


def _verdict_metrics(scores, labels, thresholds) -> dict | None:
    if not thresholds:
        return None
    predicted = scores > thresholds["image"]
    labels = np.asarray(labels, bool)
    return {
        "false_positive_rate": float(predicted[~labels].mean()) if (~labels).any() else None,
        "true_positive_rate": float(predicted[labels].mean()) if labels.any() else None,
    }


def evaluate_run(run_dir, samples: Sequence[Sample], out_dir=None, batch_size: int = 4, report: bool = True) -> dict:
    """Scores the test samples and writes `metrics.json`, `metrics.md` and `report/index.html`.

    Args:
        run_dir: a trained run (see `riad_tf.run`).
        samples: test images, good and anomalous, with masks where available.
        out_dir: where to write; default `run_dir/eval`.
        batch_size: images per detector call.
        report: also write the visual report.

    Returns:
        The metrics dict written to `metrics.json`.
    """
    from riad_tf.report import write_report

    out_dir = Path(out_dir or Path(run_dir) / "eval")
    detector = load_detector(run_dir)
    config = detector.config
    images, masks = load_arrays(samples, config, with_masks=True)
    maps, scores, reconstructions = detector.score(images, batch_size, with_reconstructions=True)
    labels = np.array([s.label for s in samples])
    types = [s.defect_type for s in samples]
    pixel = has_pixel_masks(samples)
    summary = metrics.summarize(scores, labels, maps if pixel else None, masks if pixel else None, types)
    thresholds = load_thresholds(run_dir)
    summary["calibrated_threshold_rates"] = _verdict_metrics(scores, labels, thresholds)
    summary["resolution"] = list(config.image_size)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "metrics.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(out_dir / "metrics.md", _markdown(summary, run_dir, config.image_size))
    atomic_write_text(
        out_dir / "scores.jsonl",
        "".join(json.dumps({"path": str(s.path), "label": s.label, "score": float(v)}) + "\n" for s, v in zip(samples, scores)),
    )
    if report:
        overall = {k: v for k, v in summary.items() if k != "per_defect_type"}
        write_report(
            out_dir / "report",
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
        )
    return summary


def predict_images(run_dir, paths: Sequence[Path], maps_dir=None, batch_size: int = 4):
    """Yields one record per image: path, score, verdict (when calibrated), map file.

    Args:
        run_dir: a trained run.
        paths: image files of any size; they are resized to the model's size.
        maps_dir: where to write `NAME_map.png` (map scaled by the pixel threshold
            x 2, or by its own maximum before calibration); None writes none.
    """
    from riad_tf.data import read_image
    from riad_tf.report import save_map_png

    detector = load_detector(run_dir)
    config = detector.config
    thresholds = load_thresholds(run_dir)
    for start in range(0, len(paths), batch_size):
        chunk = [Path(p) for p in paths[start : start + batch_size]]
        images = np.stack([read_image(p, config.image_size, config.channels) for p in chunk])
        maps, scores = detector.score(images, batch_size)
        for path, map_, score in zip(chunk, maps, scores):
            record = {"path": str(path), "score": float(score)}
            if thresholds:
                record["anomalous"] = bool(score > thresholds["image"])
                record["threshold"] = thresholds["image"]
            if maps_dir is not None:
                vmax = 2 * thresholds["pixel"] if thresholds else None
                record["map"] = str(save_map_png(Path(maps_dir) / f"{path.stem}_map.png", map_, vmax=vmax))
            yield record
