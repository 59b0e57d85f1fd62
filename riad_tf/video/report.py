"""The video evaluation report: frame-level AUROC tables and a score plot per video.

`write_video_report` writes

    OUT/index.html         overall and per-video frame AUROC, thresholds, the plots
    OUT/videos/NAME.png    score against frame: the raw per-frame score, the
                           temporally smoothed score, the true anomalous spans
                           shaded, and the calibrated threshold when there is one

The page uses relative links and inline CSS only, so the folder can be copied
anywhere. Every file is written to a temporary file and renamed into place.

Example:

>>> import numpy as np, tempfile
>>> raw = [np.array([0.1, 0.2, 0.9, 0.8, 0.2])]
>>> index = write_video_report(tempfile.mkdtemp(), names=["01"], scores=raw,
...     smoothed=raw, labels=[np.array([0, 0, 1, 1, 0])], summary={})
>>> index.name
'index.html'
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Mapping, Sequence
from urllib.parse import quote

import numpy as np
from matplotlib.figure import Figure

from edge.files import atomic_write_text
from riad_tf.report import safe_file_stems, save_figure

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1300px; color: #222; }
table { border-collapse: collapse; margin: .5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: .3em .7em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f0f0f0; }
figure { margin: 0 0 1.5em; } figure img { max-width: 100%; }
.note { color: #777; }
"""

# The overall metrics, labelled (keys of `summarize_videos`).
OVERALL_ROWS = (
    ("frame_auroc", "smoothed (mean of last frames), the paper's protocol"),
    ("frame_auroc_normalised", "smoothed, then min-max normalised per video"),
    ("frame_auroc_raw", "raw per-frame score"),
)
PER_VIDEO_KEYS = ("num_frames", "num_anomalous", "frame_auroc", "frame_auroc_raw")


def anomalous_spans(labels) -> list[tuple[int, int]]:
    """The runs of anomalous frames as 0-based half-open `(start, stop)` pairs.

    Example:

    >>> anomalous_spans([0, 1, 1, 0, 1])
    [(1, 3), (4, 5)]
    """
    flags = np.concatenate([[0], np.asarray(labels, dtype=np.int8) != 0, [0]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(flags))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]


def score_figure(
    name: str, scores, smoothed, labels, threshold: float | None = None, window: int | None = None
) -> Figure:
    """Score against frame number (1-based) for one video, anomalous spans shaded.

    Args:
        name: the video's name (the title).
        scores: `(T,)` raw per-frame scores.
        smoothed: `(T,)` smoothed scores.
        labels: `(T,)` ground truth, 1 for an anomalous frame.
        threshold: a threshold for the smoothed score, drawn when given.
        window: the smoothing window, for the legend.
    """
    fig = Figure(figsize=(9, 2.8))
    ax = fig.subplots()
    frames = np.arange(1, len(scores) + 1)
    for i, (start, stop) in enumerate(anomalous_spans(labels)):
        ax.axvspan(
            start + 0.5,
            stop + 0.5,
            color="tab:red",
            alpha=0.18,
            lw=0,
            label="anomalous (ground truth)" if i == 0 else None,
        )
    ax.plot(frames, scores, color="0.6", lw=0.8, label="frame score")
    ax.plot(
        frames,
        smoothed,
        color="tab:blue",
        lw=1.5,
        label=f"mean of last {window} frames" if window else "smoothed score",
    )
    if threshold is not None:
        ax.axhline(threshold, color="k", ls="--", lw=1, label="threshold (smoothed)")
    ax.set_xlim(0.5, max(len(scores), 1) + 0.5)
    ax.set_xlabel("frame")
    ax.set_ylabel("anomaly score")
    ax.set_title(name)
    ax.legend(loc="upper left", fontsize="small", framealpha=0.8)
    fig.tight_layout()
    return fig


def write_video_report(
    out_dir,
    *,
    names: Sequence[str],
    scores: Sequence[np.ndarray],
    smoothed: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    summary: Mapping,
    thresholds: Mapping | None = None,
) -> Path:
    """Writes the HTML report of a video evaluation and one plot per video.

    Args:
        out_dir: the report folder.
        names: the test videos' names.
        scores, smoothed, labels: per video, `(T,)` raw scores, smoothed scores
            and ground truth.
        summary: the metrics of `riad_tf.video.jobs.summarize_videos`.
        thresholds: the run's calibrated thresholds (`smoothed_frame` is drawn).

    Returns:
        The path of `index.html`.
    """
    out_dir = Path(out_dir)
    threshold = (thresholds or {}).get("smoothed_frame")
    window = summary.get("temporal_window")
    figures = []
    for name, stem, raw, smooth, truth in zip(names, safe_file_stems(names), scores, smoothed, labels):
        relative = f"videos/{stem}.png"
        save_figure(score_figure(name, raw, smooth, truth, threshold, window), out_dir / relative)
        figures.append((name, relative))
    index = out_dir / "index.html"
    atomic_write_text(index, _page(summary, thresholds, figures))
    return index


def _cell(value) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4f}" if isinstance(value, float) else html.escape(str(value))


def _page(summary: Mapping, thresholds: Mapping | None, figures) -> str:
    overall = "".join(
        f"<tr><td>{html.escape(label)}</td><td>{_cell(summary.get(key))}</td></tr>" for key, label in OVERALL_ROWS
    )
    per_video = summary.get("per_video", {})
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td>"
        + "".join(f"<td>{_cell(block.get(k))}</td>" for k in PER_VIDEO_KEYS)
        + "</tr>"
        for name, block in per_video.items()
    )
    head = "".join(f"<th>{k}</th>" for k in ("video", *PER_VIDEO_KEYS))
    excluded = summary.get("excluded_test_videos") or []
    parts = [
        "<h1>riad-tf video evaluation</h1>",
        f"<p>{summary.get('num_videos', len(figures))} test videos, {summary.get('num_frames', '?')} frames "
        f"({summary.get('num_anomalous_frames', '?')} anomalous); scores averaged over the last "
        f"{summary.get('temporal_window', '?')} frames (the paper's protocol, Sec. 4.3)."
        + (f" Excluded: {html.escape(', '.join(excluded))}." if excluded else "")
        + "</p>",
        f"<h2>Frame-level AUROC, all frames</h2><table><tbody>{overall}</tbody></table>",
        f"<h2>Per video</h2><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>",
        '<p class="note">Per-video min-max normalisation does not change a video\'s own AUROC.</p>',
    ]
    if thresholds:
        items = "".join(
            f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>" for k, v in thresholds.items()
        )
        parts.append(f"<h2>Thresholds</h2><table><tbody>{items}</tbody></table>")
    parts.append("<h2>Scores per video</h2>")
    parts += [f'<figure><img src="{quote(rel)}" alt="{html.escape(name)}"></figure>' for name, rel in figures]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>riad-tf video evaluation</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(parts)
        + "\n</body>\n</html>\n"
    )
