"""Recalibration reaches the line: `riad-tf calibrate` names the run's exports, `riad-edge set-thresholds` updates them.

One tiny run (random weights: the thresholds need scores, not a good model)
is calibrated at a 50 % target on 6 good images (the 4th smallest score),
exported to ONNX and TFLite, then recalibrated at 20 % (the largest score):
an image scored between the two thresholds is anomalous before the update
and good after it.
"""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner
from test_export import _config, texture_files

from edge.cli import main as edge_main
from edge.embedded import read_embedded
from edge.metadata import metadata_path, read_metadata
from riad_tf.cli import main as riad_main

MARGIN = 1e-4  # exported models' scores differ from the Keras detector's (which calibrated) by less


def _ok(result):
    assert result.exit_code == 0, result.output
    return result


def _infer(model, images) -> list[dict]:
    result = _ok(CliRunner().invoke(edge_main, ["infer", str(model), str(images)]))
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.fixture(scope="module")
def good_images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("good")
    return texture_files(folder, 6)


@pytest.fixture(scope="module")
def recalibrated(good_images, tmp_path_factory):
    """The run, its two exports, and `riad-tf calibrate --json`'s result of the recalibration."""
    import keras

    from riad_tf.model import build_unet
    from riad_tf.run import save_model

    keras.utils.set_random_seed(5)
    config = _config()
    run, export = tmp_path_factory.mktemp("run"), tmp_path_factory.mktemp("export")
    save_model(run, build_unet(config.input_shape, config.unet_widths), config)
    calibrate = ["calibrate", str(run), "--good", str(good_images), "--target-fpr"]
    _ok(CliRunner().invoke(riad_main, [*calibrate, "0.5"]))
    _ok(
        CliRunner().invoke(
            riad_main, ["export", str(run), "--onnx", "--tflite", "--fixed-batch", "0", "--out", str(export)]
        )
    )
    result = _ok(CliRunner().invoke(riad_main, [*calibrate, "0.2", "--json"]))
    models = {"onnx": export / "riad.onnx", "tflite": export / "riad_fp32.tflite"}
    return run, models, result


def _deployed(models: dict, folder) -> dict:
    """Copies of the exported models with their JSON, as on a device."""
    copies = {}
    for kind, model in models.items():
        copies[kind] = shutil.copy(model, folder / model.name)
        shutil.copy(metadata_path(model), metadata_path(copies[kind]))
    return copies


def test_calibrate_says_what_changed_and_names_the_command_for_each_export(recalibrated):
    run, models, result = recalibrated
    (summary,) = [json.loads(line) for line in result.stdout.splitlines()]  # one JSON object, only with --json
    assert summary["image"]["new"] > summary["image"]["old"] and summary["num_images"] == 6
    assert summary["image"]["new"] == json.loads((run / "thresholds.json").read_text())["image"]
    exports = json.loads((run / "exports.json").read_text())
    assert [(e["model"], e["format"], e["precision"]) for e in exports] == [
        (str(models["tflite"].resolve()), "tflite", "fp32"),
        (str(models["onnx"].resolve()), "onnx", "fp32"),
    ]
    commands = [f"riad-edge set-thresholds {e['model']} --from {run.resolve()}" for e in exports]
    assert summary["commands"] == commands
    old, new = summary["image"]["old"], summary["image"]["new"]
    assert (
        f"image threshold {old:.6g} -> {new:.6g}" in result.stderr and "target false-positive rate 0.2" in result.stderr
    )
    assert all(f"  {command}" in result.stderr.splitlines() for command in commands)
    assert "every copy deployed elsewhere" in result.stderr


def test_set_thresholds_updates_both_copies_and_infer_follows_the_new_threshold(recalibrated, good_images, tmp_path):
    run, models, result = recalibrated
    (summary,) = [json.loads(line) for line in result.stdout.splitlines()]
    old, new = summary["image"]["old"], summary["image"]["new"]
    deployed = _deployed(models, tmp_path)
    flipping = set()
    for model in deployed.values():  # stale: the export's threshold, and the images above it rejected
        before = _infer(model, good_images)
        assert {r["threshold"] for r in before} == {old} and all(r["anomalous"] == (r["score"] > old) for r in before)
        flipping |= {r["path"] for r in before if old + MARGIN < r["score"] < new - MARGIN and r["anomalous"]}
    assert flipping  # the 5th of 6 scores lies between the 4th (old) and the 6th (new)

    update = _ok(
        CliRunner().invoke(edge_main, ["set-thresholds", *map(str, deployed.values()), "--from", str(run), "--json"])
    )
    records = [json.loads(line) for line in update.stdout.splitlines()]
    assert [r["image_threshold"] for r in records] == [{"old": old, "new": new}] * 2 and all(
        r["changed"] for r in records
    )
    assert f"image threshold {old:.6g} -> {new:.6g}" in update.stderr and str(run / "thresholds.json") in update.stderr

    thresholds = json.loads((run / "thresholds.json").read_text())
    for model in deployed.values():
        assert (
            read_metadata(model, verify=True).thresholds == thresholds
        )  # the JSON, its sha256 and the copy inside agree
        assert read_embedded(model)["thresholds"] == thresholds
        after = _infer(model, good_images)
        assert {r["threshold"] for r in after} == {new} and all(r["anomalous"] == (r["score"] > new) for r in after)
        assert not any(r["anomalous"] for r in after if r["path"] in flipping)


def test_a_run_of_another_model_is_refused_in_one_line_unless_forced(recalibrated, tmp_path):
    from riad_tf.run import save_config

    run, models, _ = recalibrated
    other = tmp_path / "other-run"
    other.mkdir()
    save_config(other, _config(seed=2))
    shutil.copy(run / "thresholds.json", other / "thresholds.json")
    model = _deployed({"onnx": models["onnx"]}, tmp_path)["onnx"]
    before = model.read_bytes(), metadata_path(model).read_bytes()

    refused = CliRunner().invoke(edge_main, ["set-thresholds", str(model), "--from", str(other)])
    errors = [line for line in refused.output.splitlines() if line.startswith("Error: ")]
    assert refused.exit_code == 3 and len(errors) == 1, refused.output
    assert (
        str(other / "config.yaml") in errors[0]
        and str(metadata_path(model)) in errors[0]
        and "seed: 1 (model), 2 (run)" in errors[0]
    )
    assert (model.read_bytes(), metadata_path(model).read_bytes()) == before

    forced = _ok(CliRunner().invoke(edge_main, ["set-thresholds", str(model), "--from", str(other), "--force"]))
    assert (
        "--force" in forced.stderr
        and read_metadata(model).thresholds["image"] == json.loads((run / "thresholds.json").read_text())["image"]
    )


def test_a_thresholds_file_is_accepted_and_one_without_its_config_needs_force(recalibrated, tmp_path):
    run, models, _ = recalibrated
    model = _deployed({"tflite": models["tflite"]}, tmp_path)["tflite"]
    _ok(CliRunner().invoke(edge_main, ["set-thresholds", str(model), "--from", str(run / "thresholds.json")]))
    lone = tmp_path / "lone" / "thresholds.json"
    lone.parent.mkdir()
    shutil.copy(run / "thresholds.json", lone)
    refused = CliRunner().invoke(edge_main, ["set-thresholds", str(model), "--from", str(lone)])
    assert refused.exit_code == 3 and "no config.yaml beside it" in refused.output
    broken = tmp_path / "broken" / "thresholds.json"
    broken.parent.mkdir()
    broken.write_text(json.dumps({"image": float("nan")}).replace("NaN", '"x"'))
    result = CliRunner().invoke(edge_main, ["set-thresholds", str(model), "--from", str(broken)])
    assert result.exit_code == 3 and f"{broken}: thresholds image must be a finite number" in result.output
