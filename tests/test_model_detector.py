import keras
import numpy as np
import pytest
import reference_numpy as ref
import tensorflow as tf

from conftest import TINY_WIDTHS
from riad_tf.config import RiadConfig
from riad_tf.detector import Detector
from riad_tf.inpaint import reconstruct
from riad_tf.masks import grid_masks
from riad_tf.model import build_unet
from riad_tf.training_step import make_train_step, per_image_loss


def test_unet_shapes_range_and_default_size():
    net = build_unet((32, 48, 3), TINY_WIDTHS)
    out = net(np.random.default_rng(0).random((2, 32, 48, 3), dtype=np.float32)).numpy()
    assert out.shape == (2, 32, 48, 3)
    assert out.min() >= 0.0 and out.max() <= 1.0
    # The paper-size network: about 29 M parameters (METHOD.md).
    assert 27e6 < build_unet().count_params() < 31e6


def test_unet_one_channel():
    assert build_unet((32, 32, 1), TINY_WIDTHS).output_shape == (None, 32, 32, 1)


def test_skip_connections_flag_removes_them():
    with_skips = build_unet((32, 32, 3), TINY_WIDTHS, skip_connections=True)
    without = build_unet((32, 32, 3), TINY_WIDTHS, skip_connections=False)
    assert sum(isinstance(layer, keras.layers.Concatenate) for layer in with_skips.layers) == 4
    assert not any(isinstance(layer, keras.layers.Concatenate) for layer in without.layers)
    assert without.count_params() < with_skips.count_params()
    assert without.output_shape == (None, 32, 32, 3)


def test_unet_rejects_sizes_not_divisible_by_16():
    with pytest.raises(ValueError, match="divisible by 16"):
        build_unet((40, 32, 3), TINY_WIDTHS)


def test_kernel_init_pytorch_draws_within_one_over_sqrt_fan_in_and_smaller_than_glorot():
    def kernel(kernel_init):
        keras.utils.set_random_seed(3)
        return build_unet((32, 32, 3), (8, 16, 32, 32, 32), kernel_init=kernel_init).get_layer("enc3_b_conv").kernel

    fan_in = 3 * 3 * 32
    pytorch, glorot = kernel("pytorch").numpy(), kernel("glorot").numpy()
    assert np.abs(pytorch).max() <= 1 / np.sqrt(fan_in)
    assert pytorch.std() == pytest.approx(1 / np.sqrt(3 * fan_in), rel=0.1)  # uniform in +-1/sqrt(fan_in)
    assert glorot.std() == pytest.approx(np.sqrt(2 / (2 * fan_in)), rel=0.1)  # fan_out = fan_in here
    np.testing.assert_array_equal(kernel("pytorch").numpy(), pytorch)  # the seed decides
    # every layer draws its own kernel, also where two layers have the same shape
    net = build_unet((32, 32, 3), (8, 16, 32, 32, 32), kernel_init="pytorch")
    assert not np.allclose(net.get_layer("enc4_b_conv").kernel.numpy(), net.get_layer("enc5_b_conv").kernel.numpy())
    with pytest.raises(ValueError, match="kernel_init must be one of glorot, pytorch; got 'he'"):
        build_unet((32, 32, 3), TINY_WIDTHS, kernel_init="he")


def test_reconstruct_assembles_eq2():
    net = build_unet((32, 32, 3), TINY_WIDTHS)
    images = np.random.default_rng(1).random((2, 32, 32, 3), dtype=np.float32)
    masks = grid_masks(32, 32, 4, 3, seed=0)
    got = reconstruct(net, images, masks).numpy()
    for b in range(2):
        outputs = net(masks * images[b]).numpy()  # the n masked copies of image b
        np.testing.assert_allclose(got[b], ref.assemble(outputs, masks), atol=1e-5)


def test_tiny_overfit_lowers_riad_loss():
    cfg = RiadConfig(image_size=(32, 32), widths=(8, 16, 16, 32, 32), ks=(2, 4), learning_rate=3e-3)
    rng = np.random.default_rng(0)
    # Smooth striped textures: learnable, unlike white noise.
    yy, xx = np.mgrid[0:32, 0:32]
    images = np.stack([0.5 + 0.4 * np.sin((xx + p) / 3.0)[..., None].repeat(3, -1) for p in rng.uniform(0, 6, 4)])
    images = tf.constant(images.astype(np.float32))
    tf.keras.utils.set_random_seed(0)
    unet = build_unet(cfg.input_shape, cfg.widths)
    optimizer = keras.optimizers.Adam(cfg.learning_rate)
    step = make_train_step(unet, optimizer, cfg, tf.distribute.get_strategy())
    before = float(tf.reduce_mean(per_image_loss(unet, images, cfg, training=False, seed=7)[0]))
    for _ in range(60):
        step((images,))
    after = float(tf.reduce_mean(per_image_loss(unet, images, cfg, training=False, seed=7)[0]))
    assert after < 0.6 * before, (before, after)


@pytest.fixture(scope="module")
def detector():
    cfg = RiadConfig(image_size=(32, 32), widths=TINY_WIDTHS, ks=(2, 4, 8), smoothing=5, seed=3)
    tf.keras.utils.set_random_seed(1)
    return Detector(build_unet(cfg.input_shape, cfg.widths), cfg)


def test_detector_deterministic_for_seed(detector):
    images = np.random.default_rng(2).random((3, 32, 32, 3), dtype=np.float32)
    maps1, scores1 = detector(images)
    maps2, scores2 = detector(images)
    np.testing.assert_array_equal(maps1.numpy(), maps2.numpy())
    other = Detector(detector.unet, detector.config.with_overrides({"seed": 4}))
    assert not np.allclose(other(images)[0].numpy(), maps1.numpy())


def test_detector_batch_equals_single_calls(detector):
    images = np.random.default_rng(3).random((4, 32, 32, 3), dtype=np.float32)
    maps, scores = detector(images)
    for i in range(4):
        m, s = detector(images[i : i + 1])
        np.testing.assert_allclose(m.numpy()[0], maps.numpy()[i], atol=1e-5)
        np.testing.assert_allclose(s.numpy()[0], scores.numpy()[i], atol=1e-5)
    batched_maps, _ = detector.score(images, batch_size=3)
    np.testing.assert_allclose(batched_maps, maps.numpy(), atol=1e-5)


def test_detector_equals_sequential_algorithm3(detector):
    """All n x |K| copies in one batch give the maps of the paper's loop over k (Algorithm 3)."""
    from riad_tf.masks import inference_masks

    cfg = detector.config
    images = np.random.default_rng(4).random((2, 32, 32, 3), dtype=np.float32)
    recs = [reconstruct(detector.unet, images, m).numpy() for m in inference_masks(32, 32, cfg.ks, cfg.n, cfg.seed)]
    np.testing.assert_allclose(detector.reconstructions(images).numpy(), np.stack(recs), atol=1e-5)
    want_maps, want_scores = ref.anomaly_map(images, recs, cfg.smoothing)
    maps, scores = detector(images)
    np.testing.assert_allclose(maps.numpy(), want_maps, atol=1e-5)
    np.testing.assert_allclose(scores.numpy(), want_scores, atol=1e-5)


def test_detector_single_unet_call_per_batch(detector):
    original = detector.unet.call
    images = np.zeros((2, 32, 32, 3), np.float32)
    seen = []
    unet = detector.unet

    def spy(x, *args, **kwargs):
        seen.append(tuple(x.shape))
        return original(x, *args, **kwargs)

    unet.call = spy
    try:
        detector(images)
    finally:
        del unet.call
    assert seen == [(2 * 3 * 3, 32, 32, 3)]  # B x |K| x n copies, one call
