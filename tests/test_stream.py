"""Line-scan inspection (`edge.stream`): sources, frames, tiles, strip map, regions, pipeline, CLI.

Two kinds of model:

- a test-only "runner" whose map is |grey - 0.5| (the strip's background is
  0.5), so the true anomaly map is known exactly: geometry, faults, the soak;
- a tiny RIAD U-Net trained here for a few seconds on a defect-free woven
  strip and exported to ONNX: the detection test and the CLI, end to end.

The real model's pixel threshold is calibrated on a defect-free strip:
2 x the largest value of its stitched map (the margin keeps other defect-free
strips, with other noise, free of regions; defects score about 4x higher).
"""

import dataclasses
import json
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edge.records import check_record
from edge.stream import (
    BadBlock,
    Frame,
    FrameAccumulator,
    FrameScorer,
    ImageLineScan,
    LineBlock,
    RegionTracker,
    StreamPipeline,
    StreamSettings,
    StripStitcher,
    box_iou,
    connected_regions,
    cut_tiles,
    open_source,
    register_source,
    tile_starts,
    tile_sums,
)
from edge.stream.sources import open_raw

TILE = 32
CALIBRATION_MARGIN = 2.0


class Records:
    """A writer that keeps the records."""

    def __init__(self):
        self.records = []

    def write(self, record):
        check_record(json.loads(json.dumps(record, allow_nan=False)))  # docs/records.md
        self.records.append(record)

    def of(self, kind):
        return [r for r in self.records if r["type"] == kind]

    def boxes(self):
        return [
            tuple(b["lines"][:1] + b["columns"][:1] + b["lines"][1:] + b["columns"][1:])
            for r in self.records
            for b in r.get("regions", [])
        ]


class DeviationRunner:
    """Test-only runner: map = |grey - 0.5| per pixel, score = its max. Optional delay per call."""

    image_size = (TILE, TILE)
    channels = 1
    thresholds = {"region": 0.2, "image": 0.2}

    def __init__(self, delay=0.0):
        self.delay, self.calls = delay, 0

    def __call__(self, tiles):
        self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        maps = np.abs(np.asarray(tiles, np.float32)[..., 0] - 0.5)
        return maps, maps.reshape(len(maps), -1).max(axis=1)


def _flat_strip(lines, width, seed=0):
    rng = np.random.default_rng(seed)
    return (0.5 + 0.05 * rng.uniform(-1, 1, (lines, width, 1))).astype(np.float32)


def _woven_strip(lines, width, seed):
    """The woven texture of `riad_tf.synthetic` over a whole strip (period 4), with noise."""
    rng = np.random.default_rng(seed)
    r = np.arange(lines, dtype=np.float32)[:, None]
    c = np.arange(width, dtype=np.float32)[None, :]
    grey = 0.5 + 0.15 * np.sin(np.pi * c / 2) + 0.15 * np.sin(np.pi * r / 2) + 0.05 * np.sin(np.pi * (r + c))
    grey = grey + 0.02 * rng.standard_normal(grey.shape).astype(np.float32)
    return np.clip(grey, 0, 1).astype(np.float32)[..., None]


def _plant(strip, boxes):
    """Bright and dark rectangles at inclusive (top, left, bottom, right) boxes."""
    strip = strip.copy()
    for i, (top, left, bottom, right) in enumerate(boxes):
        strip[top : bottom + 1, left : right + 1] = 0.95 if i % 2 == 0 else 0.05
    return strip


def _matched(found, truth):
    """For each truth box, the best IoU of a found box."""
    return [max((box_iou(f, t) for f in found), default=0.0) for t in truth]


# ----------------------------------------------------------------------------
# Building blocks


@pytest.mark.parametrize("length,stride", [(32, 16), (33, 16), (100, 24), (200, 32), (20, 8)])
def test_tiles_cover_every_pixel_and_stitch_to_the_mean(length, stride):
    starts = tile_starts(length, TILE, stride)
    assert starts[0] == 0 and starts[-1] == max(0, length - TILE)
    assert np.all(np.diff(starts) <= stride) and np.all(np.diff(starts) > 0)
    image = np.random.default_rng(1).random((length, 70, 1), dtype=np.float32)
    tiles, origins = cut_tiles(image, (TILE, TILE), (stride, stride))
    row, col = origins[-1]
    if length >= TILE:
        np.testing.assert_array_equal(tiles[-1], image[row : row + TILE, col : col + TILE])
    total, count = tile_sums(tiles[..., 0], origins, image.shape[:2])  # maps = the tiles themselves
    assert count.min() >= 1  # every pixel covered
    np.testing.assert_allclose(total / count, image[..., 0], atol=1e-6)  # the mean of equal values


def test_accumulator_overlaps_frames_and_skips_bad_data_keeping_line_numbers():
    strip = np.arange(50, dtype=np.float32)[:, None].repeat(6, axis=1) / 100
    acc = FrameAccumulator(height=8, overlap=3)
    frames = acc.push(LineBlock(strip[:20]), 0.0)
    frames += acc.push(BadBlock("corrupt", lines=5), 0.0)  # lines 20-24 lost
    frames += acc.push(LineBlock(np.zeros((3, 7), np.float32)), 0.0)  # wrong width: reported, 3 lines skipped
    frames += acc.push(LineBlock(strip[28:50]), 0.0) + acc.flush(0.0)
    assert acc.bad_blocks == 2 and "width 7, expected 6" in acc.faults[-1] and acc.lines_seen == 50
    for frame in frames:  # each frame holds exactly its strip lines
        np.testing.assert_allclose(frame.image[:, 0, 0], strip[frame.first_line : frame.last_line + 1, 0], atol=1e-6)
    starts = [f.first_line for f in frames]
    assert starts[:3] == [0, 5, 10] and 28 in starts  # step 5, then a restart after the bad data
    covered = {line for f in frames for line in range(f.first_line, f.last_line + 1)}
    assert covered == set(range(20)) | set(range(28, 50))


def test_stitcher_averages_overlapping_frames_and_releases_final_rows():
    stitcher = StripStitcher(width=3)
    first, rows, covered = stitcher.add(0, np.full((4, 3), 2.0), np.ones((4, 3)), next_start=3)
    assert first == 0 and rows.shape == (3, 3) and covered.all()
    first, rows, _ = stitcher.add(3, np.full((4, 3), 4.0), np.ones((4, 3)), next_start=6)
    np.testing.assert_allclose(rows, [[3.0] * 3, [4.0] * 3, [4.0] * 3])  # row 3 is in both frames: mean of 2 and 4
    first, rows, covered = stitcher.add(10, np.ones((2, 3)), np.ones((2, 3)), next_start=12)
    assert first == 6 and len(rows) == 6 and covered.tolist() == [True, False, False, False, True, True]


def test_regions_growing_across_row_blocks_are_reported_once():
    values = np.zeros((30, 20), np.float32)
    values[5:22, 3:6] = 1.0  # one region, fed in blocks of 4 rows
    values[25, 10] = 0.8
    tracker = RegionTracker(0.5)
    regions = [r for start in range(0, 30, 4) for r in tracker.add(start, values[start : start + 4])] + tracker.flush()
    assert [r.box for r in regions] == [(5, 3, 21, 5), (25, 10, 25, 10)]
    assert regions[0].pixels == 17 * 3 and regions[1].peak == pytest.approx(0.8)
    assert connected_regions(values, 0.5, first_row=100)[0][0].box == (105, 3, 121, 5)


# ----------------------------------------------------------------------------
# Geometry with the exact test runner


@pytest.mark.parametrize("frame_height,overlap,stride", [(64, 16, (16, 16)), (48, 0, (32, 20)), (100, 30, (24, 32))])
def test_defects_across_tile_and_frame_borders_get_their_strip_boxes(frame_height, overlap, stride):
    truth = [(10, 5, 14, 40), (frame_height - 6, 60, frame_height + 5, 75), (150, 28, 170, 36), (230, 150, 239, 159)]
    strip = _plant(_flat_strip(260, 160), truth)
    out = Records()
    settings = StreamSettings(frame_height=frame_height, overlap=overlap, stride=stride, queue_size=2)
    summary = StreamPipeline(DeviationRunner(), settings).run(ImageLineScan(strip, lines_per_block=13), out)
    assert sorted(out.boxes()) == sorted(truth)  # the map is exact, so the boxes are too
    assert summary["defects"] == len(truth) and summary["lines"] == summary["lines_inspected"] == 260
    clean = Records()
    assert (
        StreamPipeline(DeviationRunner(), settings).run(ImageLineScan(_flat_strip(260, 160, 3)), clean)["defects"] == 0
    )
    assert not any(r["anomalous"] for r in clean.of("frame"))


def test_corrupt_short_and_wrong_size_frames_are_counted_and_skipped(tmp_path):
    truth = [(20, 30, 29, 45), (7 * 40 + 15, 70, 7 * 40 + 24, 90)]  # in frame 0 and in frame 7, after the faults
    strip = _plant(_flat_strip(10 * 40, 128), truth)
    for i in range(10):
        Image.fromarray(np.round(strip[i * 40 : (i + 1) * 40, :, 0] * 255).astype(np.uint8)).save(
            tmp_path / f"f{i}.png"
        )
    (tmp_path / "f3.png").write_bytes(b"\x89PNG broken")  # corrupt
    Image.fromarray(np.zeros((40, 100), np.uint8)).save(tmp_path / "f4.png")  # wrong width
    Image.fromarray(np.zeros((12, 128), np.uint8)).save(tmp_path / "f5.png")  # short frame
    out = Records()
    summary = StreamPipeline(DeviationRunner(), StreamSettings(frame_height=40, overlap=8)).run(
        open_source(str(tmp_path)), out
    )
    faults = [r["reason"] for r in out.of("fault")]
    assert summary["bad_blocks"] == 3 and len(faults) == 3
    assert "f3.png" in faults[0] and "width 100" in faults[1] and "12 lines, expected 40" in faults[2]
    assert summary["lines"] == 400 and summary["lines_inspected"] == 400 - 3 * 40
    assert sorted(out.boxes()) == sorted(truth)  # the later defect is found where it is


# ----------------------------------------------------------------------------
# Bounded queues, policies, memory, Ctrl-C


def _rss_kib():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    pytest.skip("no /proc/self/status here to read the resident memory from")


def test_soak_keeps_resident_memory_flat():
    tile = _plant(_flat_strip(320, 256), [(100, 40, 110, 60)])
    settings = StreamSettings(frame_height=32, overlap=8, queue_size=4)

    def soak(repeat):
        out = Records()
        summary = StreamPipeline(DeviationRunner(), settings).run(
            ImageLineScan(tile, lines_per_block=16, repeat=repeat), out
        )
        return summary, len(out.of("frame"))

    soak(5)  # warm-up: allocators, thread stacks
    before = _rss_kib()
    started = time.perf_counter()
    summary, frames = soak(60)  # 19200 lines, 800 frames
    after = _rss_kib()
    assert frames == summary["frames"] >= 700 and summary["defects"] == 60
    assert time.perf_counter() - started < 30
    print(f"soak: {frames} frames, RSS {before} -> {after} KiB, {summary['lines_per_s']} lines/s")
    assert after - before < 8 * 1024  # flat within 8 MiB (one frame is 32 KiB; 800 frames kept would be 25+ MiB)


def test_drop_policy_counts_frames_inference_cannot_keep_up_with():
    strip = _flat_strip(64 * 40, 64)
    source = ImageLineScan(strip, line_rate=20000, lines_per_block=32)  # 2 ms per frame of 32 new lines
    settings = StreamSettings(frame_height=32, overlap=0, queue_size=2, batch_frames=1, policy="drop")
    summary = StreamPipeline(DeviationRunner(delay=0.02), settings).run(source, Records())
    assert summary["frames_dropped"] > 10 and summary["frames"] + summary["frames_dropped"] == 80
    assert summary["lines_inspected"] == 32 * summary["frames"] and summary["lines"] == 64 * 40
    blocked = StreamPipeline(DeviationRunner(delay=0.002), dataclasses.replace(settings, policy="block"))
    assert blocked.run(ImageLineScan(strip[:640], lines_per_block=32), Records())["frames_dropped"] == 0


def test_ctrl_c_flushes_the_outputs_and_the_summary(tmp_path):
    from edge.stream import JsonLines

    class InterruptingWriter(JsonLines):
        def write(self, record):
            super().write(record)
            if record.get("frame") == 3:
                raise KeyboardInterrupt

    writer = InterruptingWriter(tmp_path / "out.jsonl")
    source = ImageLineScan(_flat_strip(32 * 400, 64), line_rate=50000, lines_per_block=32)
    try:
        summary = StreamPipeline(DeviationRunner(), StreamSettings(frame_height=32, overlap=0)).run(source, writer)
    finally:
        writer.close()
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert summary["interrupted"] and records[-1] == summary and not (tmp_path / "out.jsonl.partial").exists()
    assert 4 <= summary["frames"] < 400 and summary["lines"] < 32 * 400


# ----------------------------------------------------------------------------
# Raw lines, TCP, plug-ins


def test_raw_lines_from_a_file_and_loopback_tcp(tmp_path):
    lines = np.random.default_rng(4).integers(0, 65535, (50, 24, 3), dtype=np.uint16)
    path = tmp_path / "lines.raw"
    path.write_bytes(lines.tobytes() + b"\x01\x02\x03")  # a short last line
    blocks = list(open_source(f"raw:{path}", width=24, channels=3, dtype="uint16", lines_per_block=16))
    assert isinstance(blocks[-1], BadBlock) and "short line" in blocks[-1].reason
    np.testing.assert_array_equal(np.concatenate([b.lines for b in blocks[:-1]]), lines)

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def send():
        connection, _ = server.accept()
        with connection:
            connection.sendall(lines[..., 0].astype(np.uint8).tobytes())

    thread = threading.Thread(target=send)
    thread.start()
    source = open_raw(f"tcp://127.0.0.1:{port}", width=24, channels=1, dtype="uint8", lines_per_block=7)
    received = np.concatenate([b.lines for b in source])
    source.close()
    thread.join()
    server.close()
    np.testing.assert_array_equal(received[..., 0], lines[..., 0].astype(np.uint8))
    with pytest.raises(ValueError, match="loopback"):
        open_raw("tcp://10.0.0.1:9", width=4)
    with pytest.raises(ValueError, match="--width"):
        open_source("raw:-")


def test_camera_plug_ins_register_a_scheme():
    class FakeCamera:
        def __init__(self, args, **options):
            self.args, self.options = args, options

        def __iter__(self):
            yield LineBlock(np.zeros((4, 8), np.uint8), "cam")

        def close(self):
            pass

    register_source("fakecam", FakeCamera)
    camera = open_source("fakecam:serial=42", width=8)
    assert camera.args == "serial=42" and camera.options["width"] == 8 and len(list(camera)) == 1
    with pytest.raises(ValueError, match="no source plug-in"):
        open_source("nocam:1")


# ----------------------------------------------------------------------------
# A trained RIAD model, exported to ONNX, end to end


@pytest.fixture(scope="module")
def trained_onnx(tmp_path_factory):
    """A tiny U-Net trained 40 steps on 32 px crops of a defect-free woven strip, exported to ONNX, calibrated."""
    import keras
    import tensorflow as tf

    from edge.metadata import read_metadata, update_metadata
    from edge.runner import Runner
    from riad_tf.config import RiadConfig
    from riad_tf.detector import Detector
    from riad_tf.export import export_detector
    from riad_tf.inpaint import reconstruct
    from riad_tf.losses import riad_loss
    from riad_tf.masks import random_grid_masks
    from riad_tf.model import build_unet

    cfg = RiadConfig(image_size=(TILE, TILE), channels=1, widths=(4, 8, 8, 16, 16), ks=(2, 4, 8), smoothing=5, seed=0)
    keras.utils.set_random_seed(0)
    unet = build_unet(cfg.input_shape, cfg.widths)
    optimizer = keras.optimizers.Adam(3e-3)

    @tf.function
    def step(batch):  # Algorithm 2: random masks, Eq. 2, Eq. 7
        masks = random_grid_masks(tf.shape(batch)[0], TILE, TILE, cfg.ks, cfg.n)
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(riad_loss(batch, reconstruct(unet, batch, masks, training=True)))
        optimizer.apply_gradients(zip(tape.gradient(loss, unet.trainable_variables), unet.trainable_variables))

    train = _woven_strip(256, 256, seed=0)
    rng = np.random.default_rng(0)
    for _ in range(40):
        rows, cols = rng.integers(0, 256 - TILE, (2, 8))
        step(tf.constant(np.stack([train[r : r + TILE, c : c + TILE] for r, c in zip(rows, cols)])))
    written = export_detector(
        Detector(unet, cfg), tmp_path_factory.mktemp("model"), formats=("onnx",), batch=None, verify=False
    )

    runner = Runner.open(written["onnx"])
    calibration = _woven_strip(160, 160, seed=1)
    scored = FrameScorer(runner, (16, 16)).score([Frame(0, 0, calibration, len(calibration), 0.0)])[0]
    pixel = CALIBRATION_MARGIN * float(scored.mean_map.max())
    image = CALIBRATION_MARGIN * float(scored.score)
    metadata = read_metadata(written["onnx"])
    update_metadata(written["onnx"], dataclasses.replace(metadata, thresholds={"image": image, "region": pixel}))
    return written["onnx"]


def test_trained_model_finds_planted_defects_in_strip_coordinates(trained_onnx):
    from edge.runner import Runner

    runner = Runner.open(trained_onnx)
    # frames start every 48 lines (64 - 16), tiles every 16 px: these straddle frame and tile borders
    truth = [(40, 40, 55, 59), (88, 100, 99, 140), (140, 8, 157, 23), (180, 150, 199, 165)]
    strip = _plant(_woven_strip(240, 192, seed=2), truth)
    settings = StreamSettings(frame_height=64, overlap=16, stride=(16, 16))
    out = Records()
    summary = StreamPipeline(runner, settings).run(ImageLineScan(strip, lines_per_block=32), out)
    found = out.boxes()
    ious = _matched(found, truth)
    print(
        f"trained model: boxes {found}, IoU with the truth {np.round(ious, 2).tolist()}, {summary['lines_per_s']} lines/s"
    )
    assert min(ious) > 0.3 and len(found) == len(truth)
    clean = StreamPipeline(runner, settings).run(ImageLineScan(_woven_strip(240, 192, seed=3)), Records())
    assert clean["defects"] == 0 and clean["defective_frames"] == 0


def test_cli_stream_writes_records_overlays_and_summary(trained_onnx, tmp_path):
    from edge.cli import main

    truth = (70, 30, 85, 49)
    strip = _plant(_woven_strip(128, 96, seed=4), [truth])
    Image.fromarray(np.round(strip[..., 0] * 255).astype(np.uint8)).save(tmp_path / "strip.png")
    out, summary_path, overlays = tmp_path / "out.jsonl", tmp_path / "summary.json", tmp_path / "overlays"
    result = CliRunner().invoke(
        main,
        [
            "stream",
            str(trained_onnx),
            "--source",
            str(tmp_path / "strip.png"),
            "--frame-height",
            "48",
            "--overlap",
            "8",
            "--stride",
            "16",
            "--output",
            str(out),
            "--summary",
            str(summary_path),
            "--overlays",
            str(overlays),
            "--line-rate",
            "5000",
            "--lines-per-block",
            "16",
        ],
    )
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    for record in records:
        check_record(record)
    frames = [r for r in records if r["type"] == "frame"]
    summary = json.loads(summary_path.read_text())
    assert records[-1] == summary and summary["lines"] == 128 and summary["backend"] == "onnxruntime"
    assert summary["frames"] == len(frames) == 3 and summary["defects"] >= 1 and summary["frames_dropped"] == 0
    boxes = [b for f in frames for b in f["regions"]]
    assert len(boxes) == summary["defects"]
    for box in boxes:  # every box is on the planted defect (maps spread a few pixels around it)
        assert box["lines"][0] <= truth[2] + 8 and box["lines"][1] >= truth[0] - 8
        assert box["columns"][0] <= truth[3] + 8 and box["columns"][1] >= truth[1] - 8
    assert summary["latency"]["p50_ms"] > 0 and summary["latency"]["p99_ms"] >= summary["latency"]["p50_ms"]
    assert [f["lines"] for f in frames] == [[0, 47], [40, 87], [80, 127]]  # starts every 40 lines
    defective = [f for f in frames if f["anomalous"]]
    assert defective and all(Path(f["overlay"]).is_file() for f in defective)
    assert len(list(overlays.iterdir())) == len(defective)  # overlays for defective frames only
    failed = CliRunner().invoke(main, ["stream", str(trained_onnx), "--source", "raw:-"])
    assert failed.exit_code == 3 and "--width" in failed.output


def test_stream_package_never_imports_tensorflow():
    import subprocess
    import sys

    script = """
import sys
import numpy as np
import edge.cli
from edge.stream import ImageLineScan, StreamPipeline, StreamSettings, accumulate, output, pipeline, scorer, sources, stitch
import edge.regions, edge.tiling

class Runner:
    image_size, channels, thresholds = (16, 16), 1, {"region": 0.3}
    def __call__(self, tiles):
        maps = np.abs(tiles[..., 0] - 0.5)
        return maps, maps.max(axis=(1, 2))

strip = np.full((64, 40), 0.5, np.float32); strip[20:30, 10:20] = 1.0
class Keep:
    def write(self, record): self.last = record
keep = Keep()
summary = StreamPipeline(Runner(), StreamSettings(frame_height=24, overlap=4)).run(ImageLineScan(strip), keep)
assert summary["defects"] == 1, summary
heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf_keras', 'tf2onnx', 'scipy'))
assert not heavy, heavy
print('ok')
"""
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]


def test_a_source_whose_close_fails_still_ends_the_stream():
    class BrokenClose(ImageLineScan):
        def close(self):
            raise RuntimeError("camera SDK: handle already released")

    records = Records()
    source = BrokenClose(_flat_strip(96, 64), lines_per_block=32)
    summary = StreamPipeline(DeviationRunner(), StreamSettings(frame_height=32, overlap=0)).run(source, records)
    assert summary["frames"] == 3 and "closing the source failed: camera SDK" in records.of("fault")[0]["reason"]
