"""GMS, MSGMS, the mean filter, anomaly maps and scores against tests/reference_numpy.py."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import reference_numpy as ref
import tensorflow as tf

from riad_tf.losses import gms_map, msgms_loss, msgms_map, riad_loss, ssim_loss
from riad_tf.scoring import anomaly_map, mean_filter, ssim_map

REPO = Path(__file__).resolve().parents[1]


def _pair(shape=(3, 48, 64, 3), seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random(shape, dtype=np.float32)
    y = np.clip(x + 0.2 * rng.standard_normal(shape).astype(np.float32), 0, 1)
    return x, y


def test_gms_matches_numpy():
    x, y = _pair()
    np.testing.assert_allclose(gms_map(x, y).numpy()[..., 0], ref.gms(ref.grey(x), ref.grey(y)), atol=1e-5)


def test_msgms_map_matches_numpy():
    x, y = _pair()
    got = msgms_map(x, y).numpy()
    assert got.shape == (3, 48, 64, 1)
    np.testing.assert_allclose(got[..., 0], ref.msgms(x, y), atol=1e-5)


def test_msgms_loss_matches_numpy():
    x, y = _pair()
    np.testing.assert_allclose(msgms_loss(x, y).numpy(), ref.msgms_loss(x, y), atol=1e-5)


@pytest.mark.parametrize("size", [3, 5, 21])
def test_mean_filter_excludes_padding(size):
    maps = np.random.default_rng(1).random((2, 24, 40), dtype=np.float32)
    got = mean_filter(maps[..., None], size).numpy()[..., 0]
    np.testing.assert_allclose(got, ref.mean_filter(maps, size), atol=1e-5)
    # A constant map stays constant at the borders only when padding is not counted.
    np.testing.assert_allclose(mean_filter(np.full((1, 24, 40, 1), 0.7, np.float32), size).numpy(), 0.7, atol=1e-5)


def test_anomaly_map_and_score_match_numpy():
    x, y1 = _pair((2, 32, 32, 3))
    _, y2 = _pair((2, 32, 32, 3), seed=1)
    maps, scores = anomaly_map(x, [y1, y2], smoothing=7)
    want_maps, want_scores = ref.anomaly_map(x, [y1, y2], smoothing=7)
    np.testing.assert_allclose(maps.numpy(), want_maps, atol=1e-5)
    np.testing.assert_allclose(scores.numpy(), want_scores, atol=1e-5)


def test_identical_images_gms_one_and_zero_map():
    x, _ = _pair((2, 32, 32, 3))
    np.testing.assert_allclose(gms_map(x, x).numpy(), 1.0, atol=1e-6)
    np.testing.assert_allclose(msgms_map(x, x).numpy(), 1.0, atol=1e-6)
    maps, scores = anomaly_map(x, [x, x, x], smoothing=21)
    np.testing.assert_allclose(maps.numpy(), 0.0, atol=1e-6)
    np.testing.assert_allclose(scores.numpy(), 0.0, atol=1e-6)


def test_flat_images_have_finite_loss_gradients():
    x = tf.Variable(tf.fill((1, 32, 32, 3), 0.5))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(riad_loss(tf.fill((1, 32, 32, 3), 0.5), x))
    grad = tape.gradient(loss, x).numpy()
    assert np.all(np.isfinite(grad))


def test_ssim_loss_matches_numpy():
    x, y = _pair((2, 32, 40, 3))
    np.testing.assert_allclose(ssim_loss(x, y).numpy(), 1 - ref.ssim_mean(x, y), atol=1e-5)


def test_riad_loss_weights_eq7():
    x, y = _pair((2, 32, 32, 3))
    l_g, l_s, l_2 = ref.msgms_loss(x, y), 1 - ref.ssim_mean(x, y), ((x - y) ** 2).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(riad_loss(x, y).numpy(), l_g + l_s + l_2, atol=1e-5)
    np.testing.assert_allclose(
        riad_loss(x, y, lambda_g=2.0, lambda_s=0.5).numpy(), 2 * l_g + 0.5 * l_s + l_2, atol=1e-5
    )
    assert np.all(riad_loss(x, y).numpy() > riad_loss(x, (x + y) / 2).numpy())


def test_losses_work_as_keras_loss():
    import keras

    x, y = _pair((4, 32, 32, 3))
    loss = keras.losses.get(riad_loss)
    assert np.isclose(float(keras.ops.mean(loss(x, y))), float(np.mean(riad_loss(x, y).numpy())), atol=1e-6)


def test_ssim_map_is_one_for_identical_and_lower_for_noise():
    x, y = _pair((1, 32, 32, 3))
    np.testing.assert_allclose(ssim_map(x, x).numpy(), 1.0, atol=1e-5)
    assert ssim_map(x, y).numpy().mean() < 0.9


def test_importing_losses_leaves_tensorflow_threads_settable():
    # `riad-tf benchmark` sets TensorFlow's threads after its imports; a tensor
    # built at import time would initialise the runtime and forbid that.
    code = (
        "import tensorflow as tf\n"
        "import riad_tf.losses\n"
        "tf.config.threading.set_intra_op_parallelism_threads(1)\n"
        "tf.constant(1.0)\n"  # now the runtime starts: settings are refused, so the check above means something
        "try:\n"
        "    tf.config.threading.set_intra_op_parallelism_threads(2)\n"
        "except RuntimeError:\n"
        "    print('refused after initialisation')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr.strip().splitlines()[-1:]
    assert "refused after initialisation" in result.stdout


def test_gms_kernels_work_in_graphs_and_eagerly():
    x, y = _pair((2, 32, 32, 3))
    in_graph = tf.function(gms_map)(x, y).numpy()  # first use inside a graph
    np.testing.assert_allclose(gms_map(x, y).numpy(), in_graph, atol=1e-6)
    np.testing.assert_allclose(tf.function(gms_map)(x, y).numpy(), in_graph, atol=1e-6)
