"""Training with resume, calibration, and train -> evaluate -> predict through the CLI."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from click.testing import CliRunner

from riad_tf.cli import main
from riad_tf.config import RiadConfig
from riad_tf.metrics import threshold_at_fpr
from riad_tf.synthetic import make_synthetic_dataset
from riad_tf.train import learning_rate

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
    from riad_tf.data import load_arrays, load_mvtec, split_holdout
    from riad_tf.run import load_detector

    thresholds = json.loads((trained_run / "thresholds.json").read_text())
    cfg = RiadConfig.load(trained_run / "config.yaml")
    _, held_out = split_holdout(load_mvtec(dataset).train, cfg.val_fraction, cfg.seed)
    maps, scores = load_detector(trained_run).score(load_arrays(held_out, cfg))
    assert thresholds["image"] == pytest.approx(threshold_at_fpr(scores, cfg.target_fpr), abs=1e-6)
    assert thresholds["pixel"] == pytest.approx(threshold_at_fpr(maps, cfg.target_fpr), abs=1e-6)
    assert np.mean(maps > thresholds["pixel"]) <= cfg.target_fpr


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
    records = [json.loads(line) for line in result.output.strip().splitlines()]
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
        {"mixed_precision": "off"}
    )


def test_cosine_schedule_warms_up_then_decays_to_zero():
    cfg = RiadConfig(epochs=10, learning_rate=1e-3, warmup_epochs=2)
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
    done_before = len(json.loads((out / "history.json").read_text()))
    assert 2 <= done_before < 10

    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"resuming {out} after epoch {done_before}" in result.stdout
    epochs = [r["epoch"] for r in json.loads((out / "history.json").read_text())]
    assert epochs == list(range(1, 11))
    assert (out / "model.keras").is_file()
