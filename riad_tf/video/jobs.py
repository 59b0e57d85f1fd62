"""The video jobs: training, calibration and frame-level evaluation on video data sets (Sec. 4.1, 4.3).

The counterparts of the image jobs in `riad_tf.jobs`, with the same signatures;
`riad_tf.jobs.train_job` and `evaluate_job` pick these for a video data set.

RIAD scores each frame on its own, like a still image; the frame's score is then
averaged over the current and the previous `temporal_window - 1` frames
(`edge.temporal`, 3 frames in the paper), and the frame-level ROC AUC over
all test frames is the metric (Table 3: Ped2 92.5, Avenue17 88.9).

- `train_on_videos`: trains on the normal training videos (every
  `train_frame_stride`-th frame), holding out whole videos (or, with a single
  training video, its last frames) to calibrate thresholds.
- `calibrate_videos`: frame, pixel and smoothed-frame thresholds at the
  target false-positive rate on held-out normal frames.
- `evaluate_videos`: frame AUROC overall and per video, for the raw, the
  smoothed and the smoothed-and-normalised scores, a CSV of every frame's
  scores, and the HTML report with a score plot per video.

Example:

>>> split = validate_videos(load_video_dataset("UCSDped2", "ped2"))      # doctest: +SKIP
>>> train_on_videos(RiadConfig.load("configs/ped2.yaml"), split, "runs/ped2")  # doctest: +SKIP
>>> evaluate_videos("runs/ped2", split.test)["frame_auroc"]            # doctest: +SKIP
"""

from __future__ import annotations

import csv
import dataclasses
import io
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from edge.errors import InputError
from edge.files import atomic_write_text
from edge.temporal import minmax_normalise, temporal_smoothing
from edge.verdicts import conformal_threshold
from riad_tf import metrics
from riad_tf.config import RiadConfig
from riad_tf.data import DataError, split_holdout
from riad_tf.markdown import cell
from riad_tf.thresholds import calibrate
from riad_tf.video.layouts import Video, VideoSplit, exclude_videos

FRAMES_PER_CHUNK = 64  # frames decoded and scored at a time: bounds memory on long videos


@dataclasses.dataclass(frozen=True)
class Clip:
    """A contiguous run of frames of one video."""

    video: Video
    frames: range

    def read(self, config: RiadConfig, stride: int = 1) -> np.ndarray:
        """Every `stride`-th frame of the clip as float32 `(N, H, W, C)`."""
        return self.video.read(config, self.frames[::stride])


def holdout_clips(videos: Sequence[Video], fraction: float, seed: int = 0) -> tuple[list[Clip], list[Clip]]:
    """Holds out normal frames for calibration, keeping frames of one scene apart.

    With two or more videos a seeded share `fraction` of whole videos is held
    out (at least one, at least one kept); neighbouring frames are
    near-duplicates, so holding out single frames would make the calibration
    optimistic. With one video, its last `fraction` of frames is held out.

    Args:
        videos: training videos with `num_frames` set (see `validate_videos`).
        fraction: the share to hold out, in [0, 1).
        seed: the same seed gives the same split.

    Returns:
        (kept, held_out) lists of `Clip`.

    Example:

    >>> video = Video("01", Path("01.avi"), num_frames=10)
    >>> kept, held = holdout_clips([video], 0.2)
    >>> kept[0].frames, held[0].frames
    (range(0, 8), range(8, 10))
    """
    if len(videos) >= 2 or fraction == 0:
        kept, held = split_holdout(list(videos), fraction, seed)
        return [_whole(v) for v in kept], [_whole(v) for v in held]
    video = videos[0]
    count = video.num_frames
    held = min(max(round(count * fraction), 1), count - 1) if count >= 2 else 0
    kept_clip = Clip(video, range(0, count - held))
    return [kept_clip], ([Clip(video, range(count - held, count))] if held else [])


def _whole(video: Video) -> Clip:
    if video.num_frames is None:
        raise ValueError(f"{video.source}: frame count unknown; run validate_videos first")
    return Clip(video, range(video.num_frames))


def _read_clips(clips: Sequence[Clip], config: RiadConfig, stride: int) -> np.ndarray:
    return np.concatenate([clip.read(config, stride) for clip in clips])


def _chunks(frames: Iterable[np.ndarray], size: int = FRAMES_PER_CHUNK) -> Iterator[np.ndarray]:
    chunk = []
    for frame in frames:
        chunk.append(frame)
        if len(chunk) == size:
            yield np.stack(chunk)
            chunk = []
    if chunk:
        yield np.stack(chunk)


def score_frames(detector, frames: Iterable[np.ndarray], batch_size: int = 4, keep_maps: bool = False):
    """Scores frames one by one (in chunks) with a `Detector`.

    Args:
        detector: a `riad_tf.detector.Detector`.
        frames: float32 `(H, W, C)` model inputs in order.
        batch_size: frames per detector call.
        keep_maps: also return the anomaly maps.

    Returns:
        float32 `(T,)` scores, and with `keep_maps` also `(T, H, W)` maps.
    """
    scores, maps = [], []
    for chunk in _chunks(frames):
        chunk_maps, chunk_scores = detector.score(chunk, batch_size)
        scores.append(chunk_scores)
        if keep_maps:
            maps.append(chunk_maps)
    height, width = detector.config.image_size
    scores = np.concatenate(scores) if scores else np.zeros((0,), np.float32)
    if not keep_maps:
        return scores
    return scores, (np.concatenate(maps) if maps else np.zeros((0, height, width), np.float32))


# ----------------------------------------------------------------------------
# Training and calibration


def train_on_videos(
    config: RiadConfig, split: VideoSplit, out_dir, progress: bool = True, strategy=None, batch_size: int = 4
) -> dict | None:
    """Trains on the normal training videos and calibrates on held-out frames.

    Args:
        config: the run's config (`val_fraction`, `train_frame_stride`, ...).
        split: a validated `VideoSplit`.
        out_dir: the run directory (re-run to resume).
        progress: show progress bars.
        strategy: a `tf.distribute` strategy, passed to `riad_tf.train.train_unet`.
        batch_size: frames per detector call during calibration.

    Returns:
        The thresholds (also in `out_dir/thresholds.json`); None on a
        non-chief worker of a multi-worker job.
    """
    from riad_tf.distribute import is_chief, make_strategy
    from riad_tf.train import train_unet

    kept, held_out = holdout_clips(split.train, config.val_fraction, config.seed)
    train_images = _read_clips(kept, config, config.train_frame_stride)
    holdout_images = _read_clips(held_out, config, config.train_frame_stride) if held_out else None
    strategy = strategy or make_strategy(config.strategy)
    train_unet(config, train_images, out_dir, holdout_images=holdout_images, strategy=strategy, progress=progress)
    del train_images, holdout_images
    if not is_chief(strategy):
        return None  # a non-chief worker of a multi-worker job: the chief calibrates and writes the run
    return calibrate_videos(out_dir, held_out or kept, batch_size)


def calibrate_videos(run_dir, clips: Sequence[Clip], batch_size: int = 4) -> dict:
    """Thresholds at the run's `target_fpr` on normal frames, saved as `thresholds.json`.

    Besides the image ("image", per-frame score) and pixel thresholds of
    `riad_tf.thresholds.calibrate`, stores "smoothed_frame", the threshold for
    the smoothed frame score, and "temporal_window".

    Args:
        run_dir: a trained run.
        clips: held-out normal frames, in contiguous runs (smoothing needs order).
        batch_size: frames per detector call.
    """
    from riad_tf.run import load_detector, save_thresholds

    detector = load_detector(run_dir)
    config = detector.config
    scores, maps, smoothed = [], [], []
    for clip in clips:
        clip_scores, clip_maps = score_frames(detector, clip.video.frames(config, clip.frames), batch_size, True)
        scores.append(clip_scores)
        maps.append(clip_maps)
        smoothed.append(temporal_smoothing(clip_scores, config.temporal_window))
    if not scores or sum(len(s) for s in scores) == 0:
        raise InputError(f"{run_dir}: no held-out normal frames to calibrate thresholds on")
    thresholds = calibrate(np.concatenate(scores), np.concatenate(maps), config.target_fpr)
    thresholds["smoothed_frame"] = conformal_threshold(np.concatenate(smoothed), config.target_fpr).threshold
    thresholds["temporal_window"] = config.temporal_window
    save_thresholds(run_dir, thresholds)
    return thresholds


# ----------------------------------------------------------------------------
# Evaluation


def frame_auroc(scores, labels) -> float | None:
    """Frame-level ROC AUC (scikit-learn's), None when undefined (one class, or no frames).

    Example:

    >>> frame_auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    0.75
    """
    if len(labels) == 0:
        return None
    try:
        return metrics.image_auroc(scores, labels)
    except metrics.UndefinedMetricError:
        return None


def summarize_videos(
    names: Sequence[str], scores: Sequence[np.ndarray], labels: Sequence[np.ndarray], window: int = 3
) -> dict:
    """Frame-level AUROC of per-video score sequences, overall and per video.

    Each video is smoothed on its own (`temporal_smoothing`), then all frames
    of all videos are pooled. Three overall numbers, labelled:

    - `frame_auroc`: the smoothed scores (the paper's protocol, Sec. 4.3);
    - `frame_auroc_normalised`: the smoothed scores min-max normalised per
      video, common in video anomaly work;
    - `frame_auroc_raw`: the per-frame scores without smoothing.

    Args:
        names: video names.
        scores: per video, `(T,)` raw frame scores in frame order.
        labels: per video, `(T,)` ground truth (1 = anomalous frame).
        window: the smoothing window.

    Returns:
        A JSON-serialisable dict with the counts, the three AUROCs (None when
        undefined) and `per_video: {name: {num_frames, num_anomalous,
        frame_auroc, frame_auroc_raw}}`.

    Example:

    >>> s = summarize_videos(["a"], [np.array([0.3, 0.9, 0.2, 0.1])], [np.array([0, 1, 1, 0])], window=1)
    >>> s["frame_auroc"], s["per_video"]["a"]["num_anomalous"]
    (0.75, 2)
    """
    if not (len(names) == len(scores) == len(labels)):
        raise ValueError("summarize_videos: names, scores and labels must have one entry per video")
    for name, s, y in zip(names, scores, labels):
        if len(s) != len(y):
            raise ValueError(f"summarize_videos: video {name!r} has {len(s)} scores and {len(y)} labels")
    smoothed = [temporal_smoothing(s, window) for s in scores]
    normalised = [minmax_normalise(s) for s in smoothed]
    truth = _pool(labels)
    return {
        "num_videos": len(names),
        "num_frames": int(truth.size),
        "num_anomalous_frames": int(np.sum(truth)),
        "temporal_window": int(window),
        "frame_auroc": frame_auroc(_pool(smoothed), truth),
        "frame_auroc_normalised": frame_auroc(_pool(normalised), truth),
        "frame_auroc_raw": frame_auroc(_pool(scores), truth),
        "per_video": {
            str(name): {
                "num_frames": int(len(y)),
                "num_anomalous": int(np.sum(y)),
                "frame_auroc": frame_auroc(smooth, y),
                "frame_auroc_raw": frame_auroc(raw, y),
            }
            for name, raw, smooth, y in zip(names, scores, smoothed, labels)
        },
    }


def _pool(per_video: Sequence[np.ndarray]) -> np.ndarray:
    """All videos' frames in one array."""
    return np.concatenate([np.asarray(v) for v in per_video]) if len(per_video) else np.zeros(0)


def evaluate_videos(run_dir, videos: Sequence[Video], out_dir=None, batch_size: int = 4, report: bool = True) -> dict:
    """Scores every frame of the test videos; writes metrics, frame scores and the report.

    Test videos named in the run's `exclude_test_videos` are left out (Avenue17).
    Writes `metrics.json`, `metrics.md`, `scores.csv` (one row per frame:
    video, frame (1-based), label, score, smoothed, normalised) and, with
    `report`, `report/index.html` with a score plot per video.

    Args:
        run_dir: a trained run.
        videos: labelled test videos.
        out_dir: where to write; default `run_dir/eval`.
        batch_size: frames per detector call.
        report: also write the HTML report.

    Returns:
        The metrics dict written to `metrics.json` (see `summarize_videos`).
    """
    from riad_tf.run import REPORT_DIR, eval_dir, load_detector, load_thresholds, save_metrics
    from riad_tf.video.report import write_video_report

    out_dir = Path(out_dir or eval_dir(run_dir))
    detector = load_detector(run_dir)
    config = detector.config
    kept, excluded = exclude_videos(videos, config.exclude_test_videos)
    if not kept:
        raise DataError("every test video is excluded by exclude_test_videos")
    names = [v.name for v in kept]
    labels = [np.asarray(v.labels) for v in kept]
    scores = []
    for video in kept:
        scores.append(score_frames(detector, video.frames(config), batch_size))
        if len(scores[-1]) != len(video.labels):
            raise DataError(
                f"{video.source}: decoded {len(scores[-1])} frames but its labels cover {len(video.labels)}"
            )
    summary = summarize_videos(names, scores, labels, config.temporal_window)
    summary["excluded_test_videos"] = [v.name for v in excluded]
    thresholds = load_thresholds(run_dir)
    smoothed = [temporal_smoothing(s, config.temporal_window) for s in scores]
    summary["calibrated_threshold_rates"] = _threshold_rates(smoothed, labels, thresholds)
    summary["resolution"] = list(config.image_size)
    save_metrics(out_dir, summary, _markdown(summary, run_dir))
    atomic_write_text(out_dir / "scores.csv", _scores_csv(names, labels, scores, smoothed))
    if report:
        write_video_report(
            out_dir / REPORT_DIR,
            names=names,
            scores=scores,
            smoothed=smoothed,
            labels=labels,
            summary=summary,
            thresholds=thresholds,
        )
    return summary


def _threshold_rates(smoothed, labels, thresholds) -> dict | None:
    if not thresholds or "smoothed_frame" not in thresholds:
        return None
    predicted = np.concatenate(smoothed) > thresholds["smoothed_frame"]
    return {"threshold": thresholds["smoothed_frame"], **metrics.verdict_rates(predicted, np.concatenate(labels))}


def _scores_csv(names, labels, scores, smoothed) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["video", "frame", "label", "score", "smoothed", "normalised"])
    for name, y, raw, smooth in zip(names, labels, scores, smoothed):
        for i, row in enumerate(zip(y, raw, smooth, minmax_normalise(smooth)), start=1):
            writer.writerow([name, i, int(row[0]), *(repr(float(v)) for v in row[1:])])
    return out.getvalue()


def _markdown(summary: dict, run_dir) -> str:
    window = summary["temporal_window"]
    lines = [
        f"# Video evaluation of `{run_dir}`",
        "",
        f"{summary['num_videos']} test videos, {summary['num_frames']} frames "
        f"({summary['num_anomalous_frames']} anomalous); frames scored one by one, "
        f"scores averaged over the last {window} frames of each video.",
    ]
    if summary.get("excluded_test_videos"):
        lines.append(f"Excluded test videos: {', '.join(summary['excluded_test_videos'])}.")
    lines += [
        "",
        "| frame-level AUROC | value |",
        "|---|---|",
        f"| smoothed (mean of last {window} frames; the paper's protocol) | {cell(summary['frame_auroc'])} |",
        f"| smoothed, min-max normalised per video | {cell(summary['frame_auroc_normalised'])} |",
        f"| raw per-frame score | {cell(summary['frame_auroc_raw'])} |",
        "",
        "| video | frames | anomalous | AUROC smoothed | AUROC raw |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {name} | {b['num_frames']} | {b['num_anomalous']} | {cell(b['frame_auroc'])} | {cell(b['frame_auroc_raw'])} |"
        for name, b in summary["per_video"].items()
    ]
    return "\n".join(lines) + "\n"
