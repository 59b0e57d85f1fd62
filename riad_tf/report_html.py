"""The report's HTML page: inline CSS and script, relative links (`riad_tf.report` writes it).

`render_page` lays out one evaluation as a sign-off record: the run's identity,
a red line when the thresholds broke their promise, the summary, metrics,
thresholds, the operating point, the mean good map, the plots, a few examples
and a table of every image that sorts (click a header) and filters (verdict,
defect type, right or wrong, name) in the browser, without a server. The page
reads the same without JavaScript, only unsorted and unfiltered. It is laid out
for screens from 1024 px wide.
"""

from __future__ import annotations

import dataclasses
import html
from typing import Mapping, Sequence
from urllib.parse import quote

import numpy as np

from riad_tf.evaluation import Evaluation
from riad_tf.thresholds import false_alarm_chance

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: .3em .7em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f0f0f0; }
.scroll { overflow-x: auto; max-width: 100%; }
table.identity td { text-align: left; overflow-wrap: anywhere; }
table.identity td:first-child { font-weight: 600; white-space: nowrap; }
.plots img { max-width: 32%; margin-right: 1%; vertical-align: top; }
figure { margin: 0 0 1.5em; } figure img, section img { max-width: 100%; height: auto; }
.wrong { color: #b22222; } .note { color: #777; }
#images th { cursor: pointer; user-select: none; }
#images th[aria-sort=ascending]::after { content: " \\25B2"; }
#images th[aria-sort=descending]::after { content: " \\25BC"; }
#images td:nth-child(2), #images th:nth-child(2) { text-align: left; overflow-wrap: anywhere; }
.filters { display: flex; flex-wrap: wrap; gap: .5em 1.5em; align-items: center; margin: .5em 0; }
"""

# Sorts the table of every image on a header click; filters its rows on the controls' values.
_SCRIPT = """
(function () {
  var table = document.getElementById("images");
  if (!table) return;
  var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
  var controls = document.querySelectorAll("[data-filter]"), shown = document.getElementById("shown");
  function filter() {
    var count = 0;
    rows.forEach(function (row) {
      var keep = Array.prototype.every.call(controls, function (c) {
        var want = c.value.trim().toLowerCase(), have = (row.dataset[c.dataset.filter] || "").toLowerCase();
        return !want || (c.tagName === "INPUT" ? have.indexOf(want) >= 0 : have === want);
      });
      row.hidden = !keep;
      if (keep) count++;
    });
    shown.textContent = count + " of " + rows.length + " images shown";
  }
  Array.prototype.forEach.call(controls, function (c) { c.addEventListener("input", filter); });
  Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, column) {
    th.addEventListener("click", function () {
      var up = th.getAttribute("aria-sort") !== "ascending", numeric = th.dataset.type === "number";
      Array.prototype.forEach.call(table.tHead.rows[0].cells, function (o) { o.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", up ? "ascending" : "descending");
      rows.sort(function (a, b) {
        var x = a.cells[column].dataset.value || a.cells[column].textContent;
        var y = b.cells[column].dataset.value || b.cells[column].textContent;
        var d = numeric ? parseFloat(x) - parseFloat(y) : x.localeCompare(y);
        return up ? d : -d;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
  filter();
})();
"""

# Display names of the keys of `riad_tf.metrics.summarize` and the thresholds (`riad_tf.thresholds`).
_LABELS = {
    "num_images": "images",
    "num_anomalous": "anomalous",
    "image_auroc": "image AUROC",
    "pixel_auroc": "pixel AUROC",
    "aupro": "AUPRO",
    "f1_max": "F1-max *",
    "f1_threshold": "F1-max threshold *",
    "image": "image threshold",
    "region": "region threshold",
    "min_region_area": "smallest region (pixels)",
    "segmentation": "segmentation threshold (drawing aid)",
    "target_fpr": "target false-positive rate",
    "supported_fpr": "false-positive rate promised",
    "fpr_90": "false-positive rate, 90 % upper bound",
    "target_supported": "target supported",
    "rule": "rule",
    "method": "method",
    "source": "source",
}


@dataclasses.dataclass
class Page:
    """What the page shows besides the evaluation's arrays (`riad_tf.report.write_report` fills it).

    Attributes:
        metrics: `{"overall": {...}, "per_defect": {...}}` or `summarize`'s flat dict.
        plots: `{png file: None, or why it was not drawn}`.
        panels: each image's panels file, relative to the page, in image order.
        examples: `{group: [image index, ...]}` shown inline.
        identity: `{label: text}` naming the run, or empty.
        scores_file: a link to the scores the table lists, or None.
    """

    metrics: Mapping
    plots: Mapping
    panels: Sequence[str]
    examples: Mapping
    identity: Mapping = dataclasses.field(default_factory=dict)
    scores_file: str | None = None


def render_page(data: Evaluation, page: Page) -> str:
    """The whole HTML page of one evaluation."""
    body = [
        "<h1>riad-tf evaluation report</h1>",
        _identity_html(page.identity),
        _broken_promise_html(data),
        _summary_html(data),
        "<h2>Metrics</h2>",
        _metrics_html(page.metrics),
        "<h2>Thresholds</h2>",
        _thresholds_html(data.thresholds),
        "<h2>Operating point</h2>",
        _operating_point_html(data),
        "<h2>Mean good map</h2>",
        _mean_good_map_html(data),
        "<h2>Plots</h2>",
        _plots_html(page.plots),
        "<h2>Examples</h2>",
        _examples_html(page.examples, page.panels, data),
        '<h2 id="every-image">Every image</h2>',
        _images_html(data, page.panels, page.scores_file),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        "<title>riad-tf evaluation report</title>\n"
        f"<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + f"\n<script>{_SCRIPT}</script>\n</body>\n</html>\n"
    )


def _label(key) -> str:
    """A table header for a metrics or thresholds key: `image_auroc` -> `image AUROC`."""
    return _LABELS.get(str(key), str(key).replace("_", " "))


def _fmt(value, spec: str = ".4f") -> str:
    """A table cell: floats with `spec`, None and NaN as "n/a", booleans as yes/no, anything else escaped."""
    if value is None or (isinstance(value, (float, np.floating)) and np.isnan(value)):
        return "n/a"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        return format(float(value), spec)
    if isinstance(value, Mapping):
        return "; ".join(f"{html.escape(_label(k))} {_fmt(v, spec)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v, spec) for v in value)
    return html.escape(str(value))


def _identity_html(identity: Mapping) -> str:
    if not identity:
        return '<p class="note">No run identity given (the arrays were passed directly).</p>'
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>" for k, v in identity.items())
    return f'<table class="identity"><tbody>{rows}</tbody></table>'


def _summary_html(data: Evaluation) -> str:
    n_bad = int(data.labels.sum())
    types = sorted(set(d for d, bad in zip(data.defect_types, data.labels) if bad))
    breakdown = ", ".join(f"{html.escape(t)} {data.defect_types.count(t)}" for t in types)
    return (
        f"<p>{len(data.names)} test images: {len(data.names) - n_bad} good, {n_bad} anomalous"
        + (f" ({breakdown})" if breakdown else "")
        + ". Anomaly maps are evaluated "
        f"at {data.maps.shape[1]} x {data.maps.shape[2]} pixels (height x width). "
        '<a href="#every-image">Every image</a> is listed at the end.</p>'
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
    head = "".join(f"<th>{html.escape(_label(c)) if c else ''}</th>" for c in ["", *columns])
    body = "".join(
        f"<tr><td>{html.escape(name)}</td>" + "".join(f"<td>{_fmt(row.get(c))}</td>" for c in columns) + "</tr>"
        for name, row in rows.items()
    )
    table = f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'
    if any(c.startswith("f1_") for c in columns):
        table += (
            '<p class="note">* F1-max is the best F1 over every threshold, chosen on these test images themselves: '
            "an upper bound, not what the line will see. The calibrated thresholds below were set without them.</p>"
        )
    return table + _key_value_table(others) if others else table


def _thresholds_html(thresholds: Mapping) -> str:
    if not thresholds:
        return '<p class="note">No thresholds given: no verdicts or predicted outlines.</p>'
    note = (
        '<p class="note">An image is called anomalous when it has a region above the region threshold (with a '
        "smallest region of 1 pixel: when its score is above the image threshold). With n good calibration images, "
        "a new good image is called anomalous with probability at most the promised rate; the segmentation "
        "threshold is a per-pixel quantile, a drawing aid only (docs/method.md, Thresholds).</p>"
    )
    warning = ""
    if thresholds.get("target_supported") is False:
        warning = (
            f'<p class="wrong">The target false-positive rate {_fmt(thresholds.get("target_fpr"), ".3g")} is not '
            f"supported by {thresholds.get('num_images')} calibration images; the rate that holds is "
            f"{_fmt(thresholds.get('supported_fpr'), '.3g')}.</p>"
        )
    flat = {
        ("calibration images" if k == "num_images" else k): v
        for k, v in thresholds.items()
        if not isinstance(v, Mapping)
    }
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
        '<section><img src="mean_good_map.png" alt="mean anomaly map of the good images"></section>'
        f'<p class="{css}">{html.escape(" ".join(lines) + verdict)}</p>'
    )


def _key_value_table(values: Mapping, spec: str = ".4f") -> str:
    rows = "".join(f"<tr><td>{html.escape(_label(k))}</td><td>{_fmt(v, spec)}</td></tr>" for k, v in values.items())
    return f"<table><tbody>{rows}</tbody></table>"


def _plots_html(plots: Mapping) -> str:
    parts = []
    for file, missing in plots.items():
        if missing is None:
            parts.append(f'<img src="{quote(file)}" alt="{html.escape(file)}">')
        else:
            parts.append(f'<p class="note">{html.escape(file)} not drawn: {html.escape(missing)}.</p>')
    return '<div class="plots">' + "\n".join(parts) + "</div>"


def _examples_html(examples: Mapping, panels: Sequence[str], data: Evaluation) -> str:
    """The chosen images' panels inline, by group (each panel carries its name and verdict)."""
    parts = []
    for group, indices in examples.items():
        if not indices:
            continue
        parts.append(f"<h3>{html.escape(group)}</h3>")
        parts.extend(
            f'<figure><img src="{quote(panels[i])}" alt="{html.escape(data.names[i])}"></figure>' for i in indices
        )
    return "\n".join(parts) or '<p class="note">No examples shown.</p>'


def _images_html(data: Evaluation, panels: Sequence[str], scores_file: str | None) -> str:
    """Every image in one table, with filter controls; each name links to its panels."""
    verdicts = (
        ["n/a"] * len(data.names) if data.predicted is None else ["anomalous" if p else "good" for p in data.predicted]
    )
    rights = (
        ["n/a"] * len(data.names)
        if data.predicted is None
        else ["yes" if p == bad else "no" for p, bad in zip(data.predicted, data.labels)]
    )
    rows = []
    for i, (name, right) in enumerate(zip(data.names, rights)):
        truth = data.defect_types[i] if data.labels[i] else "good"
        css = ' class="wrong"' if right == "no" else ""
        rows.append(
            f'<tr{css} data-verdict="{verdicts[i]}" data-truth="{html.escape(truth)}" data-right="{right}" '
            f'data-name="{html.escape(name)}"><td data-value="{i + 1}">{i + 1}</td>'
            f'<td><a href="{quote(panels[i])}">{html.escape(name)}</a></td><td>{html.escape(truth)}</td>'
            f'<td data-value="{data.scores[i]:.9g}">{data.scores[i]:.4g}</td><td>{verdicts[i]}</td><td>{right}</td></tr>'
        )
    head = "".join(
        f'<th data-type="{kind}">{title}</th>'
        for title, kind in (
            ("#", "number"),
            ("image", "text"),
            ("truth", "text"),
            ("score", "number"),
            ("verdict", "text"),
            ("correct", "text"),
        )
    )
    source = f' (from <a href="{quote(scores_file)}">{html.escape(scores_file)}</a>)' if scores_file else ""
    return (
        _filters_html(data, verdicts, rights)
        + f'<p class="note">Click a header to sort; click a name for its panels{source}.</p>'
        + f'<div class="scroll"><table id="images"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'
    )


def _filters_html(data: Evaluation, verdicts: Sequence[str], rights: Sequence[str]) -> str:
    """One choice per column worth filtering, offering the values the table holds."""
    truths = sorted({d if bad else "good" for d, bad in zip(data.defect_types, data.labels)})

    def choice(title: str, key: str, values) -> str:
        options = "".join(f'<option value="{html.escape(v)}">{html.escape(v)}</option>' for v in values)
        return f'<label>{title} <select data-filter="{key}"><option value="">all</option>{options}</select></label>'

    return (
        '<div class="filters">'
        + choice("verdict", "verdict", sorted(set(verdicts)))
        + choice("truth", "truth", truths)
        + choice("correct", "right", sorted(set(rights), reverse=True))
        + '<label>name <input type="search" data-filter="name" placeholder="part of a name"></label>'
        + '<span id="shown" class="note"></span></div>'
    )
