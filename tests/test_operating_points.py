"""Operating points: the width multiplier as a config value, and the helpers of scripts/operating_points.py."""

import argparse

import pytest

from riad_tf.config import RiadConfig
from riad_tf.distribute import make_strategy
from riad_tf.train import build_training_state
from scripts import operating_points as op


def test_width_multiplier_scales_the_unet_that_training_builds():
    config = RiadConfig(image_size=(32, 32), widths=(8, 16, 16, 32, 32), width_multiplier=0.5, ks=(2, 4), smoothing=5)
    assert config.unet_widths == (4, 8, 8, 16, 16)
    assert RiadConfig(widths=(3, 3, 3, 3, 3), width_multiplier=0.1).unet_widths == (1, 1, 1, 1, 1)  # at least 1
    unet, _, _ = build_training_state(config, make_strategy("default"))
    first_conv = unet.get_layer("enc1_a_conv")
    assert first_conv.filters == 4 and unet.get_layer("enc5_b_conv").filters == 16
    # a stored config round-trips the multiplier, so a run rebuilds the same network
    assert RiadConfig.from_dict(config.to_dict()).unet_widths == (4, 8, 8, 16, 16)


def test_width_multiplier_must_be_positive():
    with pytest.raises(ValueError, match="width_multiplier"):
        RiadConfig(width_multiplier=0)


def test_points_parse_and_scale_the_config():
    assert op.parse_point("128x0.5") == (128, 0.5)
    with pytest.raises(argparse.ArgumentTypeError, match="SIZExMULTIPLIER"):
        op.parse_point("128")
    base = RiadConfig(image_size=(64, 64), widths=(8, 16, 32, 64, 64), smoothing=5)
    point = op.point_config(base, 128, 0.25)
    assert point.image_size == (128, 128) and point.unet_widths == (2, 4, 8, 16, 16)
    assert point.smoothing == 11 and point.smoothing % 2 == 1  # s_f grows with the image (Eq. 8)
    assert op.point_config(base, 64, 1.0) == base  # the base point is the base run: it can be reused


def test_lines_per_second_counts_tiles_across_the_line():
    # 4096 px line, 64 px tiles: 64 tiles per band of 64 lines
    assert op.lines_per_second(128.0, 64, 4096) == pytest.approx(128.0)
    # a partial tile at the end still costs a whole tile: ceil(4100 / 64) = 65
    assert op.lines_per_second(130.0, 64, 4100) == pytest.approx(128.0)
    assert op.lines_per_second(10.0, 128, 128) == pytest.approx(1280.0)
