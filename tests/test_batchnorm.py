"""The batch-norm guard, re-estimation, and the kept epoch (issue #13)."""

import json

import numpy as np
import pytest
import yaml

from conftest import TINY_WIDTHS
from riad_tf import batchnorm_guard
from riad_tf.batchnorm import BatchNormDivergenceError, batchnorm_layers, frozen_statistics, statistics_diverged
from riad_tf.batchnorm_guard import batchnorm_check, reestimate_batchnorm
from riad_tf.config import RiadConfig
from riad_tf.run import CONFIG_FILE, load_config, save_config
from riad_tf.run_records import float32_copy
from riad_tf.train import train_unet


@pytest.fixture(scope="module")
def images():
    """Smooth waves of random frequency and phase: what a tiny U-Net learns to inpaint in a few epochs."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:32, 0:32] / 32
    waves = [
        0.5
        + 0.35 * np.sin(2 * np.pi * (rng.uniform(0.5, 1.5) * x + rng.uniform(0.5, 1.5) * y) + rng.uniform(0, 2 * np.pi))
        for _ in range(24)
    ]
    return np.repeat(np.array(waves, np.float32)[..., None], 3, axis=-1)


@pytest.fixture(scope="module")
def config():
    return RiadConfig(
        image_size=(32, 32),
        widths=TINY_WIDTHS,
        ks=(2, 4, 8),
        smoothing=5,
        epochs=6,
        batch_size=4,
        learning_rate=1e-2,
        mixed_precision="off",
    )


@pytest.fixture(scope="module")
def trained(config, images, tmp_path_factory):
    return train_unet(config, images[:16], tmp_path_factory.mktemp("run"), images[16:], progress=False)


def _spoil_statistics(unet):
    """Moving statistics far from any batch's: what lagging statistics do to inference mode."""
    for layer in batchnorm_layers(unet):
        layer.moving_mean.assign(np.full(layer.moving_mean.shape, 3.0, np.float32))
        layer.moving_variance.assign(np.full(layer.moving_variance.shape, 1e-2, np.float32))


def test_guard_fires_on_wrong_statistics_and_not_on_a_good_model(trained, config, images):
    good = float32_copy(trained, config)
    reestimate_batchnorm(good, images[:16], config)
    check = batchnorm_check(good, images[16:], config, 4)
    assert not check["bn_diverged"], check
    assert check["val_loss"] < 1.3 * check["val_loss_train_mode"]

    spoiled = float32_copy(good, config)
    _spoil_statistics(spoiled)
    check = batchnorm_check(spoiled, images[16:], config, 4)
    assert check["bn_diverged"], check
    # Training mode does not read the moving statistics, so it still measures the learned model.
    assert check["val_loss_train_mode"] == pytest.approx(
        batchnorm_check(good, images[16:], config, 4)["val_loss_train_mode"], rel=1e-4
    )

    used = reestimate_batchnorm(spoiled, images[:16], config, max_batches=6)
    assert used == 6  # more than one pass over 16 images in batches of 4
    assert not batchnorm_check(spoiled, images[16:], config, 4)["bn_diverged"]


def test_training_mode_check_leaves_the_moving_statistics_alone(trained, config, images):
    unet = float32_copy(trained, config)
    before = [v.numpy().copy() for layer in batchnorm_layers(unet) for v in (layer.moving_mean, layer.moving_variance)]
    with frozen_statistics(unet):
        unet(images[:4], training=True)
    after = [v.numpy() for layer in batchnorm_layers(unet) for v in (layer.moving_mean, layer.moving_variance)]
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
    assert statistics_diverged(0.854, 0.146) and not statistics_diverged(0.15, 0.146)


def _kept_record(out):
    return [r for r in json.loads((out / "history.json").read_text()) if r.get("kept")]


def test_spoiled_last_epoch_is_repaired_before_shipping(config, images, tmp_path):
    """Moving statistics kept, but spoiled after the last epoch: the final guard re-estimates them and says so."""
    out = tmp_path / "run"
    moving = config.with_overrides({"bn_statistics": "moving"})

    def spoil_last(epoch, unet):
        if epoch == config.epochs:
            _spoil_statistics(unet)

    train_unet(
        moving, images[:16], out, progress=False, on_epoch_end=spoil_last
    )  # no held-out images: the last is kept
    kept = _kept_record(out)
    assert [r["epoch"] for r in kept] == [config.epochs]
    assert kept[0]["bn_reestimated_batches"] == batchnorm_guard.BATCHNORM_BATCHES
    assert kept[0]["moving_val_loss"] > 1.5 * kept[0]["final_val_loss"]
    assert (out / "model.keras").is_file()


def _moving_means(unet):
    return np.concatenate([layer.moving_mean.numpy().ravel() for layer in batchnorm_layers(unet)])


@pytest.mark.parametrize("bn_statistics", ["reestimated", "moving"])
def test_the_saved_model_keeps_the_statistics_the_config_asks_for(config, images, tmp_path, monkeypatch, bn_statistics):
    monkeypatch.setattr(batchnorm_guard, "statistics_diverged", lambda *args: False)  # the guard stays quiet
    out = tmp_path / "run"
    chosen = config.with_overrides({"epochs": 2, "bn_statistics": bn_statistics})
    last = {}
    trained = train_unet(
        chosen, images[:16], out, progress=False, on_epoch_end=lambda e, unet: last.update(e=e, unet=unet)
    )  # no held-out images: the last epoch is kept
    moving = _moving_means(last["unet"])  # training's moving statistics after the last epoch
    reestimated = float32_copy(trained, chosen)
    batchnorm_guard.reestimate_batchnorm(reestimated, images[:16], chosen)
    kept = _kept_record(out)[0]
    assert kept["epoch"] == last["e"] == 2
    if bn_statistics == "reestimated":
        np.testing.assert_allclose(_moving_means(trained), _moving_means(reestimated), atol=1e-5)
        assert not np.allclose(_moving_means(trained), moving, atol=1e-3)
        assert kept["bn_reestimated_batches"] == batchnorm_guard.BATCHNORM_BATCHES
        assert kept["bn_reestimate_seconds"] > 0
    else:
        np.testing.assert_allclose(_moving_means(trained), moving, atol=1e-5)
        assert "bn_reestimated_batches" not in kept


def test_reestimated_statistics_that_fail_the_guard_give_way_to_the_moving_ones(
    trained, config, images, tmp_path, monkeypatch
):
    healthy = float32_copy(trained, config)
    reestimate_batchnorm(healthy, images[:16], config)  # statistics that pass the guard (the test above)
    moving = _moving_means(healthy)

    def spoiling(model, batches, forward):  # a re-estimation that goes wrong
        _spoil_statistics(model)
        return 60

    monkeypatch.setattr(batchnorm_guard, "reestimate_statistics", spoiling)
    record = batchnorm_guard.ship_checked(healthy, config, images[16:], images[:16], 4, tmp_path)
    np.testing.assert_array_equal(_moving_means(healthy), moving)
    assert record["rejected_reestimate_val_loss"] > 1.5 * record["final_val_loss"]


def test_a_run_saved_before_bn_statistics_existed_loads_as_trained(tmp_path):
    config = RiadConfig(image_size=(32, 32), widths=TINY_WIDTHS)
    save_config(tmp_path, config)
    assert load_config(tmp_path).bn_statistics == "reestimated"
    saved = yaml.safe_load((tmp_path / CONFIG_FILE).read_text())
    del saved["bn_statistics"], saved["kernel_init"]
    (tmp_path / CONFIG_FILE).write_text(yaml.safe_dump(saved))
    older = load_config(tmp_path)
    assert (older.bn_statistics, older.kernel_init) == ("moving", "glorot")
    assert older.with_overrides({"bn_statistics": "reestimated", "kernel_init": "pytorch"}) == config


def test_unrepairable_statistics_are_never_saved(config, images, tmp_path, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setattr(batchnorm_guard, "reestimate_statistics", lambda *args: 0)  # a remedy that does nothing

    def spoil_last(epoch, unet):
        if epoch == config.epochs:
            _spoil_statistics(unet)

    with pytest.raises(BatchNormDivergenceError, match="not saved"):
        train_unet(config, images[:16], out, progress=False, on_epoch_end=spoil_last)
    assert not (out / "model.keras").exists()


def test_the_epoch_with_the_lowest_validation_loss_is_kept(config, images, tmp_path):
    """A last epoch at a rate that wrecks the weights: the saved model is an earlier, better epoch."""
    out = tmp_path / "run"
    snapshots = {}

    def snapshot(epoch, unet):
        snapshots[epoch] = [np.array(w) for w in unet.trainable_weights]

    train_unet(config, images[:16], out, images[16:], progress=False, on_epoch_end=snapshot)
    wrecked = config.with_overrides({"epochs": config.epochs + 1, "learning_rate": 10.0, "lr_schedule": "constant"})
    saved = train_unet(
        wrecked, images[:16], out, images[16:], progress=False, on_epoch_end=snapshot
    )  # resumes: one more epoch

    history = json.loads((out / "history.json").read_text())
    losses = {r["epoch"]: r["val_loss"] for r in history}
    kept = [r["epoch"] for r in history if r.get("kept")]
    assert kept == [min(losses, key=losses.get)] and kept[0] < wrecked.epochs, losses
    for got, want in zip(saved.trainable_weights, snapshots[kept[0]]):
        np.testing.assert_allclose(np.array(got), want, rtol=1e-6)


def test_a_non_finite_training_loss_stops_training_before_anything_is_saved(config, images, tmp_path):
    from edge.errors import TrainingError

    poisoned = images[:16].copy()
    poisoned[3, 5, 5, 0] = np.nan  # one bad pixel makes the epoch's loss NaN
    out = tmp_path / "run"
    with pytest.raises(TrainingError, match=r"epoch 1: the training loss is nan; nothing of this epoch was saved"):
        train_unet(config, poisoned, out, progress=False)
    assert not (out / "model.keras").exists() and not list(out.glob("checkpoints/ckpt-*"))
