"""Tests of the HTML evaluation report (riad_tf/report.py)."""

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge.images import save_map_png
from riad_tf import report, report_html
from riad_tf.report import overlay, safe_file_stems, select_examples, write_report

SIZE = 32


def fake_evaluation(seed=0, names=None):
    """6 images: 3 good, 3 anomalous with a square defect that the map lights up."""
    rng = np.random.default_rng(seed)
    labels = np.array([0, 0, 0, 1, 1, 1])
    defect_types = ["good", "good", "good", "scratch", "hole", "scratch"]
    masks = np.zeros((6, SIZE, SIZE), bool)
    for i in range(3, 6):
        masks[i, 4 * i - 8 : 4 * i, 10:20] = True
    maps = 0.1 * rng.random((6, SIZE, SIZE)) + 0.5 * masks
    images = rng.random((6, SIZE, SIZE, 3))
    return dict(
        names=names or [f"bottle/test/{d}/{i:03d}.png" for i, d in enumerate(defect_types)],
        images=images,
        reconstructions=np.clip(images + 0.05 * rng.standard_normal(images.shape), 0, 1),
        maps=maps,
        scores=maps.max(axis=(1, 2)) + 0.01 * rng.random(6),
        labels=labels,
        defect_types=defect_types,
        masks=masks,
    )


def fake_metrics(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "overall": {"image_auroc": rng.random(), "pixel_auroc": rng.random(), "aupro": None, "f1_max": rng.random()},
        "per_defect": {
            "scratch": {"image_auroc": rng.random()},
            "hole": {"image_auroc": rng.random(), "pixel_auroc": None},
        },
    }


def linked_files(index: Path) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]+)"', index.read_text())


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    # Slashes, a name that climbs out of the folder and names that collide once sanitized.
    names = [
        "bottle/test/good/000.png",
        "bottle_test_good_000.png",
        "BOTTLE/test/good/000.png",
        "../../scratch/003.png",
        "hole/004.png",
        "scratch/005.png",
    ]
    data, metrics = fake_evaluation(names=names), fake_metrics()
    thresholds = {"image": 0.3, "region": 0.25}
    index = write_report(out, **data, thresholds=thresholds, metrics=metrics)
    return index, data, metrics, thresholds


def test_every_linked_png_exists_and_opens(full_report):
    index = full_report[0]
    assert index.is_file() and index.name == "index.html"
    links = linked_files(index)
    for expected in ("roc_image.png", "roc_pixel.png", "score_histogram.png"):
        assert expected in links
    assert any(link.startswith("panels/") for link in links)
    for link in links:
        assert not re.match(r"[a-z]+:", link) and not link.startswith("/"), link
        if link.startswith("#"):
            continue
        with Image.open(index.parent / link) as png:
            png.load()
            assert png.format == "PNG" and png.width > 100


def test_page_is_self_contained(full_report):
    text = full_report[0].read_text()
    assert "<script>" in text and "<script src" not in text.lower()  # inline only
    assert "http://" not in text and "https://" not in text
    assert "<style>" in text


def test_metrics_and_thresholds_are_shown(full_report):
    index, _, metrics, thresholds = full_report
    text = index.read_text()
    for value in metrics["overall"].values():
        if value is not None:
            assert f"{value:.4f}" in text
    for defect, row in metrics["per_defect"].items():
        assert f"<td>{defect}</td>" in text
        for value in row.values():
            if value is not None:
                assert f"{value:.4f}" in text
    assert "n/a" in text  # aupro is None
    for key, value in thresholds.items():
        assert f"<td>{report_html._label(key)}</td><td>{value:.6g}</td>" in text
    assert "<th>image AUROC</th>" in text and "image_auroc" not in text  # headers are words, not keys
    assert "F1-max is the best F1 over every threshold, chosen on these test images" in text


def test_flat_summarize_layout_is_read(tmp_path):
    rng = np.random.default_rng(4)
    flat = {
        "num_images": 6,
        "image_auroc": rng.random(),
        "aupro": None,
        "per_defect_type": {"scratch": {"image_auroc": rng.random()}},
    }
    text = write_report(tmp_path, **fake_evaluation(), metrics=flat, max_examples=0).read_text()
    assert f"{flat['image_auroc']:.4f}" in text
    assert f"{flat['per_defect_type']['scratch']['image_auroc']:.4f}" in text
    assert "<td>overall</td><td>6</td>" in text and "<td>scratch</td>" in text
    assert "No examples shown" in text and len(list((tmp_path / "panels").glob("*.png"))) == 6


def test_examples_include_anomalous_and_good(full_report):
    index, data = full_report[:2]
    text = index.read_text()
    examples = text[text.index("<h2>Examples</h2>") : text.index('<h2 id="every-image">')]
    shown = set(re.findall(r'src="(panels/[^"]+)"', examples))
    stems = safe_file_stems(data["names"])
    shown_indices = {i for i, stem in enumerate(stems) if f"panels/{stem}.png" in shown}
    assert len(shown_indices) == len(shown) == 6
    labels = data["labels"]
    assert any(labels[i] for i in shown_indices) and any(not labels[i] for i in shown_indices)
    assert len(list((index.parent / "panels").glob("*.png"))) == 6


def test_select_examples_groups_and_budget():
    rng = np.random.default_rng(1)
    scores, labels = rng.random(20), rng.random(20) < 0.5
    chosen = select_examples(scores, labels, max_examples=7)
    picked = [i for group in chosen.values() for i in group]
    assert len(picked) == len(set(picked)) == 7
    bad = np.flatnonzero(labels)
    good = np.flatnonzero(~labels)
    assert chosen["highest-scoring anomalous"][0] == bad[np.argmax(scores[bad])]
    assert chosen["lowest-scoring anomalous"][0] == bad[np.argmin(scores[bad])]
    assert chosen["highest-scoring good"][0] == good[np.argmax(scores[good])]
    assert select_examples(scores, labels, max_examples=7) == chosen


def test_select_examples_fills_budget_from_other_groups():
    chosen = select_examples([0.1, 0.5, 0.3, 0.2], [0, 0, 0, 0], max_examples=3)
    assert chosen["highest-scoring anomalous"] == chosen["lowest-scoring anomalous"] == []
    assert chosen["highest-scoring good"] == [1, 2, 3]
    assert sum(map(len, select_examples([0.1, 0.2], [1, 0], max_examples=12).values())) == 2


def test_names_with_slashes_are_sanitized_and_unique(full_report):
    index, data = full_report[:2]
    stems = safe_file_stems(data["names"])
    assert len({s.lower() for s in stems}) == len(stems)
    for stem in stems:
        assert re.fullmatch(r"[A-Za-z0-9._-]+", stem) and not stem.startswith(".")
    files = sorted(p.name for p in (index.parent / "panels").iterdir())
    assert files == sorted(f"{s}.png" for s in stems)
    escaped = [index.parent / "003.png", index.parent.parent / "003.png"]
    assert not any(p.exists() for p in escaped), "a name escaped out_dir"


def test_report_without_masks_or_thresholds(tmp_path):
    data = fake_evaluation()
    data["masks"] = None
    index = write_report(tmp_path, **data, max_examples=2)
    links = linked_files(index)
    assert "roc_pixel.png" not in links and not (tmp_path / "roc_pixel.png").exists()
    assert "roc_image.png" in links and "score_histogram.png" in links
    assert len(set(link for link in links if link.startswith("panels/"))) == 6
    assert "No thresholds given" in index.read_text()
    assert "No metrics given" in index.read_text()


def test_single_class_report_skips_roc(tmp_path):
    data = fake_evaluation()
    data["labels"] = np.zeros(6, int)
    data["masks"] = np.zeros_like(data["masks"])
    index = write_report(tmp_path, **data, max_examples=1)
    assert not (tmp_path / "roc_image.png").exists()
    assert not (tmp_path / "roc_pixel.png").exists()
    assert "roc_image.png not drawn" in index.read_text()


def test_names_are_html_escaped(tmp_path):
    names = [f"<b>evil</b>&{i}.png" for i in range(6)]
    index = write_report(tmp_path, **fake_evaluation(names=names), max_examples=1)
    text = index.read_text()
    assert "<b>evil" not in text
    shown = select_examples(fake_evaluation()["scores"], fake_evaluation()["labels"], 1)
    (i,) = [i for group in shown.values() for i in group]
    assert f"&lt;b&gt;evil&lt;/b&gt;&amp;{i}.png" in text


def test_no_temporary_files_left(full_report):
    out = full_report[0].parent
    leftovers = [p for p in out.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]
    assert leftovers == []


def test_mismatched_inputs_raise_clear_error(tmp_path):
    data = fake_evaluation()
    data["scores"] = data["scores"][:4]
    with pytest.raises(ValueError, match="scores has 4 entries"):
        write_report(tmp_path, **data)


def test_save_map_png_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    anomaly_map = rng.random((20, 28)).astype(np.float32)
    path = save_map_png(tmp_path / "maps" / "m.png", anomaly_map)
    back = np.asarray(Image.open(path))
    assert back.dtype == np.uint8 and back.shape == (20, 28)
    assert back.max() == 255
    assert back.flat[np.argmax(anomaly_map)] == 255
    assert np.corrcoef(back.ravel(), anomaly_map.ravel())[0, 1] > 0.99

    half = np.asarray(Image.open(save_map_png(tmp_path / "h.png", anomaly_map, vmax=2 * anomaly_map.max())))
    assert 126 <= half.max() <= 129

    zeros = np.asarray(Image.open(save_map_png(tmp_path / "z.png", np.zeros((8, 8)))))
    assert zeros.max() == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.png", "maps", "z.png"]


def test_save_map_png_rejects_non_2d(tmp_path):
    with pytest.raises(ValueError, match="bad.png.*2-D"):
        save_map_png(tmp_path / "bad.png", np.zeros((2, 8, 8)))


def test_overlay_blends_map_over_image():
    image = np.full((16, 16, 1), 0.5)
    heat = np.zeros((16, 16))
    heat[4:8, 4:8] = 1.0
    blended = overlay(image, heat, alpha=0.5)
    assert blended.dtype == np.uint8 and blended.shape == (16, 16, 3)
    hot, cold = blended[5, 5].astype(int), blended[0, 0].astype(int)
    assert hot[0] > hot[2] and cold[2] > cold[0]  # jet: red where high, blue where low
    assert np.array_equal(overlay(image, heat, alpha=0.0), np.full((16, 16, 3), 128, np.uint8))


def test_pixel_sample_is_deterministic_and_bounded():
    rng = np.random.default_rng(3)
    maps, masks = rng.random((4, 50, 50)), rng.random((4, 50, 50)) > 0.9
    truth, values = report._pixel_sample(maps, masks, limit=1000)
    assert truth.shape == values.shape == (1000,)
    again = report._pixel_sample(maps, masks, limit=1000)
    assert np.array_equal(values, again[1]) and np.array_equal(truth, again[0])
    all_truth, all_values = report._pixel_sample(maps, masks, limit=10**6)
    assert all_values.size == maps.size


def test_operating_point_counts_and_recall_per_defect(full_report):
    index = full_report[0]
    text = index.read_text()
    section = text[text.index("<h2>Operating point</h2>") : text.index("<h2>Plots</h2>")]
    # Good maps stay below 0.1 and every defect lights up to 0.5: 3 + 3 right at threshold 0.3.
    assert "<tr><td>good</td><td>3</td><td>0</td></tr>" in section
    assert "<tr><td>anomalous</td><td>0</td><td>3</td></tr>" in section
    assert "<td>recall: hole</td><td>1.000</td>" in section and "<td>recall: scratch</td><td>1.000</td>" in section
    assert "pr_image.png" in linked_files(index)


def test_unsupported_target_is_called_out(tmp_path):
    thresholds = {
        "image": 0.3,
        "region": 0.3,
        "target_fpr": 0.01,
        "supported_fpr": 0.1,
        "num_images": 9,
        "target_supported": False,
    }
    text = write_report(tmp_path, **fake_evaluation(), thresholds=thresholds).read_text()
    assert "is not supported by 9 calibration images" in text and "0.1" in text


def _calibrated(num_images=20, supported_fpr=1 / 21):
    return {"image": 0.3, "region": 0.3, "target_fpr": 0.05, "supported_fpr": supported_fpr, "num_images": num_images}


def test_a_broken_promise_is_called_out_with_its_chance(tmp_path):
    data = fake_evaluation()
    data["scores"][:3] = 0.9  # every good image above the threshold
    data["maps"][:3, 0, 0] = 0.9
    text = write_report(tmp_path / "broken", **data, thresholds=_calibrated()).read_text()
    match = re.search(r'class="wrong"><strong>Broken promise: 3 of 3 good images .* probability ([0-9.e-]+)', text)
    assert match, "no broken-promise line"
    assert float(match.group(1)) < 0.05 and "calibrate again" in text
    kept = write_report(tmp_path / "kept", **fake_evaluation(), thresholds=_calibrated()).read_text()
    assert "Broken promise" not in kept


def test_mean_good_map_is_shown_and_a_fixed_spot_flagged(tmp_path):
    data = fake_evaluation()
    text = write_report(tmp_path / "even", **data).read_text()
    assert 'src="mean_good_map.png"' in text and (tmp_path / "even" / "mean_good_map.png").is_file()
    assert "false defect planted" not in text
    data["maps"][:3, :8, :8] += 1.0  # the same corner in every good map
    text = write_report(tmp_path / "spot", **data).read_text()
    assert "false defect planted" in text


def test_a_report_that_fails_half_way_leaves_the_previous_one_whole(tmp_path, monkeypatch):
    import errno

    from edge.errors import OutputError

    out = tmp_path / "report"
    first = write_report(out, **fake_evaluation(), max_examples=2)
    before = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(report, "_write_panels", disk_full)
    with pytest.raises(OutputError, match="report: cannot write: No space left on device"):
        write_report(out, **fake_evaluation(), max_examples=2)
    after = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before and first.is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["report"]  # no temporary folder left behind


def test_identity_header_and_a_row_for_every_image(tmp_path):
    data = fake_evaluation()
    identity = {"Model": "model.keras, sha256 " + "ab" * 32, "Configuration": "32 x 32 px (height x width)"}
    text = write_report(tmp_path, **data, thresholds=_calibrated(), identity=identity, max_examples=1).read_text()
    header = text[text.index('<table class="identity">') : text.index("</table>")]
    assert "sha256 " + "ab" * 32 in header and "32 x 32 px (height x width)" in header
    table = text[text.index('<table id="images">') :]
    rows = re.findall(r'<tr( class="wrong")? data-verdict="(\w+)" data-truth="(\w+)" data-right="(\w+)"', table)
    assert len(rows) == 6
    for (wrong, verdict, truth, right), label, kind in zip(rows, data["labels"], data["defect_types"]):
        assert truth == kind and (verdict == "anomalous") == (right == ("yes" if label else "no"))
        assert bool(wrong) == (right == "no")
    for stem in safe_file_stems(data["names"]):  # every name links to its own panels
        assert f'<a href="panels/{stem}.png">' in table and (tmp_path / "panels" / f"{stem}.png").is_file()
    assert "No run identity given" in write_report(tmp_path / "bare", **data, max_examples=0).read_text()


def test_values_are_shown_as_words_not_python(tmp_path):
    thresholds = {**_calibrated(), "target_supported": True}
    metrics = {"overall": {"image_auroc": 0.5}, "rates": {"false_positive_rate": 0.25}}
    text = write_report(tmp_path, **fake_evaluation(), thresholds=thresholds, metrics=metrics).read_text()
    assert "<td>target supported</td><td>yes</td>" in text
    body = text.split("</style>")[1].split("<script>")[0]  # the page without its CSS and script
    assert "False" not in body and "True" not in body and "{" not in body
    assert "<td>rates</td><td>false positive rate 0.2500</td>" in body


def _lime_pixels(png: Path) -> int:
    pixels = np.asarray(Image.open(png).convert("RGB")).astype(int)
    return int(((pixels[..., 1] > 200) & (pixels[..., 0] < 80) & (pixels[..., 2] < 80)).sum())


def test_true_outline_is_drawn_on_the_input_and_the_threshold_fits_the_colour_bar(tmp_path):
    data = fake_evaluation()
    data["images"] = np.full_like(data["images"], 0.5)  # grey: only outlines are coloured
    data["reconstructions"] = data["images"]
    write_report(tmp_path, **data, max_examples=0)
    stems = safe_file_stems(data["names"])
    assert _lime_pixels(tmp_path / "panels" / f"{stems[3]}.png") > 20  # a defect: its outline
    assert _lime_pixels(tmp_path / "panels" / f"{stems[0]}.png") == 0  # a good image: none
    from riad_tf.evaluation import Evaluation

    high = Evaluation(**{**data, "thresholds": {"image": 5.0, "region": 5.0}})
    assert report.map_scale(high) >= 5.0 > data["maps"].max()  # the threshold's mark stays on the bar


def test_a_full_disk_names_the_report_file_not_its_temporary_folder(tmp_path, monkeypatch):
    import errno

    from edge.errors import OutputError
    from edge.files import atomic_path

    def full_disk(fig, path):
        with atomic_path(path):  # as a real write fails: OutputError naming the file being written
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(report, "save_figure", full_disk)
    with pytest.raises(OutputError) as caught:
        write_report(tmp_path / "report", **fake_evaluation(), max_examples=1)
    message = str(caught.value)
    assert message.startswith(str(tmp_path / "report" / "")) and "No space left on device" in message
    assert ".report." not in message  # not the temporary folder, which is gone
