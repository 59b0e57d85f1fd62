"""The TensorFlow-free edge runtime: numpy scoring, preprocessing, metadata, runner, CLI, TensorRT fallbacks.

Models here are built by hand with `onnx.helper` (a one-convolution "U-Net"),
so these tests need no export; `test_export.py` runs the runner on real exports.
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edge import inpaint as edge_inpaint
from edge import scoring as edge_scoring
from edge.images import as_unit_float, load_image, to_model_input
from edge.metadata import MetadataError, ModelMetadata, file_sha256, metadata_path, read_metadata, write_metadata

REPO = Path(__file__).resolve().parents[1]
SIZE = 32
CONFIG = dict(image_size=(SIZE, SIZE), widths=(4, 8, 8, 16, 16), ks=(2, 4), smoothing=5, seed=3)
THRESHOLDS = {"image": 0.2, "region": 0.3}


def _config():
    from riad_tf.config import RiadConfig

    return RiadConfig(**CONFIG)


def _textures(count, seed=0, size=SIZE):
    from riad_tf.synthetic import woven_texture

    rng = np.random.default_rng(seed)
    return np.stack([woven_texture(size, rng) for _ in range(count)])


# ----------------------------------------------------------------------------
# Numpy scoring and inpainting against the TensorFlow code


@pytest.mark.parametrize("score_function", ["msgms", "ssim"])
@pytest.mark.parametrize("smoothing", [5, 4, 21])
def test_numpy_anomaly_map_matches_tensorflow(score_function, smoothing):
    from riad_tf.scoring import anomaly_map

    rng = np.random.default_rng(1)
    images = _textures(2)
    recs = np.clip(images[None] + 0.1 * rng.standard_normal((3, *images.shape)), 0, 1).astype(np.float32)
    maps, scores = edge_scoring.anomaly_map(images, recs, smoothing=smoothing, score_function=score_function)
    tf_maps, tf_scores = anomaly_map(images, recs, smoothing=smoothing, score_function=score_function)
    assert maps.shape == (2, SIZE, SIZE) and maps.dtype == np.float32
    np.testing.assert_allclose(maps, tf_maps.numpy(), atol=1e-5)
    np.testing.assert_allclose(scores, tf_scores.numpy(), atol=1e-5)
    assert np.abs(maps).max() > 1e-3  # the reconstructions differ, so the maps are not trivially zero


@pytest.mark.parametrize("in_size,out_size", [(4, 32), (8, 32), (16, 32), (5, 7), (12, 5)])
def test_bilinear_resize_matches_tf_image_resize(in_size, out_size):
    import tensorflow as tf

    values = np.random.default_rng(2).random((3, in_size, in_size), dtype=np.float32)
    expected = tf.image.resize(values[..., None], (out_size, out_size), method="bilinear").numpy()[..., 0]
    np.testing.assert_allclose(edge_scoring.resize_bilinear(values, (out_size, out_size)), expected, atol=1e-6)


@pytest.mark.parametrize("size", [1, 4, 5, 21, 40])
def test_mean_filter_averages_only_in_image_pixels(size):
    import tensorflow as tf

    maps = np.random.default_rng(3).random((2, 16, 24), dtype=np.float32)
    expected = tf.nn.avg_pool2d(maps[..., None], ksize=size, strides=1, padding="SAME").numpy()[..., 0]
    np.testing.assert_allclose(edge_scoring.mean_filter(maps, size), expected, atol=1e-6)


def test_inpainting_matches_tensorflow_and_checks_the_partition():
    from riad_tf.inpaint import assemble, mask_images
    from riad_tf.masks import inference_masks

    cfg = _config()
    masks = inference_masks(SIZE, SIZE, cfg.ks, cfg.n, cfg.seed)  # (|K|, n, H, W, 1)
    images = _textures(2)
    copies = edge_inpaint.masked_copies(images, masks)
    assert copies.shape == (2 * len(cfg.ks) * cfg.n, SIZE, SIZE, 3)
    for k in range(len(cfg.ks)):  # image-major, then k, then i
        expected = mask_images(images, masks[k]).numpy().reshape(2, cfg.n, SIZE, SIZE, 3)
        np.testing.assert_array_equal(copies.reshape(2, len(cfg.ks), cfg.n, SIZE, SIZE, 3)[:, k], expected)
    outputs = np.random.default_rng(4).random(copies.shape, dtype=np.float32)
    recs = edge_inpaint.assemble(outputs, masks)
    per_k = outputs.reshape(2, len(cfg.ks), cfg.n, SIZE, SIZE, 3)
    for k in range(len(cfg.ks)):  # Eq. 2, per k
        expected = assemble(per_k[:, k].reshape(-1, SIZE, SIZE, 3), masks[k]).numpy()
        np.testing.assert_allclose(recs[k], expected, atol=1e-6)
    uint8 = edge_inpaint.masked_copies(np.round(images * 255).astype(np.uint8), masks.astype(np.uint8))
    assert uint8.dtype == np.uint8
    np.testing.assert_array_equal(
        edge_inpaint.check_masks(masks.astype(np.uint8), cfg.ks, cfg.n, cfg.image_size), masks
    )
    broken = masks.copy()
    broken[0, 0, 0, 0, 0] = 1 - broken[0, 0, 0, 0, 0]
    with pytest.raises(ValueError, match="Eq. 1"):
        edge_inpaint.check_masks(broken, cfg.ks, cfg.n, cfg.image_size, "m.npy")
    with pytest.raises(ValueError, match="shape"):
        edge_inpaint.check_masks(masks[:1], cfg.ks, cfg.n, cfg.image_size, "m.npy")


# ----------------------------------------------------------------------------
# Preprocessing


def test_preprocessing_matches_the_training_reader(tmp_path):
    from riad_tf.image_files import read_image

    rng = np.random.default_rng(5)
    files = {
        "grey.png": rng.integers(0, 256, (40, 52), dtype=np.uint8),
        "rgb.jpg": rng.integers(0, 256, (24, 20, 3), dtype=np.uint8),
        "rgba.png": rng.integers(0, 256, (32, 32, 4), dtype=np.uint8),
        "deep.png": rng.integers(0, 65536, (20, 28), dtype=np.uint16),
    }
    for name, values in files.items():
        Image.fromarray(values).save(tmp_path / name)
    for channels in (1, 3):
        for name in files:
            got = to_model_input([load_image(tmp_path / name)], (SIZE, SIZE), channels, "float32")[0]
            expected = read_image(tmp_path / name, (SIZE, SIZE), channels)
            np.testing.assert_allclose(got, expected, atol=1e-6, err_msg=f"{name}, {channels} channels")
    batch = to_model_input([files["grey.png"], files["rgba.png"] / 255.0], (SIZE, SIZE), 3, "uint8")
    assert batch.shape == (2, SIZE, SIZE, 3) and batch.dtype == np.uint8
    np.testing.assert_array_equal(batch[1], files["rgba.png"][..., :3])  # same size: only alpha dropped


def test_bad_images_give_one_line_errors(tmp_path):
    from edge.images import ImageError

    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ImageError, match="broken.png: cannot read image"):
        load_image(tmp_path / "broken.png")
    with pytest.raises(ImageError, match="dtype"):
        as_unit_float(np.zeros((4, 4), np.complex64))
    with pytest.raises(ImageError, match="shape"):
        as_unit_float(np.zeros((4, 4, 7), np.float32))


# ----------------------------------------------------------------------------
# A hand-made ONNX "U-Net" (one 3x3 convolution + sigmoid) with its metadata


def _toy_weights():
    rng = np.random.default_rng(6)
    return rng.normal(0, 0.3, (3, 3, 3, 3)).astype(np.float32), rng.normal(0, 0.1, 3).astype(np.float32)


def _write_toy_unet(folder: Path, batch=None, thresholds=THRESHOLDS, name="toy") -> Path:
    """A bare-U-Net export by hand: toy.onnx, toy.onnx.json, toy.masks.npy."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from riad_tf.masks import inference_masks

    cfg = _config()
    kernel, bias = _toy_weights()  # kernel (O, I, 3, 3)
    dims = [batch or "batch", SIZE, SIZE, 3]
    graph = helper.make_graph(
        [
            helper.make_node("Transpose", ["images"], ["nchw"], perm=[0, 3, 1, 2]),
            helper.make_node("Conv", ["nchw", "W", "B"], ["conv"], pads=[1, 1, 1, 1]),
            helper.make_node("Sigmoid", ["conv"], ["sig"]),
            helper.make_node("Transpose", ["sig"], ["reconstruction"], perm=[0, 2, 3, 1]),
        ],
        "toy_unet",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("reconstruction", TensorProto.FLOAT, dims)],
        initializer=[numpy_helper.from_array(kernel, "W"), numpy_helper.from_array(bias, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.onnx"
    onnx.save(model, path)
    masks = folder / f"{name}.masks.npy"
    np.save(masks, inference_masks(SIZE, SIZE, cfg.ks, cfg.n, cfg.seed).astype(np.uint8))
    metadata = ModelMetadata(
        format="onnx",
        graph="unet",
        precision="fp32",
        quantization="none",
        model_file=path.name,
        sha256=file_sha256(path),
        input_name="images",
        input_shape=(batch, SIZE, SIZE, 3),
        input_dtype="float32",
        output_names=("reconstruction",),
        config=cfg.to_dict(),
        thresholds=thresholds,
        masks_file=masks.name,
        masks_sha256=file_sha256(masks),
        riad_tf_version="test",
    )
    write_metadata(path, metadata)
    return path


def _toy_detector():
    """The Keras twin of the toy U-Net inside riad-tf's Detector."""
    import keras

    from riad_tf.detector import Detector

    kernel, bias = _toy_weights()
    conv = keras.layers.Conv2D(3, 3, padding="same", activation="sigmoid")
    unet = keras.Sequential([keras.Input((SIZE, SIZE, 3)), conv])
    conv.set_weights([kernel.transpose(2, 3, 1, 0), bias])  # OIHW -> HWIO
    return Detector(unet, _config())


@pytest.fixture(scope="module")
def toy_unet(tmp_path_factory):
    return _write_toy_unet(tmp_path_factory.mktemp("toy"))


def test_bad_mask_files_of_a_bare_unet_are_one_line_errors(toy_unet, tmp_path):
    import io
    import shutil

    from edge.errors import InputError
    from edge.runner import Runner

    masks_name = f"{toy_unet.stem}.masks.npy"
    good = np.load(toy_unet.with_name(masks_name))
    wrong_values = good.astype(np.float32) * 0.5 + 0.25
    not_a_partition = good.copy()
    not_a_partition[:, 0] = 1  # pixels removed in no mask
    pickled = io.BytesIO()
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    cases = {
        "truncated": good.tobytes()[:50],
        "pickled": pickled.getvalue(),
        "wrong shape": _npy(good[:1]),
        "not 0 and 1": _npy(wrong_values),
        "not a partition": _npy(not_a_partition),
    }
    for label, data in cases.items():
        folder = tmp_path / label.replace(" ", "-")
        folder.mkdir()
        for path in toy_unet.parent.glob(f"{toy_unet.stem}.*"):
            shutil.copy(path, folder / path.name)
        (folder / masks_name).write_bytes(data)
        with pytest.raises(InputError) as refused:
            Runner.open(folder / toy_unet.name, verify=False)
        message = str(refused.value)
        assert masks_name in message and "\n" not in message, (label, message)


def _npy(array) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.mark.parametrize("max_batch", [None, 5, 24])
def test_bare_unet_runner_matches_the_keras_detector(toy_unet, max_batch):
    from edge.runner import Runner

    images = _textures(3, seed=7)
    runner = Runner.open(toy_unet, max_batch=max_batch, threads=1)
    assert runner.copies_per_image == 6
    maps, scores = runner(images)
    expected_maps, expected_scores = _toy_detector().score(images)
    print(f"toy bare U-Net, max_batch={max_batch}: max |maps - Keras| = {np.abs(maps - expected_maps).max():.2e}")
    np.testing.assert_allclose(maps, expected_maps, atol=1e-4)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-4)
    np.testing.assert_array_equal(runner.verdicts(scores), scores > THRESHOLDS["image"])
    np.testing.assert_array_equal(runner.anomalous_pixels(maps), maps > THRESHOLDS["region"])


def test_fixed_batch_model_is_padded_and_uint8_images_are_scaled(tmp_path):
    from edge.runner import Runner

    dynamic = Runner.open(_write_toy_unet(tmp_path / "dynamic"))
    fixed = Runner.open(_write_toy_unet(tmp_path / "fixed", batch=4))
    assert fixed.max_batch == 4  # 2 images = 12 copies: three full calls of 4
    images = _textures(2, seed=8)
    maps, scores = fixed(images)
    np.testing.assert_allclose(maps, dynamic(images)[0], atol=1e-6)
    as_uint8 = np.round(images * 255).astype(np.uint8)
    np.testing.assert_allclose(dynamic(as_uint8)[0], dynamic(as_uint8 / 255.0)[0], atol=1e-6)
    with pytest.raises(ValueError, match="preprocess"):
        dynamic(images[:, :16])
    assert dynamic(images[:0])[0].shape == (0, SIZE, SIZE)


def test_metadata_is_checked(tmp_path, toy_unet):
    from edge.runner import Runner

    meta = read_metadata(toy_unet)
    assert meta.graph == "unet" and meta.ks == (2, 4) and meta.n == 3 and meta.batch is None
    assert json.loads(metadata_path(toy_unet).read_text())["schema"] == "riad-edge/1"
    folder = _write_toy_unet(tmp_path / "changed").parent
    (folder / "toy.masks.npy").write_bytes((folder / "toy.masks.npy").read_bytes() + b"\0")
    with pytest.raises(MetadataError, match="toy.masks.npy: sha256 differs"):
        Runner.open(folder / "toy.onnx")
    lonely = tmp_path / "lonely.onnx"
    lonely.write_bytes(toy_unet.read_bytes())
    with pytest.raises(MetadataError, match="lonely.onnx.json: metadata not found"):
        Runner.open(lonely)
    metadata_path(lonely).write_text(json.dumps({**meta.to_dict(), "schema": "other/9"}))
    with pytest.raises(MetadataError, match="not riad-edge metadata"):
        read_metadata(lonely)
    renamed = tmp_path / "changed" / "toy.tflite"
    renamed.write_bytes(toy_unet.read_bytes())
    metadata_path(renamed).write_text(metadata_path(folder / "toy.onnx").read_text())
    with pytest.raises(MetadataError, match="sha256 differs"):
        Runner.open(renamed)
    with pytest.raises(ValueError, match="describes a onnx model"):
        Runner.open(renamed, verify=False)


def test_verdicts_need_thresholds(tmp_path):
    from edge.runner import Runner

    runner = Runner.open(_write_toy_unet(tmp_path, thresholds=None))
    with pytest.raises(ValueError, match="no image threshold"):
        runner.verdicts(np.array([0.5]))


class _FailingXnnpackInterpreter:
    """Stands in for LiteRT's Interpreter: with the default (XNNPACK) resolver the first call fails."""

    def __init__(
        self,
        model_path=None,
        num_threads=None,
        experimental_op_resolver_type=None,
        experimental_disable_delegate_clustering=False,
        experimental_preserve_all_tensors=False,
    ):
        from ai_edge_litert.interpreter import OpResolverType

        self.fails = experimental_op_resolver_type == OpResolverType.AUTO
        self.preserves_tensors = experimental_preserve_all_tensors

    def get_signature_list(self):
        return {"serving_default": {"inputs": ["images"], "outputs": ["maps", "scores"]}}

    def get_signature_runner(self):
        interpreter = self

        class Runner:
            def get_input_details(self):
                return {"images": {"shape_signature": np.array([-1, SIZE, SIZE, 3]), "dtype": np.float32}}

            def __call__(self, images):
                if interpreter.fails:
                    raise RuntimeError(
                        "tensorflow/lite/delegates/xnnpack: Node number 3 (TfLiteXNNPackDelegate) failed to prepare."
                    )
                return {"maps": np.zeros((len(images), SIZE, SIZE)), "scores": np.zeros(len(images))}

        return Runner()


def test_litert_falls_back_to_builtin_kernels_when_xnnpack_refuses(monkeypatch):
    import ai_edge_litert.interpreter

    from edge.litert import LiteRTSession

    monkeypatch.setattr(ai_edge_litert.interpreter, "Interpreter", _FailingXnnpackInterpreter)
    session = LiteRTSession("model.tflite", threads=2)
    assert session.delegate == "xnnpack" and session.input_shape == (None, SIZE, SIZE, 3)
    assert session._interpreter.preserves_tensors  # XNNPACK only with its own memory per tensor (edge/litert.py)
    with pytest.warns(RuntimeWarning, match="XNNPACK delegate failed .*failed to prepare.*built-in kernels"):
        outputs = session.run(np.zeros((2, SIZE, SIZE, 3), np.float32))
    assert session.delegate == "none" and outputs["maps"].shape == (2, SIZE, SIZE)
    assert not session._interpreter.preserves_tensors


def test_litert_and_onnx_sessions_implement_the_session_protocol(toy_unet, tmp_path):
    from edge.runner import open_session
    from edge.session import Session
    from riad_tf.export import export_detector

    tflite = export_detector(_toy_detector(), tmp_path, formats=("tflite",), bare_unet=True, verify=False)["tflite"]
    for path, backend in ((tflite, "litert"), (toy_unet, "onnxruntime")):
        session = open_session(path, threads=1)
        assert isinstance(session, Session) and session.backend == backend
        outputs = session.run(np.zeros((6, SIZE, SIZE, 3), np.float32))  # one image's 6 masked copies
        assert set(outputs) == set(session.output_names) == {"reconstruction"}
    assert not isinstance(object(), Session)


# ----------------------------------------------------------------------------
# The command line


def test_cli_infer_writes_one_json_line_and_a_map_per_image(tmp_path, toy_unet):
    from edge.cli import main

    images = _textures(3, seed=9)
    sizes = [(32, 32), (48, 40), (20, 64)]  # any size: resized to the model's
    for i, (image, size) in enumerate(zip(images, sizes)):
        Image.fromarray(np.round(image * 255).astype(np.uint8)).resize(size[::-1]).save(tmp_path / f"part{i}.png")
    result = CliRunner().invoke(
        main,
        [
            "infer",
            str(toy_unet),
            str(tmp_path / "part0.png"),
            str(tmp_path),
            "--maps-dir",
            str(tmp_path / "maps"),
            "--batch-size",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.output.splitlines()]
    assert [Path(r["path"]).name for r in records] == ["part0.png", "part0.png", "part1.png", "part2.png"]
    assert records[0]["score"] == pytest.approx(records[1]["score"])
    for record in records:
        assert record["anomalous"] == (record["score"] > THRESHOLDS["image"])
        assert record["threshold"] == THRESHOLDS["image"]
        assert np.asarray(Image.open(record["map"])).shape == (SIZE, SIZE)
    assert records[0]["map"] != records[1]["map"]  # same name twice: two map files
    from edge.runner import Runner

    runner = Runner.open(toy_unet)
    _, scores = runner(runner.preprocess([load_image(tmp_path / "part1.png")]))
    assert records[2]["score"] == pytest.approx(float(scores[0]), abs=1e-6)


def test_cli_bench_reports_latency_per_batch_size(toy_unet):
    from edge.cli import main

    result = CliRunner().invoke(
        main, ["bench", str(toy_unet), "--batch-sizes", "1,2", "--iters", "3", "--warmup", "1", "--threads", "1"]
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert [r["batch"] for r in rows] == [1, 2]
    for row in rows:
        assert 0 < row["p50_ms"] <= row["p99_ms"] and row["images_per_s"] > 0 and row["backend"] == "onnxruntime"
    bad = CliRunner().invoke(main, ["bench", str(toy_unet), "--batch-sizes", "0"])
    assert bad.exit_code != 0 and "positive" in bad.output


def test_cli_errors_are_one_line(tmp_path, toy_unet):
    from edge.cli import main

    (tmp_path / "broken.png").write_bytes(b"junk")
    result = CliRunner().invoke(main, ["infer", str(toy_unet), str(tmp_path / "broken.png")])
    assert result.exit_code == 1 and "broken.png: cannot read image" in result.output
    model = tmp_path / "model.pb"
    model.write_bytes(b"")
    result = CliRunner().invoke(main, ["bench", str(model)])
    assert result.exit_code == 3 and "metadata not found" in result.output


# ----------------------------------------------------------------------------
# TensorRT without TensorRT: clear failures, the build commands, trtexec engines


def test_build_engine_without_tensorrt_exits_non_zero_with_the_reason(toy_unet, tmp_path):
    from edge import trt, trt_build
    from edge.cli import main

    reason = trt.unavailable_reason()
    if reason is None:  # a machine with TensorRT and a GPU builds the engine instead
        result = CliRunner().invoke(
            main, ["build-engine", str(toy_unet), "--fp16", "--output", str(tmp_path / "toy.engine")]
        )
        assert result.exit_code == 0, result.output
        return
    result = CliRunner().invoke(
        main, ["build-engine", str(toy_unet), "--fp16", "--output", str(tmp_path / "toy.engine")]
    )
    assert result.exit_code == 1
    assert "cannot build a TensorRT engine here" in result.output and reason.split(" (")[0] in result.output
    assert not (tmp_path / "toy.engine").exists()
    with pytest.raises(trt.TensorRTUnavailable):
        trt_build.build_engine(toy_unet, tmp_path / "toy.engine")


def test_build_commands_for_the_device(toy_unet):
    from edge import trt_build

    commands = trt_build.build_commands(toy_unet, "int8", "toy_calibration")
    assert (
        commands["riad-edge"]
        == "riad-edge build-engine toy.onnx --int8 --calib toy_calibration --output toy_int8.engine"
    )
    trtexec = commands["trtexec"]
    assert trtexec.startswith(f"{trt_build.TRTEXEC} --onnx=toy.onnx --saveEngine=toy_int8.engine --int8")
    assert "--calib=toy_int8.engine.calib.cache" in trtexec
    assert f"--maxShapes=images:{8 * 6}x32x32x3" in trtexec  # dynamic batch: 8 images' masked copies
    assert commands["trtexec-metadata"] == "riad-edge engine-metadata toy_int8.engine --onnx toy.onnx --precision int8"
    assert "--fp16" in trt_build.build_commands(toy_unet, "fp16")["riad-edge"]


def test_an_int8_qdq_onnx_builds_without_calibration_and_only_with_symmetric_activations(toy_unet, tmp_path):
    import dataclasses
    import shutil

    from edge import trt_build
    from edge.errors import ConfigError, InputError
    from edge.metadata import update_metadata

    def qdq(name: str, quantization: str) -> Path:
        path = tmp_path / f"{name}.onnx"
        shutil.copy(toy_unet, path)
        shutil.copy(toy_unet.with_name(f"{toy_unet.stem}.masks.npy"), tmp_path / f"{toy_unet.stem}.masks.npy")
        metadata = read_metadata(toy_unet)
        update_metadata(
            path, dataclasses.replace(metadata, model_file=path.name, precision="int8", quantization=quantization)
        )
        return path

    symmetric = qdq("symmetric", "QDQ, per-channel 7-bit int8 weights, int8 symmetric activations, minmax ranges")
    commands = trt_build.build_commands(symmetric, "int8")
    assert "--calib" not in commands["riad-edge"] and "--calib" not in commands["trtexec"]  # the scales are inside
    metadata, _, _ = trt_build._checked_build(symmetric, None, "int8", calibration=None)
    assert trt_build.explicit_int8(metadata)
    with pytest.raises(ConfigError, match="builds an INT8 engine only"):
        trt_build._checked_build(symmetric, None, "fp16", calibration=None)
    unsigned = qdq("unsigned", "QDQ, per-channel 7-bit int8 weights, uint8 activations, minmax ranges")
    with pytest.raises(InputError, match="--int8-activations symmetric"):
        trt_build._checked_build(unsigned, None, "int8", calibration=None)


def test_engine_metadata_describes_a_trtexec_engine(toy_unet, tmp_path):
    from edge.cli import main

    engine = tmp_path / "elsewhere" / "toy_fp16.engine"
    engine.parent.mkdir()
    engine.write_bytes(b"serialized engine bytes")
    result = CliRunner().invoke(main, ["engine-metadata", str(engine), "--onnx", str(toy_unet), "--precision", "fp16"])
    assert result.exit_code == 0, result.output
    meta = read_metadata(engine)  # the sha256 of the engine and of the copied masks check out
    assert (meta.format, meta.precision, meta.model_file, meta.graph) == ("tensorrt", "fp16", engine.name, "unet")
    assert (engine.parent / meta.masks_file).is_file()


# ----------------------------------------------------------------------------
# Packaging: the edge side stays free of TensorFlow


def test_edge_modules_never_import_tensorflow(toy_unet):
    """Every module of the edge package (found by walking it, so a new one is covered) imports and runs without TF."""
    script = f"""
import importlib, pkgutil, sys
import edge
modules = sorted(m.name for m in pkgutil.walk_packages(edge.__path__, "edge."))
for name in modules:
    importlib.import_module(name)
import numpy as np
runner = edge.runner.Runner.open({str(toy_unet)!r})
maps, scores = runner(np.zeros((1, {SIZE}, {SIZE}, 3), np.float32))
assert maps.shape == (1, {SIZE}, {SIZE}) and np.isfinite(maps).all()
heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf_keras', 'tf2onnx', 'riad_tf'))
assert not heavy, heavy
print(len(modules), 'ok')
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]
    walked = int(result.stdout.split()[-2])
    on_disk = len([p for p in (REPO / "edge").rglob("*.py") if p != REPO / "edge" / "__init__.py"])
    assert walked == on_disk  # every module file was imported, subpackages (stream/) included


def _setup_requirements() -> dict[str, list[str]]:
    """The requirement lists of setup.py, read from its syntax tree: {"install_requires": [...], "edge": [...]}."""
    tree = ast.parse((REPO / "setup.py").read_text())
    lists = {
        node.targets[0].id: [ast.literal_eval(e) for e in node.value.elts if isinstance(e, ast.Constant)]
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.List) and isinstance(node.targets[0], ast.Name)
    }
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    keywords = {k.arg: k.value for k in call.keywords}
    extras = keywords["extras_require"]
    edge = next(v for k, v in zip(extras.keys, extras.values) if ast.literal_eval(k) == "edge")
    return {"install_requires": lists[keywords["install_requires"].id], "edge": lists[edge.id]}


def test_the_edge_extra_pulls_no_tensorflow():
    requirements = _setup_requirements()
    assert "onnxruntime" in " ".join(requirements["edge"]) and "ai-edge-litert" in " ".join(requirements["edge"])
    for requirement in requirements["install_requires"] + requirements["edge"]:
        name = requirement.split(">")[0].split("<")[0].split("=")[0].split("[")[0].strip().lower()
        assert name not in {"tensorflow", "tensorflow-cpu", "keras", "tf-keras", "tf2onnx", "tf-nightly"}, requirement


def test_a_large_image_in_tiles_reports_its_progress():
    from edge.inspection import tile_progress
    from edge.tiling import tiled_map

    def score(tiles):
        return tiles[..., 0], tiles.max(axis=(1, 2, 3))

    lines = []
    tiled_map(
        np.ones((64, 160, 1), np.float32), score, (32, 32), (16, 16), 4, tile_progress("big.png", 0.0, lines.append)
    )
    # 3 x 9 tiles in calls of 4: a line after each call but the last.
    assert [line.split(",")[0] for line in lines] == [f"big.png: {n} of 27 tiles scored" for n in range(4, 25, 4)]
    assert all(line.endswith("s left") for line in lines)
