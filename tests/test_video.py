"""Video anomaly detection: layouts, frame decoding, temporal smoothing, frame AUROC, CLI.

The synthetic videos are a moving stripe texture in which a bright object
appears for a known span of frames; they are written as lossless FFV1 `.avi`
files (OpenCV) and as folders of 8-bit `.tif` frames.
"""

import csv
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io
from click.testing import CliRunner
from PIL import Image
from sklearn.metrics import roc_auc_score

from edge.images import prepare_image
from edge.temporal import minmax_normalise, temporal_smoothing
from riad_tf.config import RiadConfig
from riad_tf.data import DataError
from riad_tf.video import (
    Video,
    exclude_videos,
    holdout_clips,
    list_videos,
    load_video_dataset,
    read_label_csv,
    read_ped2_ground_truth,
    resolve_video_layout,
    summarize_videos,
    validate_videos,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
FRAME_SHAPE = (48, 64)  # resized to the model's 32 x 32
NUM_FRAMES = 14
OBJECT_SPAN = (5, 10)  # 0-based, half-open: frames 6..10 in 1-based numbering


# ----------------------------------------------------------------------------
# Synthetic videos


def moving_texture(seed: int, span=None, num_frames: int = NUM_FRAMES) -> np.ndarray:
    """uint8 (T, H, W) grey frames: stripes drifting 2 px a frame, an object during `span`."""
    rng = np.random.default_rng(seed)
    height, width = FRAME_SHAPE
    y, x = np.mgrid[0:height, 0:width]
    frames = []
    for t in range(num_frames):
        values = 0.5 + 0.25 * np.sin(2 * np.pi * (x + 2 * t) / 9) * np.cos(2 * np.pi * y / 11)
        values = values + 0.03 * rng.standard_normal(values.shape)
        if span and span[0] <= t < span[1]:
            values[14:30, 18 + 2 * t : 34 + 2 * t] = 0.97  # the object walks in
        frames.append(np.round(np.clip(values, 0, 1) * 255).astype(np.uint8))
    return np.stack(frames)


def span_labels(span, num_frames: int = NUM_FRAMES) -> np.ndarray:
    labels = np.zeros(num_frames, np.uint8)
    if span:
        labels[span[0] : span[1]] = 1
    return labels


def write_video(path: Path, frames: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), 10, frames.shape[2:0:-1])
    assert writer.isOpened(), "OpenCV cannot write FFV1 here"
    for frame in frames:
        writer.write(np.repeat(frame[..., None], 3, axis=-1))
    writer.release()
    return path


def write_frame_folder(folder: Path, frames: np.ndarray, pattern: str = "{:03d}.tif") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames, start=1):
        Image.fromarray(frame).save(folder / pattern.format(i))
    return folder


def write_label_csv(path: Path, labels: dict) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["video", "frame", "label"])
        for name, values in labels.items():
            writer.writerows([name, i, int(v)] for i, v in enumerate(values, start=1))
    return path


# Test videos of every layout: (frames, labels); the second has no anomaly in the
# first half, the third none at all.
TEST_SPANS = {0: OBJECT_SPAN, 1: (8, 13), 2: None}


def make_ped2(root: Path) -> dict:
    for i in range(2):
        write_frame_folder(root / "Train" / f"Train{i + 1:03d}", moving_texture(10 + i))
    expected = {}
    for i, span in TEST_SPANS.items():
        name = f"Test{i + 1:03d}"
        write_frame_folder(root / "Test" / name, moving_texture(20 + i, span))
        expected[name] = span_labels(span)
    # A pixel-mask folder, as Ped2 ships them: not a video.
    write_frame_folder(root / "Test" / "Test001_gt", np.zeros((3, 8, 8), np.uint8), "{:03d}.bmp")
    entries = [f"[{s[0] + 1}:{s[1]}]" if s else "[]" for s in TEST_SPANS.values()]
    lines = ["% UCSD Ped2 ground truth", "TestDataset = {};"]
    lines += [f"TestDataset.gt{{{i}}} = {entry};" for i, entry in enumerate(entries, start=1)]
    (root / "Test" / "UCSDped2.m").write_text("\n".join(lines) + "\n")
    return expected


def make_avenue(root: Path) -> dict:
    for i in range(2):
        write_video(root / "training_videos" / f"{i + 1:02d}.avi", moving_texture(10 + i))
    expected = {}
    mask_dir = root / "ground_truth_demo" / "testing_label_mask"
    mask_dir.mkdir(parents=True)
    for i, span in TEST_SPANS.items():
        name = f"{i + 1:02d}"
        write_video(root / "testing_videos" / f"{name}.avi", moving_texture(20 + i, span))
        expected[name] = span_labels(span)
        volume = np.empty((1, NUM_FRAMES), dtype=object)
        for t, label in enumerate(expected[name]):
            volume[0, t] = np.full((6, 8), label, np.uint8)
        scipy.io.savemat(mask_dir / f"{i + 1}_label.mat", {"volLabel": volume})
    return expected


def make_generic(root: Path) -> dict:
    write_video(root / "train" / "cam_a.avi", moving_texture(10))
    write_frame_folder(root / "train" / "cam_b", moving_texture(11), "frame_{}.png")
    expected = {}
    for i, span in TEST_SPANS.items():
        name = f"clip{i}"
        frames = moving_texture(20 + i, span)
        if i % 2:
            write_frame_folder(root / "test" / name, frames, "frame_{}.png")
        else:
            write_video(root / "test" / f"{name}.avi", frames)
        expected[name] = span_labels(span)
    write_label_csv(root / "labels.csv", expected)
    return expected


MAKERS = {"ped2": make_ped2, "avenue": make_avenue, "video": make_generic}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    return {layout: (root / layout, make(root / layout)) for layout, make in MAKERS.items()}


def tiny_config(channels=1) -> RiadConfig:
    return RiadConfig(image_size=(32, 32), channels=channels, widths=(4, 8, 8, 16, 16), ks=(2, 4), smoothing=5)


# ----------------------------------------------------------------------------
# Layouts and frames


@pytest.mark.parametrize("layout", list(MAKERS))
def test_each_layout_loads_the_synthetic_video(datasets, layout):
    root, expected = datasets[layout]
    assert resolve_video_layout(root, "auto") == layout
    split = validate_videos(load_video_dataset(root, layout))
    assert len(split.train) == 2 and all(v.num_frames == NUM_FRAMES for v in split.train)
    assert [v.name for v in split.test] == list(expected)
    for video in split.test:
        np.testing.assert_array_equal(video.labels, expected[video.name])
        assert video.num_frames == NUM_FRAMES
    # Frames come out in order, as the model sees them (lossless codec: exact up to float rounding).
    config = tiny_config()
    seed = 20 + list(expected).index(split.test[0].name)
    truth = np.stack([prepare_image(f, config.image_size, 1) for f in moving_texture(seed, TEST_SPANS[0])])
    frames = split.test[0].read(config)
    assert frames.shape == (NUM_FRAMES, 32, 32, 1) and frames.dtype == np.float32
    np.testing.assert_allclose(frames, truth, atol=1e-6)
    assert "3 test videos" in split.describe() and f"{NUM_FRAMES * 3} frames" in split.describe()


@pytest.mark.parametrize("channels", [1, 3])
def test_frame_folder_and_lossless_video_give_the_same_inputs(tmp_path, channels):
    frames = moving_texture(3, OBJECT_SPAN)
    write_frame_folder(tmp_path / "f", frames)
    write_video(tmp_path / "v.avi", frames)
    folder, video = list_videos(tmp_path)  # in name order: "f", then "v.avi"
    assert folder.frame_paths is not None and video.frame_paths is None
    config = tiny_config(channels)
    from_folder, from_video = folder.read(config), video.read(config)
    assert from_folder.shape == (NUM_FRAMES, 32, 32, channels)
    np.testing.assert_allclose(from_video, from_folder, atol=1e-6)
    # A subset of frames, in order, from the middle of the video.
    np.testing.assert_allclose(video.read(config, range(3, 12, 4)), from_folder[3:12:4], atol=1e-6)


def test_frame_folders_are_read_in_natural_order(tmp_path):
    frames = np.stack([np.full((16, 16), 10 * i, np.uint8) for i in range(12)])
    write_frame_folder(tmp_path / "train" / "a", frames, "frame_{}.png")  # frame_10 after frame_9
    write_frame_folder(tmp_path / "test" / "b", frames, "frame_{}.png")
    write_label_csv(tmp_path / "labels.csv", {"b": np.zeros(12)})
    split = validate_videos(load_video_dataset(tmp_path, "video"))
    values = split.train[0].read(RiadConfig(image_size=(16, 16), ks=(2, 4), channels=1, smoothing=5))
    np.testing.assert_allclose(values[:, 0, 0, 0], np.arange(12) * 10 / 255, atol=1e-6)


def test_grey_frames_repeat_to_three_channels_and_resize(tmp_path):
    frame = moving_texture(0)[0]
    rgb = prepare_image(frame, (32, 32), 3)
    grey = prepare_image(frame, (32, 32), 1)
    assert rgb.shape == (32, 32, 3) and grey.shape == (32, 32, 1)
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])
    np.testing.assert_allclose(rgb[..., :1], grey, atol=1e-6)
    assert 0.0 <= grey.min() and grey.max() <= 1.0


def test_ped2_ground_truth_parser(tmp_path):
    m = tmp_path / "UCSDped2.m"
    m.write_text(
        "TestDataset = {};\n% a comment [1:2]\nTestDataset.gt{1} = [61:180];\n"
        "TestDataset.gt{2} = [5:90, 140:200];\nTestDataset.gt{3} = [7];\n"
    )
    assert read_ped2_ground_truth(m) == [[(61, 180)], [(5, 90), (140, 200)], [(7, 7)]]
    m.write_text("TestDataset.gt{1} = [1:4];\nTestDataset.gt{3} = [2:3];\n")
    with pytest.raises(DataError, match=r"UCSDped2\.m: no entry gt\{2\}"):
        read_ped2_ground_truth(m)
    m.write_text("TestDataset.gt{1} = [9:4];\n")
    with pytest.raises(DataError, match="bad span"):
        read_ped2_ground_truth(m)


def test_ped2_spans_past_the_last_frame_are_an_error(tmp_path):
    make_ped2(tmp_path)
    (tmp_path / "Test" / "UCSDped2.m").write_text(
        f"TestDataset.gt{{1}} = [2:{NUM_FRAMES + 5}];\nTestDataset.gt{{2}} = [1:2];\nTestDataset.gt{{3}} = [];\n"
    )
    with pytest.raises(DataError, match=r"gt\{1\} \(Test001\).*passes the last frame"):
        load_video_dataset(tmp_path, "ped2")


@pytest.mark.parametrize(
    "rows, problem",
    [
        ([("a", 1, 0), ("a", 3, 1)], "no row for frame 2"),
        ([("a", 1, 0), ("a", 1, 1)], "listed twice"),
        ([("a", 0, 0), ("a", 1, 1)], "1-based"),
        ([("a", 1, 2)], "label 0 or 1"),
    ],
)
def test_label_csv_errors_name_the_file(tmp_path, rows, problem):
    path = tmp_path / "labels.csv"
    path.write_text("video,frame,label\n" + "".join(f"{v},{f},{y}\n" for v, f, y in rows))
    with pytest.raises(DataError, match=problem) as err:
        read_label_csv(path)
    assert str(path) in str(err.value)


def test_labels_must_cover_every_frame(datasets, tmp_path):
    root, expected = datasets["video"]
    labels = dict(expected)
    labels["clip0"] = labels["clip0"][:-2]
    shutil.copytree(root, tmp_path / "data")
    write_label_csv(tmp_path / "data" / "labels.csv", labels)
    with pytest.raises(DataError, match=f"clip0.avi: {NUM_FRAMES} frames but its labels cover {NUM_FRAMES - 2}"):
        validate_videos(load_video_dataset(tmp_path / "data", "video"))


def test_unreadable_video_is_a_one_line_error(datasets, tmp_path):
    root, _ = datasets["video"]
    shutil.copytree(root, tmp_path / "data")
    (tmp_path / "data" / "train" / "broken.avi").write_bytes(b"not a video at all")
    with pytest.raises(DataError, match=r"broken\.avi: cannot open video"):
        validate_videos(load_video_dataset(tmp_path / "data", "video"))


def test_exclude_videos_matches_numbers_and_rejects_unknown_names():
    videos = [Video(f"{i:02d}", Path(f"{i:02d}.avi")) for i in range(1, 5)]
    kept, excluded = exclude_videos(videos, ["2", "04"])
    assert [v.name for v in kept] == ["01", "03"] and [v.name for v in excluded] == ["02", "04"]
    with pytest.raises(DataError, match="no test video named '7'"):
        exclude_videos(videos, ["7"])


def test_holdout_keeps_whole_videos_apart():
    videos = [Video(str(i), Path(f"{i}.avi"), num_frames=20 + i) for i in range(10)]
    kept, held = holdout_clips(videos, 0.2, seed=1)
    assert len(held) == 2 and len(kept) == 8
    assert {c.video.name for c in kept}.isdisjoint(c.video.name for c in held)
    assert all(c.frames == range(c.video.num_frames) for c in kept + held)
    # One video: its last frames are held out, contiguous.
    kept, held = holdout_clips(videos[:1], 0.25)
    assert kept[0].frames == range(0, 15) and held[0].frames == range(15, 20)


# ----------------------------------------------------------------------------
# Smoothing and metrics


def test_smoothing_is_the_mean_of_the_last_three_frames_exactly():
    scores = np.random.default_rng(0).random(50) * 10
    smoothed = temporal_smoothing(scores)
    expected = [sum(scores[max(0, t - 2) : t + 1]) / len(scores[max(0, t - 2) : t + 1]) for t in range(50)]
    np.testing.assert_array_equal(smoothed, expected)
    assert smoothed[0] == scores[0] and smoothed[1] == (scores[0] + scores[1]) / 2
    # Other windows; window 1 changes nothing; a window longer than the video averages what exists.
    for window in (1, 2, 5):
        want = [np.mean(scores[max(0, t - window + 1) : t + 1]) for t in range(50)]
        np.testing.assert_allclose(temporal_smoothing(scores, window), want, rtol=1e-12)
    np.testing.assert_array_equal(temporal_smoothing(scores, 1), scores)
    np.testing.assert_allclose(temporal_smoothing(scores[:2], 7), [scores[0], scores[:2].mean()])
    with pytest.raises(ValueError, match="window"):
        temporal_smoothing(scores, 0)


def test_minmax_normalise():
    np.testing.assert_allclose(minmax_normalise([2.0, 6.0, 4.0]), [0.0, 1.0, 0.5])
    np.testing.assert_array_equal(minmax_normalise([3.0, 3.0]), [0.0, 0.0])


def test_frame_auroc_matches_sklearn_on_the_same_scores():
    rng = np.random.default_rng(4)
    lengths = (30, 25, 40)
    labels = [(rng.random(n) < 0.3).astype(np.uint8) for n in lengths]
    scores = [rng.random(n) + 0.4 * y + 2.0 * i for i, (n, y) in enumerate(zip(lengths, labels))]
    summary = summarize_videos(["a", "b", "c"], scores, labels, window=3)
    truth = np.concatenate(labels)
    smoothed = [np.array([np.mean(s[max(0, t - 2) : t + 1]) for t in range(len(s))]) for s in scores]
    normalised = [(s - s.min()) / (s.max() - s.min()) for s in smoothed]
    assert summary["frame_auroc"] == pytest.approx(roc_auc_score(truth, np.concatenate(smoothed)), abs=1e-12)
    assert summary["frame_auroc_raw"] == pytest.approx(roc_auc_score(truth, np.concatenate(scores)), abs=1e-12)
    assert summary["frame_auroc_normalised"] == pytest.approx(
        roc_auc_score(truth, np.concatenate(normalised)), abs=1e-12
    )
    # The per-video offsets make normalisation matter here.
    assert summary["frame_auroc_normalised"] != pytest.approx(summary["frame_auroc"])
    for name, s, y in zip("abc", smoothed, labels):
        assert summary["per_video"][name]["frame_auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        assert summary["per_video"][name]["num_anomalous"] == int(y.sum())
    assert summary["num_frames"] == sum(lengths)
    # A video of one class has no AUROC of its own.
    one_class = summarize_videos(["z"], [np.arange(5.0)], [np.zeros(5)], window=3)
    assert one_class["per_video"]["z"]["frame_auroc"] is None and one_class["frame_auroc"] is None


# ----------------------------------------------------------------------------
# The CLI, end to end


def test_cli_trains_and_evaluates_a_tiny_video_config(datasets, tmp_path):
    from riad_tf.cli import main

    root, expected = datasets["video"]
    run = tmp_path / "run"
    runner = CliRunner()
    result = runner.invoke(
        main,
        [
            "train",
            "--config",
            str(CONFIGS / "ped2.yaml"),
            "--data",
            str(root),
            "--layout",
            "video",
            "--out",
            str(run),
            "--epochs",
            "2",
            "--batch-size",
            "4",
            "--image-size",
            "32",
            "--no-progress",
            "--set",
            "widths=[4,8,8,16,16]",
            "--set",
            "smoothing=5",
            "--set",
            "val_fraction=0.5",
            "--set",
            "exclude_test_videos=[clip2]",
        ],
    )
    assert result.exit_code == 0, result.output
    thresholds = json.loads((run / "thresholds.json").read_text())
    assert thresholds["temporal_window"] == 3 and "smoothed_frame" in thresholds
    assert len(json.loads((run / "history.json").read_text())) == 2

    result = runner.invoke(main, ["evaluate", str(run), "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    out = tmp_path / "eval"
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["excluded_test_videos"] == ["clip2"]
    assert list(summary["per_video"]) == ["clip0", "clip1"]
    assert summary["num_frames"] == 2 * NUM_FRAMES
    # The stored frame scores reproduce the metrics: smoothing, normalisation and sklearn's AUROC.
    rows = list(csv.DictReader(open(out / "scores.csv")))
    assert len(rows) == 2 * NUM_FRAMES
    truth = np.array([int(r["label"]) for r in rows])
    np.testing.assert_array_equal(truth, np.concatenate([expected["clip0"], expected["clip1"]]))
    smoothed = []
    for name in ("clip0", "clip1"):
        raw = np.array([float(r["score"]) for r in rows if r["video"] == name])
        stored = np.array([float(r["smoothed"]) for r in rows if r["video"] == name])
        np.testing.assert_array_equal(stored, temporal_smoothing(raw, 3))
        smoothed.append(stored)
    assert summary["frame_auroc"] == pytest.approx(roc_auc_score(truth, np.concatenate(smoothed)), abs=1e-12)
    assert "| smoothed (mean of last 3 frames" in result.output
    report = (out / "report" / "index.html").read_text()
    assert "clip0" in report and "min-max" in report
    assert sorted(p.name for p in (out / "report" / "videos").iterdir()) == ["clip0.png", "clip1.png"]
