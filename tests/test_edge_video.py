"""`riad-edge video`: an exported model scores a video's frames, with the training side's smoothing.

One tiny untrained detector (32 x 32, widths (4, 8, 8, 16, 16)) is exported to
ONNX once per module; the synthetic video is a drifting colour texture with an
object walking in, written as a lossless FFV1 `.avi` and as a folder of PNGs.
"""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from test_video import FRAME_SHAPE, moving_texture

from edge.cli import main
from edge.images import prepare_image
from edge.metadata import ModelMetadata, read_metadata, update_metadata
from edge.records import check_record

REPO = Path(__file__).resolve().parents[1]
SIZE = 32
NUM_FRAMES = 11  # not a multiple of --batch-size 4: the last batch is short


def colour_frames(seed: int = 0) -> np.ndarray:
    """uint8 RGB (T, H, W, 3): the grey moving texture of test_video, tinted per channel."""
    grey = moving_texture(seed, span=(3, 7), num_frames=NUM_FRAMES).astype(np.float32) / 255.0
    rgb = np.stack([grey, 0.8 * grey + 0.1, 1.0 - 0.6 * grey], axis=-1)
    return np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def frames():
    return colour_frames()


@pytest.fixture(scope="module")
def video_file(frames, tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), 10, FRAME_SHAPE[::-1])
    assert writer.isOpened(), "OpenCV cannot write FFV1 here"
    for frame in frames:
        writer.write(frame[..., ::-1])  # OpenCV writes BGR
    writer.release()
    return path


@pytest.fixture(scope="module")
def frame_folder(frames, tmp_path_factory):
    folder = tmp_path_factory.mktemp("frames")
    for i, frame in enumerate(frames, start=1):  # 1.png ... 11.png: natural order puts 10 after 9
        cv2.imwrite(str(folder / f"{i}.png"), frame[..., ::-1])
    return folder


@pytest.fixture(scope="module")
def detector():
    import keras

    from riad_tf.config import RiadConfig
    from riad_tf.detector import Detector
    from riad_tf.model import build_unet

    keras.utils.set_random_seed(3)
    config = RiadConfig(image_size=(SIZE, SIZE), widths=(4, 8, 8, 16, 16), ks=(2, 4), smoothing=5, seed=1)
    assert config.temporal_window == 3
    return Detector(build_unet(config.input_shape, config.widths), config)


@pytest.fixture(scope="module")
def onnx_model(detector, tmp_path_factory):
    from riad_tf.export import export_detector

    written = export_detector(detector, tmp_path_factory.mktemp("export"), formats=("onnx",), batch=None)
    return written["onnx"]


def run_video(*args):
    result = CliRunner().invoke(main, ["video", *map(str, args)])
    return result


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def column(rows, name) -> np.ndarray:
    return np.array([float(row[name]) for row in rows])


def causal_means(scores, window):
    """The brief's definition, written out: mean of the last `window` scores (fewer at the start)."""
    return [
        sum(scores[max(0, t - window + 1) : t + 1]) / len(scores[max(0, t - window + 1) : t + 1])
        for t in range(len(scores))
    ]


# ----------------------------------------------------------------------------


def test_video_scores_match_keras_and_are_smoothed_over_three_frames(onnx_model, detector, video_file, tmp_path):
    from riad_tf.video.frames import decode_video

    assert read_metadata(onnx_model).config["temporal_window"] == 3  # the run's window reaches the device
    out = tmp_path / "out" / "scores.csv"
    result = run_video(onnx_model, video_file, "--output", out, "--batch-size", 4)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    check_record(summary)  # docs/records.md
    assert summary["frames"] == NUM_FRAMES and summary["window"] == 3 and summary["frames_per_s"] > 0

    rows = read_csv(out)
    assert list(rows[0]) == ["frame", "score", "smoothed"]
    assert [int(row["frame"]) for row in rows] == list(range(1, NUM_FRAMES + 1))
    scores = column(rows, "score")
    assert np.ptp(scores) > 0  # frames differ, so the smoothing below is not trivially true
    assert column(rows, "smoothed").tolist() == causal_means(scores.tolist(), 3)  # exactly

    # The training side's decoding and preprocessing, scored by the Keras detector.
    inputs = np.stack([prepare_image(f, (SIZE, SIZE), 3) for f in decode_video(video_file)])
    np.testing.assert_allclose(scores, detector.score(inputs)[1], atol=1e-5, rtol=0)


def test_window_option_normalise_and_frame_folders(onnx_model, video_file, frame_folder, tmp_path):
    from edge.temporal import minmax_normalise

    one = tmp_path / "one.csv"
    assert run_video(onnx_model, video_file, "--window", 1, "--output", one).exit_code == 0
    rows = read_csv(one)
    np.testing.assert_array_equal(column(rows, "smoothed"), column(rows, "score"))

    folder_csv = tmp_path / "folder.csv"
    result = run_video(
        onnx_model, frame_folder, "--window", 4, "--normalise", "--output", folder_csv, "--batch-size", 3
    )
    assert result.exit_code == 0, result.output
    folder_rows = read_csv(folder_csv)
    assert list(folder_rows[0]) == ["frame", "score", "smoothed", "normalised"]
    # The PNGs hold the lossless video's frames: same order (natural sort), same scores.
    np.testing.assert_allclose(column(folder_rows, "score"), column(rows, "score"), atol=1e-6, rtol=0)
    smoothed = column(folder_rows, "smoothed")
    assert smoothed.tolist() == causal_means(column(folder_rows, "score").tolist(), 4)
    np.testing.assert_array_equal(column(folder_rows, "normalised"), minmax_normalise(smoothed))
    assert column(folder_rows, "normalised").min() == 0 and column(folder_rows, "normalised").max() == 1


def test_the_window_and_threshold_come_from_the_metadata(onnx_model, video_file, tmp_path):
    model = tmp_path / onnx_model.name
    shutil.copy(onnx_model, model)
    meta = read_metadata(onnx_model).to_dict()
    meta["config"]["temporal_window"] = 5
    meta["thresholds"] = {"image": 0.5, "region": 0.5, "temporal_window": 5}
    reference = read_csv(_scored(onnx_model, video_file, tmp_path / "ref.csv", "--window", 5))
    smoothed = column(reference, "smoothed")
    meta["thresholds"]["smoothed_frame"] = float(np.median(smoothed))
    update_metadata(model, ModelMetadata.from_dict(meta))  # the model is recalibrated for 5 frames

    out = tmp_path / "five.csv"
    result = run_video(model, video_file, "--output", out)
    assert result.exit_code == 0, result.output
    rows = read_csv(out)
    assert column(rows, "smoothed").tolist() == smoothed.tolist()  # window 5, from the metadata
    anomalous = column(rows, "anomalous").astype(bool)
    np.testing.assert_array_equal(anomalous, smoothed > np.median(smoothed))
    assert json.loads(result.stdout.strip().splitlines()[-1])["anomalous_frames"] == anomalous.sum()

    # A threshold calibrated for 5 frames says nothing about a 2-frame average.
    result = run_video(model, video_file, "--window", 2, "--output", out)
    assert result.exit_code == 0, result.output
    assert "anomalous" not in read_csv(out)[0] and "another window" in result.stderr


def _scored(model, video, out, *options):
    result = run_video(model, video, "--output", out, *options)
    assert result.exit_code == 0, result.output
    return out


def test_bad_videos_fail_with_one_line_naming_the_file(onnx_model, tmp_path):
    corrupt = tmp_path / "corrupt.avi"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    out = tmp_path / "scores.csv"
    result = run_video(onnx_model, corrupt, "--output", out)
    assert result.exit_code == 3 and str(corrupt) in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and not out.exists()

    zero = tmp_path / "zero.avi"  # a valid container without a frame
    cv2.VideoWriter(str(zero), cv2.VideoWriter_fourcc(*"FFV1"), 10, FRAME_SHAPE[::-1]).release()
    result = run_video(onnx_model, zero, "--output", out)
    assert result.exit_code == 3 and str(zero) in result.output and "no frames" in result.output, result.output

    missing = tmp_path / "missing.avi"
    result = run_video(onnx_model, missing, "--output", out)
    assert result.exit_code != 0 and "missing.avi" in result.output and not out.exists()

    empty = tmp_path / "empty_frames"
    empty.mkdir()
    result = run_video(onnx_model, empty, "--output", out)
    assert result.exit_code == 3 and str(empty) in result.output and not out.exists()

    broken = tmp_path / "broken_frames"
    broken.mkdir()
    cv2.imwrite(str(broken / "1.png"), np.zeros((8, 8), np.uint8))
    (broken / "2.png").write_bytes(b"not a png")
    result = run_video(onnx_model, broken, "--output", out)
    assert result.exit_code == 3 and "2.png" in result.output and not out.exists()


def test_the_video_command_imports_no_tensorflow(onnx_model, video_file, tmp_path):
    script = f"""
import sys
from click.testing import CliRunner
import edge.cli, edge.temporal, edge.video
result = CliRunner().invoke(edge.cli.main, ["video", {str(onnx_model)!r}, {str(video_file)!r}, "--output", {str(tmp_path / "s.csv")!r}])
assert result.exit_code == 0, result.output
heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf_keras', 'tf2onnx'))
assert not heavy, heavy
print('ok')
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]
