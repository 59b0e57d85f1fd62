"""The visual evaluation report: one self-contained HTML page with its figures.

`write_report` turns the arrays of an evaluation (images, reconstructions,
anomaly maps, scores, labels, optional ground-truth masks and thresholds) into

    OUT/index.html           the run's identity, metrics, thresholds, plots, examples
                             and a table of every image (sorts and filters in the page)
    OUT/roc_image.png        image-level ROC curve
    OUT/pr_image.png         image-level precision-recall curve
    OUT/roc_pixel.png        pixel-level ROC curve (only when masks are given)
    OUT/score_histogram.png  image scores of good vs anomalous images
    OUT/mean_good_map.png    the mean anomaly map of the good images, its hot spot boxed
    OUT/panels/NAME.png      one per image: input with the true (solid) and predicted
                             (dashed) outlines | reconstruction | map overlay, the
                             region threshold marked on the colour bar

The page uses relative links, inline CSS and a few lines of inline JavaScript
(sorting and filtering the table; the page reads fine without it), so the folder
can be copied anywhere and opened offline. Every file is written to a temporary
file beside its target and renamed into place. Anomaly maps of all images share
one colour scale (0 to the largest map value, or above the threshold), so a good
image does not look anomalous just because its own map was stretched.

Example:

>>> import numpy as np, tempfile
>>> rng = np.random.default_rng(0)
>>> images = rng.random((4, 32, 32, 3))
>>> index = write_report(tempfile.mkdtemp(), names=["a", "b", "c", "d"],
...     images=images, reconstructions=images, maps=rng.random((4, 32, 32)),
...     scores=np.array([0.1, 0.2, 0.7, 0.9]), labels=np.array([0, 0, 1, 1]),
...     defect_types=["good", "good", "scratch", "scratch"])
>>> index.name
'index.html'
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from tqdm.auto import tqdm

from edge.files import atomic_folder, atomic_path, atomic_write_text, unique_name
from edge.images import IMAGE_EXTENSIONS
from riad_tf.evaluation import Evaluation
from riad_tf.report_html import Page, render_page

log = logging.getLogger(__name__)
MAX_PIXELS_FOR_ROC = 2_000_000
_GROUPS = ("highest-scoring anomalous", "lowest-scoring anomalous", "highest-scoring good")


# ---------------------------------------------------------------------------
# Single images


def overlay(image, map, alpha: float = 0.5, *, vmin: float = 0.0, vmax: float | None = None):
    """Blends an anomaly map, coloured with the jet colormap, over an image.

    Args:
        image: `(H, W, C)` float in [0, 1], C = 1 or 3 (or `(H, W)` grey).
        map: `(H, W)` anomaly map.
        alpha: weight of the coloured map (0 shows only the image).
        vmin, vmax: map values shown as the coldest and hottest colour;
            `vmax` defaults to the map's maximum.

    Returns:
        `(H, W, 3)` uint8 RGB array.

    Example:

    >>> overlay(np.zeros((8, 8, 1)), np.ones((8, 8))).shape
    (8, 8, 3)
    """
    rgb = _as_rgb(image)
    heat = colormaps["jet"](_normalise(map, vmin, vmax))[..., :3]
    if heat.shape[:2] != rgb.shape[:2]:
        raise ValueError(f"overlay: map shape {np.shape(map)} does not match image {np.shape(image)}")
    blended = (1.0 - alpha) * rgb + alpha * heat
    return _to_uint8(blended)


def _normalise(map, vmin: float = 0.0, vmax: float | None = None) -> np.ndarray:
    """Maps [vmin, vmax] to [0, 1], clipped; an all-`vmin` map stays 0."""
    map = np.asarray(map, dtype=np.float64)
    vmax = float(np.max(map)) if vmax is None else float(vmax)
    span = vmax - vmin
    if not np.isfinite(span) or span <= 0:
        return np.zeros_like(map)
    return np.clip((map - vmin) / span, 0.0, 1.0)


def _as_rgb(image) -> np.ndarray:
    image = np.clip(np.asarray(image, dtype=np.float64), 0.0, 1.0)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(f"expected an (H, W, 1) or (H, W, 3) image, got shape {image.shape}")
    return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image


def _to_uint8(values) -> np.ndarray:
    return np.round(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)


def _atomic_save(path, write: Callable[[str], object]) -> Path:
    """Calls `write(tmp)` on a temporary file beside `path`, then renames it into place."""
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def save_figure(fig: Figure, path) -> Path:
    """Renders a Matplotlib figure to a PNG at `path`, atomically (100 dpi)."""
    FigureCanvasAgg(fig)
    return _atomic_save(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


# ---------------------------------------------------------------------------
# Choosing and naming examples


def select_examples(scores, labels, max_examples: int = 12) -> dict[str, list[int]]:
    """Picks the images worth looking at, in a stable order.

    Takes in turn the next highest-scoring anomalous image, the next
    lowest-scoring anomalous image (likely misses) and the next highest-scoring
    good image (likely false alarms) until `max_examples` are chosen; a group
    that runs out leaves its share to the others. Ties keep input order.

    Returns:
        `{group name: [image index, ...]}` for the groups in `_GROUPS`.

    Example:

    >>> select_examples([0.1, 0.9, 0.5, 0.3], [0, 1, 1, 0], max_examples=3)
    {'highest-scoring anomalous': [1], 'lowest-scoring anomalous': [2], 'highest-scoring good': [3]}
    """
    scores, labels = np.asarray(scores), np.asarray(labels).astype(bool)
    by_score = np.argsort(-scores, kind="stable").tolist()
    anomalous = [i for i in by_score if labels[i]]
    good = [i for i in by_score if not labels[i]]
    queues = dict(zip(_GROUPS, (iter(anomalous), iter(anomalous[::-1]), iter(good))))
    chosen: dict[str, list[int]] = {group: [] for group in _GROUPS}
    taken: set[int] = set()
    budget = min(max(int(max_examples), 0), len(scores))
    while queues and len(taken) < budget:
        for group, queue in list(queues.items()):
            index = next((i for i in queue if i not in taken), None)
            if index is None:
                del queues[group]
            elif len(taken) < budget:
                chosen[group].append(index)
                taken.add(index)
    return chosen


def safe_file_stems(names: Sequence[str]) -> list[str]:
    """File-name stems for `names`: safe characters only, unique (case-insensitively).

    Example:

    >>> safe_file_stems(["scratch/000.png", "scratch_000", "<b>"])
    ['scratch_000', 'scratch_000_2', 'b']
    """
    used: set[str] = set()
    stems = [_sanitize(name) for name in names]
    return [unique_name(lambda i, s=stem: s if i == 1 else f"{s}_{i}", used, casefold=True) for stem in stems]


def _sanitize(name: str) -> str:
    path = Path(str(name))
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        path = path.with_suffix("")
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", path.as_posix()).strip("._")
    return stem[-120:] or "image"


# ---------------------------------------------------------------------------
# Figures


def _panel_figure(i: int, data: "Evaluation", map_vmax: float) -> Figure:
    """One image's panels: input with the true and predicted outlines | reconstruction | map overlay."""
    panels = [("input", data.images[i])]
    if data.reconstructions is not None:  # none for images scored in tiles
        panels.append(("reconstruction", data.reconstructions[i]))
    threshold = "" if data.pixel_threshold is None else f"\n(bar line: threshold {data.pixel_threshold:.3g})"
    panels.append(("anomaly map" + threshold, data.images[i]))
    # Fixed margins instead of constrained layout: same look, several times faster.
    fig = Figure(figsize=(2.6 * len(panels) + 0.6, 3.5))
    axes = fig.subplots(
        1, len(panels), squeeze=False, gridspec_kw=dict(left=0.01, right=0.95, bottom=0.12, top=0.73, wspace=0.12)
    )[0]
    for ax, (title, array) in zip(axes, panels):
        ax.imshow(_as_rgb(array), interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.set_axis_off()
    regions = None if data.pixel_threshold is None else data.region_mask(i)  # once: labelling regions is not free
    _draw_outlines(axes[0], None if data.masks is None else data.masks[i], regions)
    _draw_map(fig, axes[-1], data.maps[i], data.pixel_threshold, regions, map_vmax)
    verdict, correct = data.verdict(i)
    fig.suptitle(f"{_shorten(data.names[i])}\n{verdict}", fontsize=10, color="black" if correct else "firebrick")
    return fig


TRUTH_COLOUR, PREDICTED_COLOUR = "lime", "magenta"


def _draw_outlines(ax, truth, regions) -> None:
    """The ground truth (solid) and the predicted regions (dashed) outlined on the input, with a key below.

    Args:
        ax: the input's axes.
        truth: the image's ground-truth mask, or None without masks.
        regions: its pixels in regions above the region threshold, or None without thresholds.
    """
    key = []
    if truth is not None:
        key.append(f"truth: solid {TRUTH_COLOUR}")
        if truth.any():
            ax.contour(truth, levels=[0.5], colors=TRUTH_COLOUR, linewidths=1.2)
    if regions is not None:
        key.append(f"predicted: dashed {PREDICTED_COLOUR}")
        if regions.any():
            ax.contour(regions, levels=[0.5], colors=PREDICTED_COLOUR, linewidths=1.2, linestyles="--")
    if key:
        ax.text(0.0, -0.04, "\n".join(key), transform=ax.transAxes, fontsize=7, va="top")


def _draw_map(fig: Figure, ax, anomaly_map, threshold: float | None, regions, map_vmax: float) -> None:
    """The map over the input, one colour scale for every image, the region threshold marked on its colour bar."""
    shown = ax.imshow(anomaly_map, cmap="jet", alpha=0.5, vmin=0.0, vmax=map_vmax, interpolation="nearest")
    bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
    bar.ax.tick_params(labelsize=7)
    if threshold is not None:
        bar.ax.axhline(threshold, color="black", linewidth=2.5)
        bar.ax.axhline(threshold, color="white", linewidth=1.0)
    if regions is not None and regions.any():
        ax.contour(regions, levels=[0.5], colors=PREDICTED_COLOUR, linewidths=1.0, linestyles="--")


def map_scale(data: "Evaluation") -> float:
    """The top of the one colour scale all maps share: the largest map value, or above the region threshold."""
    top = float(data.maps.max()) if data.maps.size else 1.0
    if data.pixel_threshold is not None:
        top = max(top, 1.1 * data.pixel_threshold)  # the threshold's mark stays on the bar
    return top if top > 0 else 1.0


def _pr_figure(labels, scores, predicted) -> Figure:
    """Image-level precision-recall curve, with the calibrated operating point when there is one."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    precision, recall, _ = precision_recall_curve(labels, scores)
    fig = Figure(figsize=(4.5, 4.5), layout="constrained")
    ax = fig.subplots()
    ax.plot(recall, precision, lw=2, label=f"AP = {average_precision_score(labels, scores):.4f}")
    if predicted is not None and predicted.any():
        point = (predicted & labels).sum() / max(labels.sum(), 1), (predicted & labels).sum() / predicted.sum()
        ax.plot(*point, "ko", label="calibrated threshold")
    ax.set(xlim=(0, 1.01), ylim=(0, 1.01), xlabel="recall", ylabel="precision", title="Image-level precision-recall")
    ax.legend(loc="lower left")
    ax.grid(alpha=0.3)
    return fig


def _roc_figure(labels, scores, title: str) -> Figure:
    from sklearn.metrics import roc_auc_score, roc_curve

    fpr, tpr, _ = roc_curve(labels, scores)
    fig = Figure(figsize=(4.5, 4.5), layout="constrained")
    ax = fig.subplots()
    ax.plot(fpr, tpr, lw=2, label=f"AUROC = {roc_auc_score(labels, scores):.4f}")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    ax.set(xlim=(-0.01, 1), ylim=(0, 1.01), xlabel="false-positive rate", ylabel="true-positive rate", title=title)
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    return fig


def _histogram_figure(scores, labels, image_threshold) -> Figure:
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    bins = np.histogram_bin_edges(scores, bins=min(40, max(10, len(scores) // 4)))
    fig = Figure(figsize=(6.0, 3.8), layout="constrained")
    ax = fig.subplots()
    for mask, label, color in ((~labels, "good", "tab:green"), (labels, "anomalous", "tab:red")):
        if mask.any():
            ax.hist(scores[mask], bins=bins, alpha=0.6, color=color, label=f"{label} ({mask.sum()})")
    if image_threshold is not None:
        ax.axvline(image_threshold, color="black", ls="--", label=f"image threshold {image_threshold:.4g}")
    ax.set(xlabel="image score", ylabel="images", title="Image scores")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend()
    return fig


def _pixel_sample(maps, masks, limit: int = MAX_PIXELS_FOR_ROC):
    """Flattened (truth, map) pixels; a fixed-seed random subset above `limit` pixels."""
    truth, values = np.asarray(masks).ravel(), np.asarray(maps).ravel()
    if truth.size > limit:
        keep = np.sort(np.random.default_rng(0).choice(truth.size, limit, replace=False))
        truth, values = truth[keep], values[keep]
    return truth.astype(bool), values


def _shorten(text: str, width: int = 70) -> str:
    return text if len(text) <= width else "..." + text[-(width - 3) :]


# ---------------------------------------------------------------------------
# The report


def write_report(
    out_dir,
    *,
    names,
    images,
    reconstructions,
    maps,
    scores,
    labels,
    defect_types,
    masks=None,
    thresholds=None,
    metrics=None,
    identity=None,
    scores_file=None,
    max_examples: int = 12,
) -> Path:
    """Writes the HTML evaluation report and its figures into `out_dir`.

    Args:
        out_dir: folder to write (created).
        names: one display name per image (may contain slashes).
        images, reconstructions: `(N, H, W, C)` floats in [0, 1], C = 1 or 3;
            reconstructions may be None (images scored in tiles have none).
        maps: `(N, H, W)` anomaly maps; scores: `(N,)` image scores.
        labels: `(N,)` 1 for anomalous, 0 for good; defect_types: `(N,)` str.
        masks: optional `(N, H, W)` ground-truth masks (adds the truth panel
            and the pixel ROC).
        thresholds: optional `{"image": t, "region": t, ...}` (adds verdicts,
            the predicted-mask panel and the histogram's threshold line).
        metrics: optional `{"overall": {...}, "per_defect": {name: {...}}}`
            (or `riad_tf.metrics.summarize`'s flat dict); every key present is
            shown, None as "n/a".
        identity: optional `{label: text}` naming the run (`riad_tf.identity.run_identity`),
            shown first.
        scores_file: optional link (relative to `out_dir`) to the scores file
            the table of every image comes from.
        max_examples: most images shown inline as examples (every image gets
            its panels, linked from the table).

    Returns:
        The path of `index.html`.
    """
    data = Evaluation(names, images, reconstructions, maps, scores, labels, defect_types, masks, thresholds)
    out_dir = Path(out_dir)
    with atomic_folder(out_dir) as folder:  # the whole report or the previous one, never half of one
        plots = _write_plots(folder, data)
        panels = _write_panels(folder, data)
        examples = {
            group: list(indices) for group, indices in select_examples(data.scores, data.labels, max_examples).items()
        }
        page = render_page(data, Page(metrics or {}, plots, panels, examples, identity or {}, scores_file))
        atomic_write_text(folder / "index.html", page)
    return out_dir / "index.html"


def _write_plots(out_dir: Path, data: Evaluation) -> dict[str, str | None]:
    """Writes the summary plots; a plot that cannot be drawn maps to the reason."""
    plots: dict[str, str | None] = {}
    both_classes = data.labels.any() and not data.labels.all()
    if both_classes:
        save_figure(_roc_figure(data.labels, data.scores, "Image-level ROC"), out_dir / "roc_image.png")
        save_figure(_pr_figure(data.labels, data.scores, data.predicted), out_dir / "pr_image.png")
        plots["roc_image.png"] = plots["pr_image.png"] = None
    else:
        plots["roc_image.png"] = plots["pr_image.png"] = "needs both good and anomalous images"
    if data.masks is not None:
        truth, values = _pixel_sample(data.maps, data.masks)
        if truth.any() and not truth.all():
            save_figure(_roc_figure(truth, values, "Pixel-level ROC"), out_dir / "roc_pixel.png")
            plots["roc_pixel.png"] = None
        else:
            plots["roc_pixel.png"] = "needs both defect and defect-free pixels"
    save_figure(_histogram_figure(data.scores, data.labels, data.image_threshold), out_dir / "score_histogram.png")
    plots["score_histogram.png"] = None
    if data.good_spot is not None:  # shown in its own section
        save_figure(_mean_good_map_figure(data, data.good_spot), out_dir / "mean_good_map.png")
    return plots


def _mean_good_map_figure(data: "Evaluation", spot: dict) -> Figure:
    """The mean anomaly map of the good images, with the `hot_spot` window boxed."""
    from matplotlib.patches import Rectangle

    mean = data.maps[~data.labels].mean(axis=0)
    fig = Figure(figsize=(4.6, 4.0), layout="constrained")
    ax = fig.subplots()
    shown = ax.imshow(mean, cmap="jet", vmin=0.0)
    fig.colorbar(shown, ax=ax, shrink=0.8)
    box = Rectangle((spot["col"] - 0.5, spot["row"] - 0.5), spot["cell"], spot["cell"], fill=False, ec="white", lw=2)
    ax.add_patch(box)
    ax.set(title=f"Mean map of {int((~data.labels).sum())} good images", xticks=[], yticks=[])
    return fig


def _write_panels(out_dir: Path, data: Evaluation) -> list[str]:
    """Draws every image's panels; returns their paths relative to `out_dir`, in image order."""
    stems = safe_file_stems(data.names)
    map_vmax = map_scale(data)
    relative = [f"panels/{stem}.png" for stem in stems]
    log.info(f"report: drawing the panels of {len(relative)} images")
    for i, path in enumerate(tqdm(relative, desc="report", unit="image", leave=False, disable=None, file=sys.stderr)):
        save_figure(_panel_figure(i, data, map_vmax), out_dir / path)
    return relative
