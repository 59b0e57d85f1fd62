"""Faults through the command lines: each ends in one clear line and an exit status, nothing lost, nothing left behind."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edge.cli import main as edge_main
from riad_tf.cli import main
from riad_tf.synthetic import make_synthetic_dataset

TINY = ["--image-size", "32", "--batch-size", "4", "--no-progress", "--set", "widths=[4,8,8,16,16]"]
TINY += ["--set", "ks=[2,4]", "--set", "smoothing=5"]


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    first = make_synthetic_dataset(root / "a", image_size=32, n_train=8, n_test_good=2, n_test_defect=2)
    second = make_synthetic_dataset(root / "b", image_size=32, n_train=8, n_test_good=2, n_test_defect=2, seed=1)
    return first, second


@pytest.fixture(scope="module")
def trained(datasets, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "run"
    result = CliRunner().invoke(main, ["train", "--data", str(datasets[0]), "--out", str(run), "--epochs", "1", *TINY])
    assert result.exit_code == 0, result.output
    return run


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    from riad_tf.export import export_run

    return export_run(trained, tmp_path_factory.mktemp("export"), formats=("onnx",), batch=None)["onnx"]


Failure = namedtuple("Failure", "code line")


def _failure(result) -> Failure:
    lines = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return Failure(result.exit_code, lines[0])


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------
# Configuration


@pytest.mark.parametrize(
    "options, words",
    [
        (["--epochs", "0"], "epochs must be at least 1"),
        (["--epochs", "-3"], "epochs must be at least 1"),
        (["--learning-rate", "-1"], "learning_rate must be positive"),
        (["--batch-size", "0"], "batch_size must be at least 1"),
        (["--set", "ks=[]"], "ks must list at least one"),
        (["--set", "ks=[3]"], "ks: region size k=3"),
        (["--set", "epochs=ten"], "epochs must be an integer"),
        (["--set", "channels=x"], "channels must be an integer"),
        (["--set", "learning_rate=.inf"], "learning_rate must be a finite number"),
        (["--set", "weight_decay=.nan"], "weight_decay"),
        (["--set", "msgms_scales=0"], "msgms_scales must be at least 1"),
        (["--set", "msgms_scales=9"], "msgms_scales must be at least 1"),
        (["--set", "gms_c=-1"], "gms_c must be positive"),
        (["--set", "lambda_g=-1"], "lambda_g and lambda_s must be >= 0"),
        (["--set", "lr_decay_epoch=-2"], "lr_decay_epoch must be null or at least 1"),
        (["--set", "width_multiplier=.inf"], "width_multiplier must be a finite number"),
        (["--set", "smoothing=99"], "smoothing (99) must not exceed the image size"),
    ],
)
def test_bad_config_values_are_refused_naming_the_key(options, words, datasets, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--data", str(datasets[0]), "--out", str(out), *TINY, *options])
    failure = _failure(result)
    assert failure.code == 4 and words in failure.line
    assert not out.exists()  # refused before anything is written


@pytest.mark.parametrize(
    "cli, args, option",
    [
        (main, ["predict", "{run}", "{image}", "--batch-size", "0"], "--batch-size"),
        (main, ["evaluate", "{run}", "--batch-size", "0"], "--batch-size"),
        (main, ["calibrate", "{run}", "--good", "{folder}", "--batch-size", "0"], "--batch-size"),
        (main, ["predict", "{run}", "{image}", "--image-threshold", "nan"], "--image-threshold"),
        (main, ["export", "{run}", "--onnx", "--out", "{folder}", "--fixed-batch", "-1"], "--fixed-batch"),
        (edge_main, ["infer", "{model}", "{image}", "--image-threshold", "inf"], "--image-threshold"),
        (edge_main, ["infer", "{model}", "{image}", "--threads", "0"], "--threads"),
        (edge_main, ["serve", "{model}", "--max-wait-ms", "nan"], "--max-wait-ms"),
        (edge_main, ["serve", "{model}", "--max-wait-ms", "inf"], "--max-wait-ms"),
        (edge_main, ["stream", "{model}", "--source", "{image}", "--pixel-threshold", "-inf"], "--pixel-threshold"),
        (edge_main, ["stream", "{model}", "--source", "{image}", "--line-rate", "nan"], "--line-rate"),
    ],
)
def test_bad_numeric_options_are_usage_errors_before_any_work(cli, args, option, tmp_path):
    folder, image, model = tmp_path / "folder", tmp_path / "part.png", tmp_path / "riad.onnx"
    folder.mkdir()
    image.write_bytes(b"not read")
    model.write_bytes(b"not read")
    names = dict(run=folder, folder=folder, image=image, model=model)
    result = CliRunner().invoke(cli, [a.format(**names) for a in args])
    assert result.exit_code == 2 and option in result.output and "Traceback" not in result.output, result.output


def test_a_set_value_that_is_not_plain_yaml_is_a_usage_error(datasets, tmp_path):
    out = tmp_path / "run"
    tag = "epochs=!!python/object/apply:os.system ['touch pwned']"
    result = CliRunner().invoke(main, ["train", "--data", str(datasets[0]), "--out", str(out), *TINY, "--set", tag])
    assert result.exit_code == 2 and "not a YAML value" in result.output and "Traceback" not in result.output
    assert not out.exists() and not (Path.cwd() / "pwned").exists()


def test_a_config_whose_base_chain_comes_back_to_itself_is_refused(tmp_path):
    from edge.errors import ConfigError
    from riad_tf.config import RiadConfig

    (tmp_path / "a.yaml").write_text("base: b.yaml\nepochs: 3\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    (tmp_path / "self.yaml").write_text("base: self.yaml\n")
    for name in ("a.yaml", "self.yaml"):
        with pytest.raises(ConfigError, match="base: chain comes back to itself"):
            RiadConfig.load(tmp_path / name)


def test_a_square_image_size_may_be_one_number(tmp_path):
    from riad_tf.config import RiadConfig

    assert RiadConfig(image_size=64, ks=(2, 4), smoothing=5).image_size == (64, 64)
    config = tmp_path / "c.yaml"
    config.write_text("image_size: 64\nks: [2, 4]\n")
    assert RiadConfig.load(config).image_size == (64, 64)


# ----------------------------------------------------------------------------
# Output folders


def test_an_output_that_cannot_be_written_exits_5(datasets, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = CliRunner().invoke(main, ["train", "--data", str(datasets[0]), "--out", str(blocker / "run"), *TINY])
    failure = _failure(result)
    assert failure.code == 5 and "a-file" in failure.line


def test_too_little_free_space_is_found_before_training(datasets, tmp_path, monkeypatch):
    import edge.files

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(edge.files.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 2**20, 2**20))
    out = tmp_path / "run"
    failure = _failure(CliRunner().invoke(main, ["train", "--data", str(datasets[0]), "--out", str(out), *TINY]))
    assert failure.code == 5 and "1 MiB free" in failure.line
    assert not (out / "config.yaml").exists() and not (out / "checkpoints").exists()


# ----------------------------------------------------------------------------
# Re-runs, locks, leftovers


def test_a_failed_re_run_leaves_a_finished_run_as_it_was(trained, datasets):
    before = _snapshot(trained)
    other_data = CliRunner().invoke(main, ["train", "--data", str(datasets[1]), "--out", str(trained), *TINY])
    assert _failure(other_data).code == 3 and "another data set" in _failure(other_data).line
    other_config = CliRunner().invoke(
        main, ["train", "--data", str(datasets[0]), "--out", str(trained), *TINY, "--set", "n=4"]
    )
    assert _failure(other_config).code == 4 and "n: 3 -> 4" in _failure(other_config).line
    assert _snapshot(trained) == before


def test_a_re_run_never_shortens_a_trained_run(trained, datasets, tmp_path):
    run = tmp_path / "three-epochs"
    shutil.copytree(trained, run, ignore=shutil.ignore_patterns(".lock"))
    history = json.loads((run / "history.json").read_text())
    (run / "history.json").write_text(json.dumps([{**history[0], "epoch": e} for e in (1, 2, 3)]))
    before = _snapshot(run)
    shorter = CliRunner().invoke(main, ["train", "--data", str(datasets[0]), "--out", str(run), *TINY, "--epochs", "2"])
    assert _failure(shorter).code == 4 and "has trained 3 epochs; 2 would shorten it" in _failure(shorter).line
    assert _snapshot(run) == before


def test_a_second_writer_is_refused_and_a_killed_holder_releases_the_lock(trained, datasets):
    from riad_tf.run import LOCK_FILE, run_lock

    with run_lock(trained, "the test's own writer"):
        result = CliRunner().invoke(main, ["calibrate", str(trained), "--good", str(datasets[0] / "test" / "good")])
        failure = _failure(result)
        assert failure.code == 8 and "the test's own writer" in failure.line and "pid" in failure.line
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from riad_tf.run import run_lock\nimport time\nwith run_lock({str(trained)!r}):\n"
            "    print('locked', flush=True)\n    time.sleep(120)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    holder.kill()  # kill -9: no cleanup runs
    holder.wait()
    assert (trained / LOCK_FILE).read_text().strip()  # the dead holder's note is still there
    with run_lock(trained, "after the kill"):  # and the lock is taken over all the same
        pass


def test_links_planted_where_we_write_are_never_followed(trained, datasets, tmp_path):
    """A symlink at RUN/.lock or at a stream's OUTPUT.partial must not truncate or fill its target."""
    from edge.stream import JsonLines
    from riad_tf.run import LOCK_FILE

    victim = tmp_path / "someone-elses-file"
    victim.write_text("precious\n")
    run = tmp_path / "run"
    shutil.copytree(trained, run, ignore=shutil.ignore_patterns(LOCK_FILE))
    (run / LOCK_FILE).symlink_to(victim)
    result = CliRunner().invoke(main, ["calibrate", str(run), "--good", str(datasets[0] / "test" / "good")])
    failure = _failure(result)
    assert failure.code == 5 and "symbolic link" in failure.line and LOCK_FILE in failure.line
    assert victim.read_text() == "precious\n"

    output = tmp_path / "records.jsonl"
    output.with_name("records.jsonl.partial").symlink_to(victim)
    writer = JsonLines(output)
    writer.write({"frame": 0})
    writer.close()
    assert victim.read_text() == "precious\n" and output.read_text() == '{"frame": 0}\n'


def test_temporaries_of_an_interrupted_save_are_removed_on_the_next_start(trained, datasets):
    from riad_tf.run import remove_temporaries

    leftovers = [trained / ".model.keras.x1y2.keras", trained / "checkpoints" / "ckpt-9_temp" / "part"]
    for path in leftovers:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half a file")
    removed = remove_temporaries(trained)
    assert not any(p.exists() for p in leftovers) and len(removed) == 2
    assert (trained / "model.keras").is_file() and (trained / ".lock").exists()


def test_skip_unreadable_is_remembered_by_evaluate(datasets, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(datasets[0], data)
    broken = sorted((data / "train" / "good").glob("*.png"))[0]
    broken.write_bytes(broken.read_bytes()[:60])
    run = tmp_path / "run"
    args = ["train", "--data", str(data), "--out", str(run), "--epochs", "1", "--skip-unreadable", *TINY]
    assert CliRunner().invoke(main, args).exit_code == 0
    assert json.loads((run / "data.json").read_text())["skip_unreadable"] is True
    result = CliRunner().invoke(main, ["evaluate", str(run), "--no-report"])
    assert result.exit_code == 0, result.output


def test_masks_in_mvtec_train_good_are_left_out_with_a_warning(datasets, tmp_path):
    from riad_tf.data import load_mvtec

    data = tmp_path / "data"
    shutil.copytree(datasets[0], data)
    good = data / "train" / "good"
    Image.open(next(good.glob("*.png"))).convert("RGB").save(good / "000.jpg")  # 000.png now reads as its mask
    result = CliRunner().invoke(
        main, ["train", "--data", str(data), "--out", str(tmp_path / "r"), "--epochs", "1", *TINY]
    )
    assert result.exit_code == 0 and "left out as masks" in result.output and "000.png" in result.output
    assert len(load_mvtec(data).train) == 8  # 000.jpg replaces 000.png


# ----------------------------------------------------------------------------
# Model and deployment files


def test_a_damaged_keras_model_is_named(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    (run / "model.keras").write_bytes((run / "model.keras").read_bytes()[:500])
    result = CliRunner().invoke(main, ["evaluate", str(run), "--no-report"])
    failure = _failure(result)
    assert failure.code == 3 and "model.keras: cannot load the model" in failure.line


def _edit_metadata(model: Path, folder: Path, change) -> Path:
    copy = folder / model.name
    shutil.copy(model, copy)
    meta = json.loads(Path(f"{model}.json").read_text())
    change(meta)
    Path(f"{copy}.json").write_text(json.dumps(meta))
    return copy


def _set(keys, value):
    def change(meta):
        target = meta
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return change


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda meta: meta.clear() or meta.update({"list": True}), "not riad-edge metadata"),
        (_set(["config", "ks"], []), "config ks must be a non-empty list"),
        (_set(["config", "channels"], "x"), "config channels must be 1 or 3"),
        (_set(["config", "image_size"], [64, 64]), "disagrees with the config's image_size"),
        (_set(["thresholds"], {"image": None}), "image must be a finite number"),
        (_set(["sha256"], ""), "--no-integrity-check"),
        (_set(["sha256"], None), "--no-integrity-check"),
    ],
)
def test_broken_deployment_files_are_refused(change, words, exported, trained, tmp_path):
    model = _edit_metadata(exported, tmp_path, change)
    image = sorted(Path(json.loads((trained / "data.json").read_text())["path"]).glob("test/good/*.png"))[0]
    failure = _failure(CliRunner().invoke(edge_main, ["infer", str(model), str(image)]))
    assert failure.code == 3 and words in failure.line


def test_float_and_integer_images_outside_their_range_are_error_records_not_clipped(exported, tmp_path):
    from PIL import Image

    cases = {
        "inf.tiff": (np.full((32, 32), np.inf, np.float32), "F", "NaN or infinite"),
        "thousand.tiff": (np.full((32, 32), 1000.0, np.float32), "F", "values in [0, 1]"),
        "negative.tiff": (np.full((32, 32), -0.5, np.float32), "F", "values in [0, 1]"),
        "int32.tiff": (np.full((32, 32), 100_000, np.int32), "I", "0-65535"),
    }
    for name, (values, mode, _) in cases.items():
        Image.fromarray(values, mode=mode).save(tmp_path / name)
    result = CliRunner().invoke(edge_main, ["infer", str(exported), *(str(tmp_path / name) for name in cases)])
    records = {Path(r["path"]).name: r for r in map(json.loads, result.stdout.splitlines())}
    assert result.exit_code == 1 and "Traceback" not in result.output
    for name, (_, _, words) in cases.items():
        assert "score" not in records[name] and words in records[name]["error"] and name in records[name]["error"]


def test_a_model_without_thresholds_says_so_on_every_record_path(trained, tmp_path):
    from riad_tf.export import export_run

    run = tmp_path / "uncalibrated"
    shutil.copytree(trained, run, ignore=shutil.ignore_patterns("thresholds.json", ".lock"))
    model = export_run(run, tmp_path / "export", formats=("onnx",), batch=None)["onnx"]
    image = sorted(Path(json.loads((trained / "data.json").read_text())["path"]).glob("test/good/*.png"))[0]
    for cli, args in ((main, ["predict", str(run), str(image)]), (edge_main, ["infer", str(model), str(image)])):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
        (record,) = [json.loads(line) for line in result.stdout.splitlines()]
        assert record["threshold_source"] == "none" and "anomalous" not in record and np.isfinite(record["score"])
        assert "has no calibrated thresholds" in result.stderr


def test_metadata_that_is_a_list_and_a_corrupt_model_with_a_matching_sha256(exported, trained, tmp_path):
    from edge.metadata import file_sha256

    listed = tmp_path / "listed" / exported.name
    listed.parent.mkdir()
    shutil.copy(exported, listed)
    Path(f"{listed}.json").write_text("[1, 2]")
    image = sorted(Path(json.loads((trained / "data.json").read_text())["path"]).glob("test/good/*.png"))[0]
    assert _failure(CliRunner().invoke(edge_main, ["infer", str(listed), str(image)])).code == 3

    corrupt = _edit_metadata(exported, tmp_path, lambda meta: None)
    corrupt.write_bytes(b"\x08\x01garbage that is not a protobuf model")
    meta = json.loads(Path(f"{corrupt}.json").read_text())
    Path(f"{corrupt}.json").write_text(json.dumps({**meta, "sha256": file_sha256(corrupt)}))
    failure = _failure(CliRunner().invoke(edge_main, ["infer", str(corrupt), str(image)]))
    assert failure.code == 3 and "ONNX Runtime cannot load this model" in failure.line


def test_skipping_the_integrity_check_takes_a_flag(exported, trained, tmp_path):
    model = _edit_metadata(exported, tmp_path, _set(["sha256"], ""))
    image = sorted(Path(json.loads((trained / "data.json").read_text())["path"]).glob("test/good/*.png"))[0]
    result = CliRunner().invoke(edge_main, ["infer", str(model), str(image), "--no-integrity-check"])
    assert result.exit_code == 0 and "without checking its sha256" in result.output
    assert np.isfinite(json.loads(result.stdout.strip())["score"])


# ----------------------------------------------------------------------------
# Bugs are not user errors


def test_an_internal_bug_keeps_its_traceback(trained, monkeypatch):
    import riad_tf.jobs

    def broken(*args, **kwargs):
        raise ValueError("an internal bug, not the user's fault")

    monkeypatch.setattr(riad_tf.jobs, "evaluate_job", broken)
    result = CliRunner().invoke(main, ["evaluate", str(trained), "--no-report"])
    assert isinstance(result.exception, ValueError) and "Error: an internal bug" not in result.output


def test_a_refused_connection_is_an_input_error(exported):
    failure = _failure(
        CliRunner().invoke(edge_main, ["stream", str(exported), "--source", "tcp://127.0.0.1:9", "--width", "64"])
    )
    assert failure.code == 3 and "cannot connect" in failure.line


def test_evaluate_and_export_check_their_output_before_working(trained, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    evaluate = CliRunner().invoke(main, ["evaluate", str(trained), "--out", str(blocker / "eval"), "--no-report"])
    assert _failure(evaluate).code == 5
    export = CliRunner().invoke(main, ["export", str(trained), "--onnx", "--out", str(blocker / "export")])
    assert _failure(export).code == 5


# ----------------------------------------------------------------------------
# The line-scan stream

REPO = Path(__file__).resolve().parents[1]


def _strip(path: Path, lines: int = 640) -> Path:
    grey = np.random.default_rng(0).integers(100, 156, (lines, 64), dtype=np.uint8)
    Image.fromarray(grey).save(path)
    return path


class _FillingFile:
    """A file on a disk with `room` bytes left: a write past it stores what fits, the next one fails (ENOSPC)."""

    def __init__(self, path, room: int):
        self.file, self.room = open(path, "wb", buffering=0), room

    def write(self, data) -> int:
        if self.room <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        written = self.file.write(bytes(data[: self.room]))
        self.room -= written
        return written

    def truncate(self, size: int) -> int:
        return self.file.truncate(size)

    def seek(self, offset: int) -> int:
        return self.file.seek(offset)

    def close(self) -> None:
        self.file.close()

    @property
    def closed(self) -> bool:
        return self.file.closed


def test_a_full_disk_ends_the_stream_keeping_every_finished_frame(exported, tmp_path, monkeypatch):
    import edge.stream.output

    monkeypatch.setattr(edge.stream.output, "open_own_file", lambda path, *a, **k: _FillingFile(path, 1500))
    out = tmp_path / "out.jsonl"
    command = ["stream", str(exported), "--source", str(_strip(tmp_path / "strip.png")), "--output", str(out)]
    failure = _failure(CliRunner().invoke(edge_main, [*command, "--frame-height", "32", "--overlap", "0"]))
    assert failure.code == 5 and "out.jsonl" in failure.line and "No space left on device" in failure.line
    records = [json.loads(line) for line in out.read_text().splitlines()]  # whole records only
    assert records and all(r["type"] == "frame" for r in records) and len(records) < 20
    assert [r["frame"] for r in records] == list(range(len(records))) and not list(tmp_path.glob("*.partial"))


def test_a_stream_without_free_space_is_refused_before_it_starts(exported, tmp_path, monkeypatch):
    import edge.files

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(edge.files.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 2**20, 2**20))
    out = tmp_path / "out" / "records.jsonl"
    command = ["stream", str(exported), "--source", str(_strip(tmp_path / "strip.png")), "--output", str(out)]
    failure = _failure(CliRunner().invoke(edge_main, command))
    assert failure.code == 5 and "1 MiB free" in failure.line and not list(out.parent.iterdir())


def _start_stream(exported, source: str, out: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "edge.cli", "stream", str(exported), "--source", source, "--width", "64"]
    command += ["--frame-height", "32", "--overlap", "0", "--output", str(out)]
    return subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, text=True)


def _interrupt_within_2_s(stream: subprocess.Popen, out: Path, stop=signal.SIGINT) -> dict:
    """Waits until the stream writes its output, sends Ctrl-C (or `stop`), returns the summary written on the way out."""
    partial = out.with_name(out.name + ".partial")
    started = time.monotonic()
    while not partial.exists() and stream.poll() is None and time.monotonic() - started < 60:
        time.sleep(0.05)
    time.sleep(0.5)  # the capture thread is now waiting in a read
    sent = time.monotonic()
    stream.send_signal(stop)
    try:
        stream.wait(timeout=10)
    finally:
        stream.kill()
    took = time.monotonic() - sent
    assert stream.returncode == 0 and took < 2.0, (took, stream.stderr.read())
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records[-1]["type"] == "summary" and not partial.exists()
    return records[-1]


def test_ctrl_c_ends_a_stream_whose_tcp_camera_sends_nothing(exported, tmp_path):
    server = socket.create_server(("127.0.0.1", 0))
    out = tmp_path / "tcp.jsonl"
    stream = _start_stream(exported, f"tcp://127.0.0.1:{server.getsockname()[1]}", out)
    connection = None
    try:
        server.settimeout(60)
        connection, _ = server.accept()
        connection.sendall(bytes(64 * 40))  # one frame and a part, then silence
        summary = _interrupt_within_2_s(stream, out)
    finally:
        stream.kill()
        if connection is not None:
            connection.close()
        server.close()
    assert summary["interrupted"] and summary["lines"] == 40 and summary["frames"] == 2  # the part flushed too


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_ends_a_stream_whose_fifo_writer_is_silent(exported, tmp_path, stop):
    fifo = tmp_path / "camera.fifo"
    os.mkfifo(fifo)
    out = tmp_path / "fifo.jsonl"
    stream = _start_stream(exported, f"raw:{fifo}", out)
    try:
        with open(fifo, "wb") as writer:  # opens once the stream has opened its end
            summary = _interrupt_within_2_s(stream, out, stop)
    finally:
        stream.kill()
    assert summary["interrupted"] and summary["lines"] == 0 and writer.closed


def test_a_tcp_camera_that_restarts_is_reconnected_with_back_off():
    from edge.stream import BadBlock, LineBlock
    from edge.stream.sources import open_raw

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def camera():  # sends 10 lines, restarts once, sends 10 more, then is gone
        for value in (1, 2):
            connection, _ = server.accept()
            connection.sendall(bytes([value]) * 8 * 10)
            connection.close()
        server.close()

    thread = threading.Thread(target=camera, daemon=True)
    thread.start()
    source = open_raw(f"tcp://127.0.0.1:{port}", reconnect=1.0, width=8, lines_per_block=4)
    blocks = []
    with pytest.raises(ValueError, match=r"cannot connect: Connection refused \(retried for 1 s\)"):
        blocks.extend(source)
    lines = np.concatenate([b.lines[:, 0, 0] for b in blocks if isinstance(b, LineBlock)])
    assert lines.tolist() == [1] * 10 + [2] * 10
    assert [b.reason for b in blocks if isinstance(b, BadBlock)] == [
        f"tcp://127.0.0.1:{port}: the stream ended at byte 80; reconnected"
    ]


def test_riad_edge_video_checks_its_output_before_decoding(exported, tmp_path, monkeypatch):
    import edge.cli

    frames = tmp_path / "frames"
    frames.mkdir()
    for index in range(3):
        Image.fromarray(np.full((32, 32), 120 + index, np.uint8)).save(frames / f"{index:03d}.png")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    opened = []
    monkeypatch.setattr(edge.cli, "_open_runner", lambda *args: opened.append(args))
    result = CliRunner().invoke(edge_main, ["video", str(exported), str(frames), "--output", str(blocker / "s.csv")])
    failure = _failure(result)
    assert failure.code == 5 and "a-file" in failure.line and not opened


def test_records_after_a_failed_write_follow_the_last_whole_one(tmp_path, monkeypatch):
    import edge.stream.output
    from edge.errors import OutputError
    from edge.stream import JsonLines

    files = []
    monkeypatch.setattr(
        edge.stream.output, "open_own_file", lambda path, *a, **k: files.append(_FillingFile(path, 30)) or files[-1]
    )
    writer = JsonLines(tmp_path / "out.jsonl")
    writer.write({"type": "frame", "frame": 0})  # 29 bytes
    with pytest.raises(OutputError):
        writer.write({"type": "frame", "frame": 1})  # 1 byte fits, then the disk is full
    files[0].room = 10**6  # space again (another process freed some)
    writer.write({"type": "summary"})
    writer.close()
    assert [json.loads(line)["type"] for line in (tmp_path / "out.jsonl").read_text().splitlines()] == [
        "frame",
        "summary",
    ]


# ----------------------------------------------------------------------------
# Run-directory files and model metadata: random values, never a traceback

JUNK = [
    None,
    True,
    0,
    -1,
    5,
    1e308,
    float("nan"),
    float("inf"),
    "",
    "abc",
    [],
    [5],
    [1, 2, 3],
    ["a", "b"],
    {},
    {"x": 1},
]


def _mutations(record: dict):
    """The record replaced whole by each junk value, then each key of it set to each junk value."""
    yield from JUNK
    for key in record:
        for junk in JUNK:
            yield {**record, key: junk}


def _use_thresholds(thresholds):
    from edge.verdicts import is_anomalous

    is_anomalous(0.5, np.zeros((8, 8), np.float32), thresholds)


def _use_preprocessing(preprocessing):
    from edge.inspection import size_problem, tiling_of

    size_problem((32, 48), preprocessing)
    tiling_of(preprocessing, (32, 32))


@pytest.mark.parametrize(
    "name, load, use",
    [
        ("thresholds.json", "load_thresholds", _use_thresholds),
        ("preprocessing.json", "load_preprocessing", _use_preprocessing),
        ("data.json", "load_data_spec", lambda spec: None),
    ],
)
def test_random_values_in_run_files_are_one_line_errors_or_work(trained, name, load, use, tmp_path):
    import shutil
    import warnings

    from edge.errors import RiadError
    from riad_tf import run as runs

    run = tmp_path / "run"
    run.mkdir()
    for small in ("config.yaml", "thresholds.json", "data.json"):
        shutil.copy(trained / small, run / small)
    original = json.loads((trained / name).read_text()) if (trained / name).is_file() else {"native_size": [32, 32]}
    refused = 0
    for value in _mutations(original):
        (run / name).write_text(json.dumps(value))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                loaded = getattr(runs, load)(run)
        except RiadError as err:
            assert name in str(err) and "\n" not in str(err)
            refused += 1
            continue
        use(loaded)  # what is accepted must be usable
    (run / name).write_text("{not json")
    with pytest.raises(RiadError, match=name):
        getattr(runs, load)(run)
    assert refused >= len(JUNK)  # every whole-file replacement at least


def test_random_values_in_model_metadata_are_one_line_errors_or_work(trained, tmp_path):
    from edge.errors import RiadError
    from edge.metadata import ModelMetadata, metadata_path, read_metadata
    from riad_tf.export import export_run

    written = export_run(trained, tmp_path / "export", formats=("onnx",), batch=None)
    model = written["onnx"]
    original = json.loads(metadata_path(model).read_text())
    copy = tmp_path / "copy" / "riad.onnx"
    copy.parent.mkdir()
    copy.write_bytes(b"")  # no metadata inside: the JSON beside it is all there is
    checked = 0
    for field in ("thresholds", "preprocessing", "config", "input_shape", "masks_file", "graph", "precision"):
        inner = original[field] if isinstance(original[field], dict) else {}
        for value in [*JUNK, *(v for v in _mutations(inner) if isinstance(v, dict))]:
            metadata_path(copy).write_text(json.dumps({**original, field: value}))
            try:
                metadata = read_metadata(copy, verify=False)
            except RiadError as err:
                assert str(copy.name) in str(err) and "\n" not in str(err)
                continue
            checked += 1
            assert isinstance(metadata, ModelMetadata)
            if metadata.thresholds:
                _use_thresholds(metadata.thresholds)
            if metadata.preprocessing:
                _use_preprocessing(metadata.preprocessing)
    assert checked > 0
