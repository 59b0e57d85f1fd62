"""Runtime choice and self-describing model files: OpenVINO against ONNX Runtime, metadata inside the model.

One tiny RIAD detector (random weights: the runtimes must agree on any
weights) is exported to ONNX and TFLite by `riad_tf.export`, which puts the
metadata inside each file as well as beside it.
"""

from __future__ import annotations

import asyncio
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from test_export import THRESHOLDS, _config, _textures, texture_files

from edge.cli import main
from edge.embedded import FILE_FACTS, read_embedded
from edge.runner import Runner

OPENVINO_FP32_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    import keras

    from riad_tf.detector import Detector
    from riad_tf.export import export_detector
    from riad_tf.model import build_unet

    keras.utils.set_random_seed(3)
    config = _config()
    detector = Detector(build_unet(config.input_shape, config.widths), config)
    return export_detector(
        detector, tmp_path_factory.mktemp("runtimes"), formats=("tflite", "onnx"), batch=None, thresholds=THRESHOLDS
    )


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    return texture_files(folder, 5)


def _records(result) -> list[dict]:
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


# ----------------------------------------------------------------------------
# OpenVINO


def test_openvino_gives_onnx_runtimes_scores_and_maps(exported):
    from edge.openvino import OpenVinoSettings

    batch = _textures(3, seed=5).astype(np.float32)
    onnx_runtime = Runner.open(exported["onnx"])
    openvino = Runner.open(exported["onnx"], openvino=OpenVinoSettings("CPU", "f32"))
    assert openvino.session.backend == "openvino" and openvino.session.input_shape == (None, 32, 32, 3)
    (maps, scores), (ov_maps, ov_scores) = onnx_runtime(batch), openvino(batch)
    assert np.abs(ov_maps - maps).max() <= OPENVINO_FP32_TOLERANCE
    assert np.abs(ov_scores - scores).max() <= OPENVINO_FP32_TOLERANCE
    assert np.ptp(scores) > 10 * OPENVINO_FP32_TOLERANCE  # the images differ by more than the tolerance
    one_by_one = np.concatenate([openvino(batch[i : i + 1])[1] for i in range(3)])  # dynamic batch
    np.testing.assert_allclose(one_by_one, ov_scores, atol=OPENVINO_FP32_TOLERANCE)


def test_riad_edge_infer_on_openvino_prints_the_same_records(exported, images):
    onnx_runtime = _records(CliRunner().invoke(main, ["infer", str(exported["onnx"]), str(images)]))
    openvino = _records(
        CliRunner().invoke(main, ["infer", str(exported["onnx"]), str(images), "--runtime", "openvino"])
    )
    assert [r["path"] for r in openvino] == [r["path"] for r in onnx_runtime] and len(openvino) == 5
    for ours, theirs in zip(openvino, onnx_runtime):
        assert ours["score"] == pytest.approx(theirs["score"], abs=OPENVINO_FP32_TOLERANCE)
        assert ours["anomalous"] == theirs["anomalous"]


@pytest.mark.parametrize(
    "options, code, words",
    [
        (["--runtime", "openvino", "--openvino-device", "NPU7"], 6, "OpenVINO device 'NPU7' is not here"),
        (["--runtime", "openvino", "--provider", "cpu"], 2, "does not go with --runtime openvino"),
        (["--openvino-precision", "bf16"], 2, "need --runtime openvino"),
    ],
)
def test_openvino_option_mistakes_are_named(exported, images, options, code, words):
    result = CliRunner().invoke(main, ["infer", str(exported["onnx"]), str(images), *options])
    assert result.exit_code == code and words in result.output and "Traceback" not in result.output


# ----------------------------------------------------------------------------
# Metadata inside the model file


@pytest.mark.parametrize("kind", ["onnx", "tflite"])
def test_the_model_file_carries_its_metadata(exported, kind):
    beside = json.loads(exported[f"{kind}_metadata"].read_text())
    inside = read_embedded(exported[kind])
    assert inside == {k: v for k, v in beside.items() if k not in FILE_FACTS}
    assert inside["thresholds"] == THRESHOLDS and inside["config"]["ks"] == [2, 4]


def test_the_onnx_reader_agrees_with_the_onnx_library(exported):
    import onnx

    props = {p.key: p.value for p in onnx.load(exported["onnx"]).metadata_props}
    assert json.loads(props["riad-edge"]) == read_embedded(exported["onnx"])


@pytest.mark.parametrize("kind", ["onnx", "tflite"])
def test_a_model_file_copied_alone_runs_with_infer(exported, images, kind, tmp_path):
    alone = tmp_path / f"renamed{exported[kind].suffix}"
    shutil.copy(exported[kind], alone)
    with_json = _records(CliRunner().invoke(main, ["infer", str(exported[kind]), str(images)]))
    without = _records(CliRunner().invoke(main, ["infer", str(alone), str(images)]))
    assert [r["score"] for r in without] == [r["score"] for r in with_json]
    assert [r["threshold"] for r in without] == [r["threshold"] for r in with_json]


def test_a_model_file_copied_alone_is_served(exported, images, tmp_path):
    from aiohttp.test_utils import TestClient, TestServer

    from edge.serve import ServeSettings, Service

    alone = tmp_path / "riad.onnx"
    shutil.copy(exported["onnx"], alone)
    image = images / "0.png"
    expected = _records(CliRunner().invoke(main, ["infer", str(exported["onnx"]), str(image)]))[0]

    async def scenario():
        client = TestClient(TestServer(Service(lambda: Runner.open(alone), ServeSettings()).app()))
        await client.start_server()
        try:
            answer = await client.post("/predict", data=image.read_bytes())
            return answer.status, await answer.json()
        finally:
            await client.close()

    status, record = asyncio.run(scenario())
    assert status == 200 and record["score"] == pytest.approx(expected["score"], abs=1e-6)


def test_metadata_beside_that_disagrees_with_the_copy_inside_is_refused(exported, images, tmp_path):
    model = tmp_path / "riad.onnx"
    shutil.copy(exported["onnx"], model)
    values = json.loads(exported["onnx_metadata"].read_text())
    values["thresholds"] = {**values["thresholds"], "image": 0.9}
    (tmp_path / "riad.onnx.json").write_text(json.dumps(values))
    result = CliRunner().invoke(main, ["infer", str(model), str(images)])
    assert result.exit_code == 3 and "disagrees with the metadata inside riad.onnx on thresholds" in result.output


def test_a_model_without_metadata_anywhere_is_named(tmp_path, images):
    model = tmp_path / "plain.onnx"
    model.write_bytes(b"\x08\x07")  # a protobuf with only ir_version: no metadata_props
    result = CliRunner().invoke(main, ["infer", str(model), str(images)])
    assert result.exit_code == 3 and "plain.onnx has none inside" in result.output


@pytest.mark.parametrize("kind", ["onnx", "tflite"])
def test_a_recalibrated_model_carries_its_new_thresholds_in_both_copies(exported, images, kind, tmp_path):
    import dataclasses

    from edge.metadata import read_metadata, update_metadata

    model = tmp_path / exported[kind].name
    shutil.copy(exported[kind], model)
    metadata = read_metadata(exported[kind])
    update_metadata(model, dataclasses.replace(metadata, thresholds={**THRESHOLDS, "image": 0.123}))
    assert read_embedded(model)["thresholds"]["image"] == 0.123
    records = _records(CliRunner().invoke(main, ["infer", str(model), str(images)]))  # JSON and copy agree
    assert {r["threshold"] for r in records} == {0.123}
