"""The benchmark suite: FLOP counting against hand counts and the TF profiler, and one tiny end-to-end run.

No timing is asserted: only that the numbers are consistent and the report has the right shape.
"""

import json

import keras
import numpy as np
import pytest
from click.testing import CliRunner
from keras import layers

from riad_tf.benchmark import PATHS, sequential_maps
from riad_tf.config import RiadConfig
from riad_tf.detector import Detector
from riad_tf.flops import graph_flops, layer_flops, matmul_peak, riad_flops, unet_flops
from riad_tf.model import build_unet

TINY_WIDTHS = (4, 8, 8, 16, 16)


def _tiny_conv_net():
    inputs = keras.Input((8, 8, 2))
    x = layers.Conv2D(3, 3, padding="same", use_bias=False)(inputs)  # 8x8x3 outputs, 3*3*2 MACs each
    x = layers.Conv2D(6, 4, strides=2, padding="same")(x)  # 4x4x6 outputs, 4*4*3 MACs each
    x = layers.Conv2DTranspose(4, 2, strides=2)(x)  # 4x4x6 inputs, each scatters 2*2*4
    outputs = layers.Dense(5)(x)  # 8x8 positions, 4 -> 5
    return keras.Model(inputs, outputs)


def test_flops_match_a_hand_count():
    hand = [
        2 * (8 * 8 * 3) * (3 * 3 * 2),
        2 * (4 * 4 * 6) * (4 * 4 * 3),
        2 * (4 * 4 * 6) * (2 * 2 * 4),
        2 * (8 * 8) * (4 * 5),
    ]
    net = _tiny_conv_net()
    assert [layer_flops(layer) for layer in net.layers[1:]] == hand
    assert unet_flops(net) == sum(hand)


def test_flops_agree_with_the_tensorflow_profiler():
    net = _tiny_conv_net()
    assert graph_flops(net) >= unet_flops(net)  # the profiler also counts bias adds
    unet = build_unet((32, 32, 3), TINY_WIDTHS)
    counted, profiled = unet_flops(unet), graph_flops(unet)
    # The profiler adds only elementwise ops (batch norm, ReLU, sigmoid): a few per cent at most.
    assert 0.9 * profiled <= counted <= profiled


def test_riad_flops_scale_with_passes_and_pixels():
    small = RiadConfig(image_size=(32, 32), widths=TINY_WIDTHS, ks=(2, 4), n=3, smoothing=5)
    large = small.with_overrides({"image_size": (64, 64)})
    flops = riad_flops(small)
    assert flops["per_image"] == 6 * flops["per_pass"]
    assert flops["train_per_image"] == 3 * 3 * flops["per_pass"]
    assert riad_flops(large)["per_pass"] == 4 * flops["per_pass"]  # fully convolutional: linear in pixels
    assert riad_flops(small.with_overrides({"inpainting": False}))["per_image"] == flops["per_pass"]


def test_matmul_peak_is_positive():
    assert matmul_peak("float32", size=128, iters=2, warmup=1) > 0


def test_sequential_loop_gives_the_detectors_maps():
    config = RiadConfig(image_size=(32, 32), widths=TINY_WIDTHS, ks=(2, 4), smoothing=5)
    keras.utils.set_random_seed(0)
    detector = Detector(build_unet(config.input_shape, config.widths), config)
    images = np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32)
    maps, scores = detector(images)
    seq_maps, seq_scores = sequential_maps(detector, images)
    np.testing.assert_allclose(seq_maps.numpy(), maps.numpy(), atol=1e-5)
    np.testing.assert_allclose(seq_scores.numpy(), scores.numpy(), atol=1e-5)


def test_benchmark_command_end_to_end(tmp_path):
    from riad_tf.cli import main

    out = tmp_path / "bench.json"
    config = tmp_path / "tiny.yaml"
    RiadConfig(ks=(2, 4), smoothing=5).save(config)
    args = [
        "benchmark",
        "--config",
        str(config),
        "--image-size",
        "32",
        "--widths",
        "8,16,16,32,32",
        "--width-multiplier",
        "0.5",
        "--batch-sizes",
        "1,2",
        "--paths",
        "keras",
        "--iters",
        "1",
        "--warmup",
        "1",
        "--threads",
        "2",
        "--scaling",
        "--scaling-batches",
        "1,2",
        "--scaling-sizes",
        "32,64",
        "--training",
        "--train-batch",
        "2",
        "--peak-size",
        "128",
        "--json-file",
        str(out),
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["config"]["widths"] == list(TINY_WIDTHS)  # 0.5 x the given widths
    assert set(report) == {"machine", "config", "flops", "peak", "inference", "sequential", "scaling", "training"}
    assert report["config"]["ks"] == [2, 4] and report["flops"]["passes_per_image"] == 6
    assert [(r["path"], r["batch"]) for r in report["inference"]] == [("keras", 1), ("keras", 2)]
    flops = report["flops"]["per_image"]
    for record in report["inference"] + report["training"] + report["scaling"]["batch"]:
        assert record["images_per_s"] > 0 and record["peak_rss_mb"] > 0
    for record in report["inference"]:
        assert record["max_score_diff"] < 1e-4
        assert record["gflops"] == pytest.approx(flops * record["images_per_s"] / 1e9, abs=0.051)
    assert report["sequential"]["max_map_diff"] < 1e-5 and report["sequential"]["speedup"] > 0
    assert [r["image_size"] for r in report["scaling"]["image_size"]] == [32, 64]
    assert [r["path"] for r in report["training"]] == ["train-float32", "train-mixed_bfloat16"]
    assert report["peak"]["float32"] > 0
    assert "inference (whole detector)" in result.output and "train-mixed_bfloat16" in result.output


def test_benchmark_rejects_unknown_paths():
    from riad_tf.benchmark import benchmark_report

    with pytest.raises(ValueError, match="unknown path"):
        benchmark_report(RiadConfig(image_size=(32, 32), widths=TINY_WIDTHS), paths=("keras", "tensorrt"))
    assert "tflite-int8" in PATHS


ONEDNN_CHECK = (
    "import os, platform, riad_tf, tensorflow as tf; "
    "from tensorflow.python.util import _pywrap_util_port as port; "
    "print(platform.machine(), os.environ.get('TF_ENABLE_ONEDNN_OPTS'), port.IsMklEnabled())"
)


@pytest.mark.parametrize("preset", [None, "0"])
def test_importing_riad_tf_turns_on_onednn_unless_the_user_chose(preset):
    """TensorFlow leaves oneDNN off on CPUs without AVX-512; riad_tf turns it on (1.5-1.7x the detector, docs/benchmark.md)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if preset is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = preset
    result = subprocess.run([sys.executable, "-c", ONEDNN_CHECK], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    machine, variable, enabled = result.stdout.split()
    if machine.lower() not in ("x86_64", "amd64"):
        pytest.skip(f"riad_tf sets oneDNN only on x86-64 CPUs, this is {machine}")
    assert variable == (preset or "1")
    assert enabled == str(preset is None)  # what TensorFlow actually runs with
