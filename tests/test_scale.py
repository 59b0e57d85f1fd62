"""Training and inspecting at a scale (`RiadConfig.scale`): crops, tiled maps, one tiling for infer and stream.

The agreement tests use a numpy runner whose map depends on where a pixel
lies in its tile, so two commands give the same strip map only when they cut
the same tiles at the same scale.
"""

import types

import numpy as np
import pytest

from edge.inspection import inspect, preprocessing_record
from edge.stream import ImageLineScan, StreamPipeline, StreamSettings
from edge.stream.pipeline import frame_geometry
from edge.tiling import tile_stride, tiled_map
from riad_tf.config import ConfigError, RiadConfig
from riad_tf.crops import RandomCrops, grid_tiles
from riad_tf.metrics import aupro, pixel_auroc, summarize
from riad_tf.thresholds import calibrate

TILE = 32


class PlacedRunner:
    """Test-only runner: map = |grey - 0.5| x (1 + column in the tile / tile), score = its max."""

    image_size = (TILE, TILE)
    channels = 1

    def __init__(self, scale=1.0, threshold=0.25):
        self.thresholds = {"image": threshold, "region": threshold, "min_region_area": 1}
        record = preprocessing_record([(200, 96)], scale=scale, stride=0.5)
        self.metadata = types.SimpleNamespace(preprocessing=record)

    def __call__(self, tiles):
        weight = 1.0 + np.arange(TILE, dtype=np.float32) / TILE
        maps = np.abs(np.asarray(tiles, np.float32)[..., 0] - 0.5) * weight
        return maps, maps.reshape(len(maps), -1).max(axis=1)


class Records:
    def __init__(self):
        self.records = []

    def write(self, record):
        self.records.append(record)


def _strip(lines=300, width=96, seed=0):
    rng = np.random.default_rng(seed)
    strip = np.clip(0.5 + 0.03 * rng.standard_normal((lines, width, 1)), 0, 1).astype(np.float32)
    strip[100:104, 40:60] = 0.95  # a thin scratch
    strip[230:240, 10:14] = 0.05  # a spot across a frame border
    return strip


def _stream_regions(runner, strip, **settings):
    records = Records()
    StreamPipeline(runner, StreamSettings(**settings)).run(ImageLineScan(strip, lines_per_block=37), records)
    frames = [r for r in records.records if r["type"] == "frame"]
    regions = [g for r in records.records for g in r.get("regions", [])]
    return frames, sorted((g["lines"][0], g["columns"][0], g["lines"][1], g["columns"][1], g["peak"]) for g in regions)


def _infer_regions(runner, strip):
    thresholds = runner.thresholds
    preprocessing = runner.metadata.preprocessing
    (record,) = inspect([("strip", lambda: strip)], runner, runner.image_size, 1, thresholds, preprocessing)
    regions = record["regions"]
    return record, sorted((g["rows"][0], g["columns"][0], g["rows"][1], g["columns"][1], g["peak"]) for g in regions)


def test_config_scale_is_null_or_a_positive_number():
    assert RiadConfig().scale is None
    assert RiadConfig(scale=1).scale == 1.0
    for bad in (0, -1.0, "big", True):
        with pytest.raises(ConfigError, match="scale"):
            RiadConfig(scale=bad)
    with pytest.raises(ConfigError, match="tile_stride"):
        RiadConfig(tile_stride=0.0)
    assert RiadConfig.from_dict(RiadConfig(scale=0.5).to_dict()).scale == 0.5


def test_random_crops_are_fresh_each_epoch_repeatable_and_inside_the_image():
    image = np.arange(60 * 100, dtype=np.float32).reshape(60, 100, 1)
    small = np.zeros((20, 20, 1), np.float32)  # smaller than a tile: padded, one crop
    crops = RandomCrops([image, small], (TILE, TILE), seed=3)
    assert len(crops) == round(60 * 100 / TILE**2) + 1
    first, again, later = crops.crops(0, [0, 1, 2]), crops.crops(0, [0, 1, 2]), crops.crops(1, [0, 1, 2])
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, later)
    for crop in first:  # a crop is a window of the image: consecutive values along rows and columns
        assert np.all(np.diff(crop[0, :, 0]) == 1) and np.all(np.diff(crop[:, 0, 0]) == 100)
    assert crops.crops(0, [len(crops) - 1]).shape == (1, TILE, TILE, 1)
    assert grid_tiles([image], (TILE, TILE)).shape == (2 * 4, TILE, TILE, 1)


def test_training_batches_draw_crops_of_the_model_size():
    from riad_tf.training_step import training_batches

    config = RiadConfig(image_size=(TILE, TILE), ks=(2, 4), epochs=2, scale=1.0)
    images = [np.random.default_rng(i).random((50, 70, 3), dtype=np.float32) for i in range(3)]
    crops = RandomCrops(images, (TILE, TILE), config.seed)
    batches = list(training_batches(crops, config, global_batch=4))
    assert sum(len(x) for x, _ in batches) == 2 * len(crops)
    assert batches[0][0].shape[1:] == (TILE, TILE, 3) and batches[0][1].shape[2:4] == (TILE, TILE)
    resumed = list(training_batches(crops, config, global_batch=4, first_epoch=1))
    np.testing.assert_array_equal(resumed[0][0], batches[len(batches) // 2][0])


def test_pixel_metrics_take_maps_of_their_own_sizes():
    rng = np.random.default_rng(0)
    maps = [rng.random((8, 12)), rng.random((10, 6)), rng.random((8, 12))]
    masks = [np.zeros((8, 12), bool), np.zeros((10, 6), bool), np.zeros((8, 12), bool)]
    masks[1][2:5, 1:3] = True
    masks[2][0:2, 0:2] = True
    masks[2][6:8, 9:12] = True
    flat_maps = np.concatenate([m.ravel() for m in maps])[None, None, :]
    flat_masks = np.concatenate([k.ravel() for k in masks])[None, None, :]
    assert pixel_auroc(maps, masks) == pytest.approx(pixel_auroc(flat_maps, flat_masks))
    same_size = [maps[0], maps[2]], [masks[0], masks[2]]
    assert aupro(*same_size) == pytest.approx(aupro(np.stack(same_size[0]), np.stack(same_size[1])))
    summary = summarize([0.1, 0.9, 0.8], [0, 1, 1], maps, masks, ["good", "cut", "spot"])
    assert summary["per_defect_type"]["cut"]["pixel_auroc"] is not None
    thresholds = calibrate([m.max() for m in maps], maps, target_fpr=0.5)
    assert thresholds["image"] == pytest.approx(sorted(m.max() for m in maps)[1])


def test_tiled_map_is_the_mean_over_every_tile_covering_a_pixel():
    image = np.random.default_rng(1).random((50, 70, 1)).astype(np.float32)
    tiled = tiled_map(image, PlacedRunner(), (TILE, TILE), tile_stride((TILE, TILE), 0.5), batch_size=3)
    assert tiled.map.shape == (50, 70) and len(tiled.tile_maps) == len(tiled.origins) == 3 * 4
    row, col = 20, 40  # covered by the tiles at rows 0, 16 and 18 (the last), columns 16, 32 and 38
    expected = [
        m[row - r, col - c]
        for m, (r, c) in zip(tiled.tile_maps, tiled.origins)
        if r <= row < r + TILE and c <= col < c + TILE
    ]
    assert tiled.map[row, col] == pytest.approx(np.mean(expected))


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_stream_and_infer_find_the_same_regions_on_the_same_strip(scale):
    runner = PlacedRunner(scale=scale)
    strip = _strip()
    record, inferred = _infer_regions(runner, strip)
    frames, streamed = _stream_regions(runner, strip)
    assert record["anomalous"] and inferred
    if scale == 1.0:  # one grid of tiles, one map: the same boxes and peaks
        assert streamed == inferred
    else:  # frames are resized one by one: the same defects, boxes within a line or two
        assert len(streamed) == len(inferred)
        for s, i in zip(streamed, inferred):
            assert np.abs(np.subtract(s[:4], i[:4])).max() <= 2
    assert any(f["anomalous"] for f in frames)
    assert all(f["anomalous"] == bool(f["regions"]) for f in frames)


def test_frame_verdicts_come_from_regions_not_from_tile_scores():
    class LoudTiles(PlacedRunner):
        def __call__(self, tiles):  # quiet maps, loud tile scores: the old rule flagged every frame
            maps, _ = super().__call__(tiles)
            return maps * 0.0, np.ones(len(maps), np.float32)

    strip = np.full((400, 96, 1), 0.5, np.float32)
    frames, regions = _stream_regions(LoudTiles(), strip)
    assert frames and regions == [] and not any(f["anomalous"] for f in frames)


def test_default_frames_continue_one_grid_of_tiles():
    for scale in (1.0, 0.5, 2.0):
        height, overlap = frame_geometry(None, None, tile=128, stride=64, scale=scale)
        assert round(overlap * scale) == 64 and round((height - overlap) * scale) % 64 == 0
    assert frame_geometry(48, None, tile=128, stride=64, scale=1.0) == (48, 24)  # a short frame keeps a step


def test_a_model_trained_at_a_scale_trains_evaluates_and_tiles_every_image(tmp_path):
    """A tiny run end to end: crops in training, stitched maps in calibration, evaluation and predict."""
    from PIL import Image

    from riad_tf.data import data_spec
    from riad_tf.jobs import evaluate_job, predict_images, train_job

    rng = np.random.default_rng(0)
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir(), bad.mkdir()
    for i in range(14):
        Image.fromarray((127 + 10 * rng.standard_normal((60, 90))).clip(0, 255).astype(np.uint8)).save(
            good / f"{i}.png"
        )
    for i in range(3):
        image = (127 + 10 * rng.standard_normal((60, 90))).clip(0, 255).astype(np.uint8)
        image[20:24, 30:60] = 255
        mask = np.zeros_like(image)
        mask[20:24, 30:60] = 255
        Image.fromarray(image).save(bad / f"{i}.png")
        Image.fromarray(mask).save(bad / f"{i}_mask.png")
    config = RiadConfig(
        image_size=(TILE, TILE),
        channels=1,
        widths=(4, 8, 8, 16, 16),
        ks=(2, 4),
        smoothing=3,
        epochs=1,
        batch_size=8,
        scale=0.5,
        target_fpr=0.2,
        mixed_precision="off",
    )
    run = tmp_path / "run"
    thresholds = train_job(config, data_spec(normal=[good], abnormal=[bad]), run, progress=False)
    assert thresholds["lines_per_image"] == 30 and thresholds["false_alarms_per_1000_lines"] > 0
    summary = evaluate_job(run, report=False)
    assert summary["resolution"] == "scale 0.5" and summary["pixel_auroc"] is not None
    (record,) = predict_images(run, [bad / "0.png"])  # another size than a tile, no --tile: tiled anyway
    assert "error" not in record and len(record["tiles"]) == 2  # 30 x 45 px at the scale: one row of 2 tiles
    from riad_tf.run import check_images

    check = check_images(run)  # the export's accuracy check: model-size crops of held-out good images
    assert check.good.shape[1:] == (TILE, TILE, 1) and len(check.good) > 0 and check.defective is None


def test_replayed_good_strips_keep_the_calibrated_false_alarm_rate_and_defects_are_found():
    """Calibrated on stitched maps of good pieces, the stream's false alarms per 1000 lines meet the promise.

    The promise holds on average over calibration sets (one set's own rate
    varies), so ten calibrations of 19 pieces each are replayed.
    """
    from riad_tf.jobs import line_promise

    measured, promised = [], []
    for seed in range(10):
        runner, rng = PlacedRunner(), np.random.default_rng(seed)

        def piece(rng=rng):
            return np.clip(0.5 + 0.05 * rng.standard_normal((64, 96, 1)), 0, 1).astype(np.float32)

        stride = tile_stride(runner.image_size, 0.5)
        maps = [tiled_map(piece(), runner, runner.image_size, stride).map for _ in range(19)]
        thresholds = calibrate([m.max() for m in maps], maps, target_fpr=0.1)
        promised.append(line_promise(thresholds["supported_fpr"], [64] * 19)["false_alarms_per_1000_lines"])
        runner.thresholds = {"image": thresholds["image"], "region": thresholds["region"], "min_region_area": 1}
        strip = np.concatenate([piece() for _ in range(200)])  # 12800 lines of good product
        _, regions = _stream_regions(runner, strip)
        measured.append(1000 * len(regions) / len(strip))
    # Regions, not pieces, are counted: two in one piece count twice, hence the 10 % allowance. The rule is
    # exact for pieces like the calibration ones, so far fewer alarms would mean a threshold set another way.
    assert 0.5 * np.mean(promised) <= np.mean(measured) <= 1.1 * np.mean(promised), (measured, promised)

    defective = strip[:640].copy()
    defective[300:303, 20:40] = 0.9
    _, found = _stream_regions(runner, defective)
    assert any(r[0] <= 302 and r[2] >= 300 and r[1] <= 39 and r[3] >= 20 for r in found)
