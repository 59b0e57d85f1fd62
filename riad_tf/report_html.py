"""The report's HTML page: inline CSS, relative links, no JavaScript (`riad_tf.report` writes it).

`render_page` lays out the sections of one evaluation: a red line when the
thresholds broke their promise, the summary, metrics, thresholds, the operating
point, the mean good map, the plots and the example rows.
"""

from __future__ import annotations

import html
from typing import Mapping
from urllib.parse import quote

import numpy as np

from riad_tf.evaluation import Evaluation
from riad_tf.thresholds import false_alarm_chance

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1300px; color: #222; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: .3em .7em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f0f0f0; }
.plots img { max-width: 32%; margin-right: 1%; vertical-align: top; }
figure { margin: 0 0 1.5em; } figure img { max-width: 100%; }
figcaption { font-family: monospace; font-size: .9em; }
.wrong { color: #b22222; } .note { color: #777; }
"""


def render_page(data: Evaluation, metrics: Mapping, plots: Mapping, examples: Mapping) -> str:
    body = [
        "<h1>riad-tf evaluation report</h1>",
        _broken_promise_html(data),
        _summary_html(data),
        "<h2>Metrics</h2>",
        _metrics_html(metrics),
        "<h2>Thresholds</h2>",
        _thresholds_html(data.thresholds),
        "<h2>Operating point</h2>",
        _operating_point_html(data),
        "<h2>Mean good map</h2>",
        _mean_good_map_html(data),
        "<h2>Plots</h2>",
        _plots_html(plots),
        "<h2>Examples</h2>",
        _examples_html(examples, data),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        "<title>riad-tf evaluation report</title>\n"
        f"<style>{_CSS}</style>\n</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n"
    )


def _fmt(value, spec: str = ".4f") -> str:
    """A table cell: floats with `spec`, None and NaN as "n/a", anything else escaped."""
    if value is None or (isinstance(value, (float, np.floating)) and np.isnan(value)):
        return "n/a"
    if isinstance(value, (float, np.floating)):
        return format(float(value), spec)
    return html.escape(str(value))


def _summary_html(data: Evaluation) -> str:
    n_bad = int(data.labels.sum())
    types = sorted(set(d for d, bad in zip(data.defect_types, data.labels) if bad))
    breakdown = ", ".join(f"{html.escape(t)} {data.defect_types.count(t)}" for t in types)
    return (
        f"<p>{len(data.names)} images: {len(data.names) - n_bad} good, {n_bad} anomalous"
        + (f" ({breakdown})" if breakdown else "")
        + ". Anomaly maps are evaluated "
        f"at {data.maps.shape[1]} x {data.maps.shape[2]} pixels.</p>"
    )


_NESTED_METRICS = ("overall", "per_defect", "per_defect_type")


def _metric_rows(metrics: Mapping) -> tuple[dict, dict]:
    """`({row name: {metric: value}}, {other key: value})` from the metrics dict.

    Reads `{"overall": {...}, "per_defect": {...}}`, and also the flat layout of
    `riad_tf.metrics.summarize` (overall values at the top, `per_defect_type`).
    """
    others = {k: v for k, v in metrics.items() if k not in _NESTED_METRICS}
    if "overall" in metrics:
        overall = dict(metrics["overall"] or {})
    else:
        overall = {k: v for k, v in others.items() if not isinstance(v, Mapping)}
        others = {k: v for k, v in others.items() if k not in overall}
    per_defect = metrics.get("per_defect", metrics.get("per_defect_type")) or {}
    rows = {"overall": overall, **{str(k): dict(v or {}) for k, v in per_defect.items()}}
    return rows, others


def _metrics_html(metrics: Mapping) -> str:
    """The overall row, one row per defect type, then any other top-level entries."""
    if not metrics:
        return '<p class="note">No metrics given.</p>'
    rows, others = _metric_rows(metrics)
    columns = list(dict.fromkeys(key for row in rows.values() for key in row))
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in ["", *columns])
    body = "".join(
        f"<tr><td>{html.escape(name)}</td>" + "".join(f"<td>{_fmt(row.get(c))}</td>" for c in columns) + "</tr>"
        for name, row in rows.items()
    )
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return table + _key_value_table(others) if others else table


def _thresholds_html(thresholds: Mapping) -> str:
    if not thresholds:
        return '<p class="note">No thresholds given: no verdicts or predicted masks.</p>'
    note = (
        '<p class="note">An image is called anomalous when it has a region above the threshold (with '
        "min_region_area 1: when its score is above it). With num_images good calibration images, a new good "
        "image is called anomalous with probability at most supported_fpr; segmentation is a per-pixel "
        "quantile, a drawing aid only (docs/method.md, Thresholds).</p>"
    )
    warning = ""
    if thresholds.get("target_supported") is False:
        warning = (
            f'<p class="wrong">The target false-positive rate {_fmt(thresholds.get("target_fpr"), ".3g")} is not '
            f"supported by {thresholds.get('num_images')} calibration images; the rate that holds is "
            f"{_fmt(thresholds.get('supported_fpr'), '.3g')}.</p>"
        )
    flat = {k: v for k, v in thresholds.items() if not isinstance(v, Mapping)}
    return _key_value_table(flat, spec=".6g") + warning + note


def _operating_point_html(data: Evaluation) -> str:
    """Counts and rates at the calibrated threshold, overall and per defect type."""
    if data.predicted is None:
        return '<p class="note">No threshold: no operating point.</p>'
    called, truth = data.predicted, data.labels
    cells = [[(~truth & ~called).sum(), (~truth & called).sum()], [(truth & ~called).sum(), (truth & called).sum()]]
    confusion = (
        "<table><thead><tr><th></th><th>called good</th><th>called anomalous</th></tr></thead><tbody>"
        f"<tr><td>good</td><td>{cells[0][0]}</td><td>{cells[0][1]}</td></tr>"
        f"<tr><td>anomalous</td><td>{cells[1][0]}</td><td>{cells[1][1]}</td></tr></tbody></table>"
    )
    types = sorted(set(d for d, bad in zip(data.defect_types, truth) if bad))
    rows = {"false-positive rate (good called anomalous)": (~truth & called).sum() / max((~truth).sum(), 1)}
    for name in types:
        of_type = truth & np.array([d == name for d in data.defect_types])
        rows[f"recall: {name}"] = (of_type & called).sum() / max(of_type.sum(), 1)
    if truth.any():
        rows["recall: all defects"] = (truth & called).sum() / truth.sum()
    return confusion + _key_value_table({k: float(v) for k, v in rows.items()}, spec=".3f")


def _broken_promise_html(data: Evaluation) -> str:
    """A red line when more good test images are called anomalous than the thresholds promise; else nothing."""
    bound = data.supported_fpr
    good = ~data.labels
    if data.predicted is None or bound is None or not good.any() or "num_images" not in data.thresholds:
        return ""
    false_alarms, num_good = int((data.predicted & good).sum()), int(good.sum())
    if false_alarms / num_good <= bound:
        return ""
    chance = false_alarm_chance(false_alarms, num_good, data.thresholds)
    return (
        f'<p class="wrong"><strong>Broken promise: {false_alarms} of {num_good} good images are called anomalous '
        f"(rate {false_alarms / num_good:.3f}), where the thresholds promise at most {bound:.3g}.</strong> "
        f"With thresholds from {data.thresholds['num_images']} good images, {false_alarms} or more of {num_good} "
        f"happen by chance with probability {chance:.2g}"
        + (
            ": the good test images differ from the calibration images, or the model plants a false defect "
            "(see the mean good map below); calibrate again on good images like these."
            if chance < 0.05
            else "."
        )
        + "</p>"
    )


def _mean_good_map_html(data: Evaluation) -> str:
    """The mean map of the good test images with its hot spot, and the calibration images' own check."""
    spot, calibration = data.good_spot, data.thresholds.get("hot_spot")
    if spot is None:
        return '<p class="note">No good images: no mean good map.</p>'
    cell = spot["cell"]
    lines = [
        f"Good test images: the highest {cell} x {cell} spot of the mean map (boxed) is {spot['ratio']:.2f}x its "
        f"median; {spot['peak_share']:.0%} of the good maps peak where the mean map is hot."
    ]
    if calibration:
        lines.append(
            f"Calibration images: {calibration['ratio']:.2f}x at row {calibration['row']}, column {calibration['col']}."
        )
    flagged = spot["flagged"] or bool(calibration and calibration["flagged"])
    css = "wrong" if flagged else "note"
    verdict = (
        " A spot this far above the rest is a false defect planted in the same place of every image "
        "(docs/method.md, Masks)."
        if flagged
        else ""
    )
    return (
        '<img src="mean_good_map.png" alt="mean anomaly map of the good images">'
        f'<p class="{css}">{html.escape(" ".join(lines) + verdict)}</p>'
    )


def _key_value_table(values: Mapping, spec: str = ".4f") -> str:
    rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{_fmt(v, spec)}</td></tr>" for k, v in values.items())
    return f"<table><tbody>{rows}</tbody></table>"


def _plots_html(plots: Mapping) -> str:
    parts = []
    for file, missing in plots.items():
        if missing is None:
            parts.append(f'<img src="{quote(file)}" alt="{html.escape(file)}">')
        else:
            parts.append(f'<p class="note">{html.escape(file)} not drawn: {html.escape(missing)}.</p>')
    return '<div class="plots">' + "\n".join(parts) + "</div>"


def _examples_html(examples: Mapping, data: Evaluation) -> str:
    parts = []
    for group, items in examples.items():
        if not items:
            continue
        parts.append(f"<h3>{html.escape(group)}</h3>")
        for i, relative in items:
            verdict, correct = data.verdict(i)
            name = html.escape(data.names[i])
            css = "" if correct else ' class="wrong"'
            parts.append(
                f"<figure><figcaption{css}>{name}: {html.escape(verdict)}</figcaption>"
                f'<img src="{quote(relative)}" alt="{name}"></figure>'
            )
    return "\n".join(parts) or '<p class="note">No examples drawn.</p>'
