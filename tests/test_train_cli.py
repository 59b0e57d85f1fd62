"""Training with resume, calibration, and train -> evaluate -> predict through the CLI."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from click.testing import CliRunner

from edge.verdicts import conformal_threshold
from riad_tf.cli import main
from riad_tf.config import RiadConfig
from riad_tf.synthetic import make_synthetic_dataset
from riad_tf.thresholds import threshold_at_fpr
from riad_tf.training_step import learning_rate

TINY_SETS = ["--set", "widths=[4,8,8,16,16]", "--set", "ks=[2,4,8]", "--set", "smoothing=5"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return make_synthetic_dataset(root / "tiles", image_size=32, n_train=12, n_test_good=4, n_test_defect=3)


@pytest.fixture(scope="module")
def trained_run(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    result = CliRunner().invoke(
        main,
        [
            "train",
            "--data",
            str(dataset),
            "--out",
            str(out),
            "--epochs",
            "2",
            "--batch-size",
            "4",
            "--image-size",
            "32",
            "--no-progress",
            *TINY_SETS,
        ],
    )
    assert result.exit_code == 0, result.output
    return out


def test_train_writes_run(trained_run):
    for name in ("config.yaml", "model.keras", "thresholds.json", "history.json", "data.json"):
        assert (trained_run / name).is_file(), name
    history = json.loads((trained_run / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2]
    assert all(np.isfinite(r["loss"]) and np.isfinite(r["val_loss"]) for r in history)
    assert list((trained_run / "logs").iterdir()), "no TensorBoard events"
    # The final model loads in Keras's safe mode and keeps the config.
    net = keras.saving.load_model(trained_run / "model.keras", safe_mode=True, compile=False)
    assert net.output_shape == (None, 32, 32, 3)
    assert RiadConfig.load(trained_run / "config.yaml").widths == (4, 8, 8, 16, 16)
    assert not list(trained_run.glob(".*tmp")), "temporary files left behind"


def test_thresholds_calibrated_on_held_out_good(trained_run, dataset):
    from riad_tf.data import load_mvtec, split_good
    from riad_tf.image_files import load_arrays
    from riad_tf.masks import PARTITIONS
    from riad_tf.run import load_detector

    thresholds = json.loads((trained_run / "thresholds.json").read_text())
    cfg = RiadConfig.load(trained_run / "config.yaml")
    _, validation, calibration = split_good(
        load_mvtec(dataset).train, cfg.val_fraction, cfg.calibration_fraction, cfg.seed
    )
    # The images that chose the kept epoch do not set the thresholds.
    assert validation and calibration and not {s.path for s in validation} & {s.path for s in calibration}
    maps, scores = load_detector(trained_run).score(load_arrays(calibration, cfg))
    n = len(calibration)
    assert thresholds["partitions"] == PARTITIONS
    assert thresholds["hot_spot"]["cell"] == max(cfg.ks) and thresholds["hot_spot"]["ratio"] >= 1
    assert thresholds["num_images"] == n and thresholds["target_fpr"] == cfg.target_fpr
    assert thresholds["image"] == pytest.approx(conformal_threshold(scores, cfg.target_fpr).threshold, abs=1e-6)
    assert thresholds["region"] == thresholds["image"] and thresholds["min_region_area"] == 1
    assert thresholds["segmentation"] == pytest.approx(threshold_at_fpr(maps, cfg.target_fpr), abs=1e-6)
    # A handful of held-out images cannot support a 1 % rate: the bound that holds is recorded.
    assert not thresholds["target_supported"] and thresholds["supported_fpr"] == pytest.approx(1 / (n + 1))


def test_evaluate_and_predict(trained_run, dataset, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["evaluate", str(trained_run), "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert 0.0 <= metrics["image_auroc"] <= 1.0 and 0.0 <= metrics["aupro"] <= 1.0
    assert set(metrics["per_defect_type"]) == {"scratch", "spot"}
    assert "| overall |" in (tmp_path / "eval" / "metrics.md").read_text()
    assert (tmp_path / "eval" / "report" / "index.html").is_file()

    images = sorted((dataset / "test" / "scratch").glob("*.png"))[:2]
    result = runner.invoke(main, ["predict", str(trained_run), *map(str, images), "--maps-dir", str(tmp_path / "maps")])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert [r["path"] for r in records] == [str(p) for p in images]
    assert all(isinstance(r["anomalous"], bool) and Path(r["map"]).is_file() for r in records)


def test_bad_input_one_line_error(dataset, tmp_path):
    bad = tmp_path / "bad"
    (bad / "train" / "good").mkdir(parents=True)
    (bad / "test" / "good").mkdir(parents=True)
    for src in sorted((dataset / "train" / "good").glob("*.png"))[:3]:
        (bad / "train" / "good" / src.name).write_bytes(src.read_bytes())
        (bad / "test" / "good" / src.name).write_bytes(src.read_bytes())
    truncated = bad / "train" / "good" / "broken.png"
    truncated.write_bytes(src.read_bytes()[:100])
    result = CliRunner().invoke(
        main, ["train", "--data", str(bad), "--out", str(tmp_path / "run"), "--image-size", "32", *TINY_SETS]
    )
    assert result.exit_code != 0
    assert "broken.png" in result.output and len(result.output.strip().splitlines()) <= 3
    assert not (tmp_path / "run" / "model.keras").exists()

    result = CliRunner().invoke(
        main, ["train", "--data", str(bad), "--out", str(tmp_path / "run"), "--set", "nonsense=1"]
    )
    assert result.exit_code != 0 and "nonsense" in result.output


def test_learning_rate_divided_after_five_sixths():
    cfg = RiadConfig(epochs=300, learning_rate=1e-4, lr_schedule="step")
    assert learning_rate(cfg, 249) == pytest.approx(1e-4) and learning_rate(cfg, 250) == pytest.approx(1e-5)
    assert RiadConfig(epochs=12).decay_epoch == 10
    assert RiadConfig.load(Path(__file__).parents[1] / "configs" / "paper.yaml") == cfg.with_overrides(
        {"mixed_precision": "off", "bn_statistics": "moving"}
    )


def test_cosine_schedule_warms_up_then_decays_to_zero():
    cfg = RiadConfig(epochs=10, learning_rate=1e-3, lr_schedule="cosine", warmup_epochs=2)
    rates = [learning_rate(cfg, e / 4) for e in range(41)]
    assert rates[0] == 0 and rates[4] == pytest.approx(5e-4) and rates[8] == pytest.approx(1e-3)
    assert all(a < b for a, b in zip(rates[:8], rates[1:9]))  # warm-up rises
    assert all(a > b for a, b in zip(rates[8:-1], rates[9:]))  # then falls, to 0 at the end
    assert rates[24] == pytest.approx(5e-4) and rates[-1] == pytest.approx(0, abs=1e-12)
    assert learning_rate(cfg.with_overrides({"lr_schedule": "constant"}), 9.5) == pytest.approx(1e-3)


def test_resume_after_kill(dataset, tmp_path):
    """kill -9 mid-run, then the same command continues from the last checkpoint."""
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "riad_tf.cli",
        "train",
        "--data",
        str(dataset),
        "--out",
        str(out),
        "--epochs",
        "10",
        "--batch-size",
        "4",
        "--image-size",
        "32",
        "--no-progress",
        *TINY_SETS,
    ]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 240
    try:
        while time.time() < deadline and not list((out / "checkpoints").glob("ckpt-2.index")):
            assert proc.poll() is None, "training ended before it could be killed"
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert not (out / "model.keras").exists()
    # The last checkpoint is where training resumes; the history may hold one epoch more (it is written first).
    done_before = max(int(p.stem.split("-")[1]) for p in (out / "checkpoints").glob("ckpt-*.index"))
    assert 2 <= done_before < 10
    assert len(json.loads((out / "history.json").read_text())) in (done_before, done_before + 1)

    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"resuming {out} after epoch {done_before}" in result.stderr
    epochs = [r["epoch"] for r in json.loads((out / "history.json").read_text())]
    assert epochs == list(range(1, 11))
    assert (out / "model.keras").is_file()


# ----------------------------------------------------------------------------
# Verdicts through both command lines (docs/method.md, "Thresholds")


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    from riad_tf.export import export_run

    written = export_run(trained_run, tmp_path_factory.mktemp("export"), formats=("tflite", "onnx"), batch=None)
    return {"tflite": written["tflite"], "onnx": written["onnx"]}


@pytest.fixture(scope="module")
def awkward_inputs(dataset, tmp_path_factory):
    """Good images with one base name in two folders, a 32 x 64 strip, a NaN TIFF and a truncated PNG."""
    from PIL import Image

    root = tmp_path_factory.mktemp("inputs")
    goods = sorted((dataset / "test" / "good").glob("*.png"))
    for folder, source in (("a", goods[0]), ("b", goods[1])):
        (root / folder).mkdir()
        (root / folder / "000.png").write_bytes(source.read_bytes())
    strip = np.concatenate([np.asarray(Image.open(goods[0])), np.asarray(Image.open(goods[1]))], axis=1)
    Image.fromarray(strip).save(root / "strip.png")
    Image.fromarray(np.full((32, 32), np.nan, np.float32), mode="F").save(root / "nan.tiff")
    (root / "broken.png").write_bytes(goods[2].read_bytes()[:80])
    return [root / "a" / "000.png", root / "b" / "000.png", root / "strip.png", root / "nan.tiff", root / "broken.png"]


def _records(result) -> list[dict]:
    from edge.records import check_record

    records = [json.loads(line) for line in result.stdout.strip().splitlines()]
    for record in records:
        check_record(record)  # docs/records.md
    return records


def _inspect(command, target, inputs, tmp_path, *options):
    from edge.cli import main as edge_main

    cli, verb = (main, "predict") if command == "riad-tf" else (edge_main, "infer")
    maps = tmp_path / f"maps-{command}-{Path(target).suffix[1:]}{''.join(options)}"
    args = [verb, str(target), *map(str, inputs), "--maps-dir", str(maps), *options]
    return CliRunner().invoke(cli, args)


@pytest.mark.parametrize("command, runtime", [("riad-tf", None), ("riad-edge", "tflite"), ("riad-edge", "onnx")])
def test_bad_inputs_get_error_records_and_the_rest_is_scored(
    command, runtime, trained_run, exported, awkward_inputs, tmp_path
):
    target = trained_run if command == "riad-tf" else exported[runtime]
    result = _inspect(command, target, awkward_inputs, tmp_path)
    assert result.exit_code == 1 and "3 image(s) could not be scored" in result.output
    records = _records(result)
    assert [r["path"] for r in records] == [str(p) for p in awkward_inputs]  # one line each, in order
    good_a, good_b, strip, nan, broken = records
    for good in (good_a, good_b):
        assert np.isfinite(good["score"]) and isinstance(good["anomalous"], bool)
        assert good["anomalous"] == bool(good["regions"])  # image and region verdicts agree
        assert good["threshold_source"] == "calibrated"
    assert [Path(good_a["map"]).name, Path(good_b["map"]).name] == ["000_map.png", "000_2_map.png"]
    assert "32 x 64" in strip["error"] and "32 x 32" in strip["error"] and "--tile" in strip["error"]
    assert "NaN" in nan["error"] and "score" not in nan
    assert "broken.png" in broken["error"]


@pytest.mark.parametrize("command, runtime", [("riad-tf", None), ("riad-edge", "tflite"), ("riad-edge", "onnx")])
def test_other_sizes_are_tiled_or_resized_only_when_asked(
    command, runtime, trained_run, exported, awkward_inputs, tmp_path
):
    target = trained_run if command == "riad-tf" else exported[runtime]
    strip = awkward_inputs[2]
    tiled = _inspect(command, target, [strip], tmp_path, "--tile")
    assert tiled.exit_code == 0, tiled.output
    (record,) = _records(tiled)
    assert [t["origin"] for t in record["tiles"]] == [[0, 0], [0, 16], [0, 32]]  # 32 px tiles, half a tile apart
    assert record["anomalous"] == bool(record["regions"])
    for region in record["regions"]:  # boxes in the strip's own pixels
        assert (
            0 <= region["rows"][0] <= region["rows"][1] < 32 and 0 <= region["columns"][0] <= region["columns"][1] < 64
        )
    from PIL import Image

    assert Image.open(record["map"]).size == (64, 32)  # the stitched map covers the whole strip

    resized = _inspect(command, target, [strip], tmp_path, "--resize")
    assert resized.exit_code == 0 and "tiles" not in _records(resized)[0]
    forced = _inspect(command, target, [strip], tmp_path, "--resize", "--image-threshold", "0")
    (record,) = _records(forced)
    assert record["anomalous"] and record["threshold"] == 0.0 and record["threshold_source"] == "override"


def test_predict_and_infer_agree(trained_run, exported, awkward_inputs, tmp_path):
    keras_records = _records(_inspect("riad-tf", trained_run, awkward_inputs[:2], tmp_path))
    onnx_records = _records(_inspect("riad-edge", exported["onnx"], awkward_inputs[:2], tmp_path))
    for ours, theirs in zip(keras_records, onnx_records):
        assert set(ours) == set(theirs) and ours["anomalous"] == theirs["anomalous"]
        assert ours["score"] == pytest.approx(theirs["score"], abs=1e-4)


def test_evaluate_scores_the_rest_when_one_test_image_is_unreadable(trained_run, dataset, tmp_path):
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(dataset, copy)
    broken = sorted((copy / "test" / "good").glob("*.png"))[0]
    broken.write_bytes(broken.read_bytes()[:80])
    out = tmp_path / "eval"
    result = CliRunner().invoke(
        main, ["evaluate", str(trained_run), "--data", str(copy), "--out", str(out), "--no-report"]
    )
    assert result.exit_code == 3 and broken.name in result.output and "the metrics cover the rest" in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_images"] == len(list((dataset / "test").rglob("*.png"))) - 1
    (error,) = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert error["path"] == str(broken) and "error" in error


def test_calibrate_without_retraining(trained_run, dataset, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    good = dataset / "test" / "good"  # 4 good images training never saw
    few = CliRunner().invoke(main, ["calibrate", str(run), "--good", str(good), "--target-fpr", "0.01"])
    assert few.exit_code == 0, few.output
    assert "needs at least 99 good images" in few.output and "0.2 (1/(n+1))" in few.output
    assert not few.stdout and "image threshold" in few.stderr  # human lines only, on stderr, without --json
    enough = CliRunner().invoke(main, ["calibrate", str(run), "--good", str(good), "--target-fpr", "0.2", "--json"])
    assert enough.exit_code == 0 and "warning" not in enough.output
    stored = json.loads((run / "thresholds.json").read_text())
    (summary,) = [json.loads(line) for line in enough.stdout.splitlines()]
    assert summary["image"]["new"] == stored["image"] and summary["thresholds"] == stored
    assert stored["num_images"] == 4 and stored["target_supported"] and stored["supported_fpr"] == pytest.approx(0.2)
    assert RiadConfig.load(run / "config.yaml").target_fpr == 0.2  # later commands see the new target


def test_calibrate_refuses_training_images_and_images_predict_would_refuse(trained_run, dataset, tmp_path):
    from PIL import Image

    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns(".lock"))
    before = (run / "thresholds.json").read_bytes()
    good = sorted((dataset / "test" / "good").glob("*.png"))
    nan = tmp_path / "nan"
    nan.mkdir()
    Image.fromarray(np.full((32, 32), np.nan, np.float32), mode="F").save(nan / "nan.tiff")
    other = tmp_path / "other-size"
    other.mkdir()
    Image.open(good[0]).resize((48, 32)).save(other / "wide.png")
    cases = [
        (dataset / "train" / "good", "are the run's training images"),
        (nan, "NaN or infinite values"),
        (other, "32 x 48 px"),
    ]
    for folder, words in cases:
        result = CliRunner().invoke(main, ["calibrate", str(run), "--good", str(folder), "--target-fpr", "0.2"])
        lines = [line for line in result.output.splitlines() if line.startswith("Error: ")]
        assert result.exit_code == 3 and len(lines) == 1 and words in lines[0], result.output
    assert (run / "thresholds.json").read_bytes() == before  # nothing written


def test_thresholds_from_the_partitions_of_before_are_called_stale(tmp_path, caplog, monkeypatch):
    import logging

    from riad_tf.masks import PARTITIONS
    from riad_tf.run import load_thresholds

    monkeypatch.setattr(logging.getLogger("riad_tf"), "propagate", True)  # the CLI tests' logging setup turns it off

    (tmp_path / "thresholds.json").write_text(json.dumps({"image": 0.2, "region": 0.2}))
    with caplog.at_level("WARNING"):
        assert load_thresholds(tmp_path)["image"] == 0.2
    assert "inference partitions of before" in caplog.text and "riad-tf calibrate" in caplog.text
    caplog.clear()
    (tmp_path / "thresholds.json").write_text(json.dumps({"image": 0.2, "partitions": PARTITIONS}))
    with caplog.at_level("WARNING"):
        load_thresholds(tmp_path)
    assert "partitions" not in caplog.text


def test_export_int8_checks_accuracy_on_the_runs_images_and_refuses_over_tolerance(trained_run, tmp_path):
    """`riad-tf export --precision int8` compares with float32 on the run's held-out and defective images."""
    from edge.metadata import read_metadata

    args = ["export", str(trained_run), "--onnx", "--precision", "int8", "--fixed-batch", "0"]
    kept = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "kept"), "--max-map-error", "10"])
    assert kept.exit_code == 0, kept.output
    accuracy = read_metadata(tmp_path / "kept" / "riad_int8.onnx").verification["accuracy"]
    assert accuracy["passed"] and accuracy["images"] > 0 and accuracy["defective"] > 0
    assert {"float32", "model"} <= set(accuracy["image_auroc"]) and "pixel_auroc" in accuracy

    few = CliRunner().invoke(
        main, [*args, "--out", str(tmp_path / "few"), "--max-map-error", "10", "--check-images", "2"]
    )
    assert few.exit_code == 0, few.output
    fewer = read_metadata(tmp_path / "few" / "riad_int8.onnx").verification["accuracy"]
    assert (fewer["images"], fewer["defective"]) == (min(2, accuracy["images"]), min(2, accuracy["defective"]))

    refused = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "refused"), "--max-map-error", "0"])
    assert refused.exit_code != 0
    line = [line for line in refused.output.splitlines() if "was not kept" in line]
    assert len(line) == 1 and "riad_int8.onnx: on " in line[0] and "% off float32 (tolerance 0 %)" in line[0]
    assert "Traceback" not in refused.output
    assert not (tmp_path / "refused" / "riad_int8.onnx").exists()

    openvino = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "ov"), "--int8-layout", "openvino"])
    assert openvino.exit_code == 2 and "--int8-layout lays out NNCF's model" in openvino.output
