"""Tests for riad_tf.data (layouts, decoding, validation) and riad_tf.synthetic."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from riad_tf.config import RiadConfig
from riad_tf.data import (
    DataError,
    DataSplit,
    Sample,
    data_spec,
    load_dataset,
    load_folders,
    load_magnetic_tile,
    load_mvtec,
    split_good,
    split_holdout,
)
from riad_tf.image_files import has_pixel_masks, load_arrays, load_split, read_image, read_mask, validate
from riad_tf.synthetic import DEFECT_TYPES, make_synthetic_dataset

MAGNETIC_TILE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "magnetic_tile"


def _save(path: Path, array: np.ndarray, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def _noise(rng, shape, dtype=np.uint8):
    return rng.integers(0, np.iinfo(dtype).max, size=shape, endpoint=True).astype(dtype)


def _assert_one_line_error(excinfo, path: Path, words: str = ""):
    message = str(excinfo.value)
    assert "\n" not in message
    assert str(path) in message
    assert words in message


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return make_synthetic_dataset(
        tmp_path_factory.mktemp("synthetic") / "cat", n_train=12, n_test_good=4, n_test_defect=5
    )


# ----------------------------------------------------------------------------
# Synthetic data and the MVTec layout


def test_synthetic_is_deterministic_and_seeded(tmp_path):
    kwargs = dict(image_size=32, n_train=3, n_test_good=2, n_test_defect=2)
    a = make_synthetic_dataset(tmp_path / "a", seed=1, **kwargs)
    b = make_synthetic_dataset(tmp_path / "b", seed=1, **kwargs)
    c = make_synthetic_dataset(tmp_path / "c", seed=2, **kwargs)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert files == sorted(p.relative_to(b) for p in b.rglob("*.png"))
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in files)
    # Rewriting its own folder works; a foreign non-empty folder is refused.
    make_synthetic_dataset(a, seed=1, **kwargs)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        make_synthetic_dataset(tmp_path / "mine", **kwargs)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_load_mvtec_on_synthetic(synthetic):
    split = load_mvtec(synthetic)
    assert len(split.train) == 12 and all(s.label == 0 for s in split.train)
    good = [s for s in split.test if s.label == 0]
    bad = [s for s in split.test if s.label == 1]
    assert len(good) == 4 and all(s.defect_type == "good" and s.mask_path is None for s in good)
    assert len(bad) == 5 * len(DEFECT_TYPES)
    assert {s.defect_type for s in bad} == set(DEFECT_TYPES)
    for s in bad:
        assert s.mask_path == synthetic / "ground_truth" / s.defect_type / f"{s.path.stem}_mask.png"
    assert [s.path for s in split.train] == sorted(s.path for s in split.train)
    assert load_dataset(synthetic).test == split.test  # auto picks MVTec


def test_synthetic_masks_are_exact_and_defects_visible(synthetic):
    split = load_mvtec(synthetic)
    config = RiadConfig(image_size=(64, 64), ks=(2, 4))
    images, masks = load_arrays(split.test, config, with_masks=True)
    assert images.shape == (len(split.test), 64, 64, 3) and images.dtype == np.float32
    assert masks.shape == (len(split.test), 64, 64) and masks.dtype == bool
    labels = np.array([s.label for s in split.test])
    assert not masks[labels == 0].any()
    assert all(0 < m.sum() < 0.2 * m.size for m in masks[labels == 1])
    for image, mask in zip(images[labels == 1], masks[labels == 1]):
        # The defect is painted flat: inside the mask the colour barely varies,
        # and it differs clearly from the weave around it.
        inside, outside = image[mask], image[~mask]
        assert inside.std(axis=0).max() < 0.05
        assert np.abs(inside.mean(axis=0) - outside.mean(axis=0)).max() > 0.2


def test_mvtec_missing_folders(tmp_path, synthetic):
    with pytest.raises(DataError) as excinfo:
        load_mvtec(tmp_path)
    _assert_one_line_error(excinfo, tmp_path / "train" / "good", "not found")
    (tmp_path / "train" / "good").mkdir(parents=True)
    with pytest.raises(DataError) as excinfo:
        load_mvtec(tmp_path)
    _assert_one_line_error(excinfo, tmp_path / "train" / "good", "no images")


# ----------------------------------------------------------------------------
# The generic folder layout


@pytest.fixture
def folders(tmp_path):
    """Good images, a defect folder with NAME.png masks beside NAME.jpg, and one
    `hole/Imgs` folder with NAME_mask.png masks."""
    rng = np.random.default_rng(0)
    for i in range(10):
        _save(tmp_path / "ok" / f"g{i}.png", _noise(rng, (24, 32)))
    for i in range(3):
        _save(tmp_path / "bad" / "crack" / f"c{i}.jpg", _noise(rng, (24, 32, 3)))
        _save(tmp_path / "bad" / "crack" / f"c{i}.png", _noise(rng, (24, 32)))  # its mask
        _save(tmp_path / "bad" / "hole" / "Imgs" / f"h{i}.png", _noise(rng, (24, 32)))
        _save(tmp_path / "bad" / "hole" / "Imgs" / f"h{i}_mask.png", _noise(rng, (24, 32)))
    return tmp_path


def test_load_folders_masks_and_defect_types(folders):
    split = load_folders([folders / "ok"], [folders / "bad"])
    bad = [s for s in split.test if s.label == 1]
    names = ["c0.jpg", "c1.jpg", "c2.jpg", "h0.png", "h1.png", "h2.png"]
    assert [s.path.name for s in bad] == names
    assert [s.defect_type for s in bad] == ["crack"] * 3 + ["hole"] * 3
    assert [s.mask_path.name for s in bad] == [f"c{i}.png" for i in range(3)] + [f"h{i}_mask.png" for i in range(3)]
    assert all(s.mask_path.parent == s.path.parent for s in bad)
    # A 20 % seeded share of the good images is tested, the rest trains.
    good_test = [s for s in split.test if s.label == 0]
    assert len(split.train) == 8 and len(good_test) == 2
    assert not {s.path for s in split.train} & {s.path for s in good_test}
    again = load_folders([folders / "ok"], [folders / "bad"])
    assert again.train == split.train
    other_seed = load_folders([folders / "ok"], [folders / "bad"], seed=5)
    assert {s.path for s in other_seed.train} != {s.path for s in split.train}
    ok, skipped = validate(split)
    assert skipped == [] and len(ok.test) == len(split.test)


def test_load_folders_mask_dir_and_test_normal(folders):
    rng = np.random.default_rng(1)
    for i in range(2):
        _save(folders / "flat" / f"f{i}.bmp", _noise(rng, (24, 32, 3)))
        _save(folders / "masks" / f"f{i}_mask.png", _noise(rng, (24, 32)))
    split = load_folders(folders / "ok", folders / "flat", folders / "masks", folders / "ok")
    assert len(split.train) == 10  # test_normal given: no split
    bad = [s for s in split.test if s.label == 1]
    assert [s.mask_path for s in bad] == [folders / "masks" / f"f{i}_mask.png" for i in range(2)]
    assert [s.defect_type for s in bad] == ["flat", "flat"]
    via_dataset = load_dataset(
        layout="folders",
        normal=[folders / "ok"],
        abnormal=[folders / "flat"],
        masks=folders / "masks",
    )
    assert [s.mask_path for s in via_dataset.test if s.label] == [s.mask_path for s in bad]


def test_load_dataset_cannot_tell_layout(folders):
    with pytest.raises(DataError) as excinfo:
        load_dataset(folders / "bad")
    _assert_one_line_error(excinfo, folders / "bad", "normal")
    assert load_dataset(folders / "bad", normal=[folders / "ok"]).train


def test_empty_and_missing_folders(tmp_path, folders):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError) as excinfo:
        load_folders([tmp_path / "empty"])
    _assert_one_line_error(excinfo, tmp_path / "empty", "no images")
    with pytest.raises(DataError) as excinfo:
        load_folders([folders / "ok"], [tmp_path / "nowhere"])
    _assert_one_line_error(excinfo, tmp_path / "nowhere", "not found")


# ----------------------------------------------------------------------------
# Decoding


def test_read_image_bit_depths_and_formats(tmp_path):
    rng = np.random.default_rng(0)
    grey8 = _noise(rng, (20, 30))
    grey16 = _noise(rng, (20, 30), np.uint16)
    rgb = _noise(rng, (20, 30, 3))
    cases = {
        "grey8.png": (grey8, grey8[..., None] / 255),
        "grey16.png": (grey16, grey16[..., None] / 65535),
        "grey16.tif": (grey16, grey16[..., None] / 65535),
        "rgb.tiff": (rgb, rgb / 255),
        "rgb.bmp": (rgb, rgb / 255),
    }
    for name, (array, expected) in cases.items():
        path = _save(tmp_path / name, array)
        values = read_image(path, None, 3)
        assert values.dtype == np.float32 and values.shape == (20, 30, 3), name
        np.testing.assert_allclose(values, np.broadcast_to(expected, (20, 30, 3)), atol=1e-6)
    # 16-bit keeps its precision (not truncated to 8 bits).
    values = read_image(tmp_path / "grey16.png", None, 1)[..., 0]
    assert np.abs(values * 65535 - grey16).max() < 0.5


def test_read_image_channels_alpha_palette_and_resize(tmp_path):
    rng = np.random.default_rng(0)
    rgba = _noise(rng, (16, 16, 4))
    rgb = read_image(_save(tmp_path / "rgba.png", rgba), None, 3)
    np.testing.assert_allclose(rgb, rgba[..., :3] / 255, atol=1e-6)
    grey = read_image(tmp_path / "rgba.png", None, 1)
    luma = rgba[..., :3] @ np.array([0.299, 0.587, 0.114]) / 255
    np.testing.assert_allclose(grey[..., 0], luma, atol=1e-5)
    grey_image = _save(tmp_path / "grey.jpg", _noise(rng, (16, 16)))
    assert read_image(grey_image, None, 1).shape == (16, 16, 1)
    palette = Image.fromarray(rgba[..., :3]).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    palette.save(tmp_path / "palette.png")
    expected = np.asarray(palette.convert("RGB")) / 255
    np.testing.assert_allclose(read_image(tmp_path / "palette.png", None, 3), expected, atol=1e-6)
    # Bilinear resize: a flat image stays flat, a ramp stays monotone, range kept.
    flat = _save(tmp_path / "flat.png", np.full((37, 53), 200, np.uint8))
    np.testing.assert_allclose(read_image(flat, (32, 48), 3), 200 / 255, atol=1e-5)
    ramp = _save(tmp_path / "ramp.png", np.tile(np.arange(0, 250, 5, dtype=np.uint8), (10, 1)))
    resized = read_image(ramp, 16, 1)[..., 0]
    assert resized.shape == (16, 16) and np.all(np.diff(resized[0]) > 0)
    assert resized.min() >= 0 and resized.max() <= 1


def test_read_mask_threshold_and_nearest(tmp_path):
    values = np.array([[0, 127, 128, 255]], np.uint8).repeat(4, axis=0)
    mask = read_mask(_save(tmp_path / "m8.png", values), None)
    assert mask.dtype == bool and mask.tolist() == [[False, False, True, True]] * 4
    values16 = np.array([[0, 32767, 32768, 65535]], np.uint16).repeat(4, axis=0)
    assert read_mask(_save(tmp_path / "m16.png", values16), None).tolist() == mask.tolist()
    red = np.zeros((4, 4, 3), np.uint8)
    red[:, 2:, 0] = 255  # a colour mask counts a pixel where any channel is set
    assert read_mask(_save(tmp_path / "red.png", red), None).tolist() == mask.tolist()
    big = read_mask(tmp_path / "m8.png", (8, 8))
    assert big.shape == (8, 8) and big[:, :4].sum() == 0 and big[:, 4:].all()


def _edge_test_images(folder: Path) -> dict[str, Path]:
    rng = np.random.default_rng(7)
    colour = _noise(rng, (37, 45, 3))
    palette = Image.fromarray(colour).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.save(folder / "palette.png")
    palette.save(folder / "palette_alpha.png", transparency=0)  # expands through RGBA
    return {
        "rgb8.png": _save(folder / "rgb8.png", colour),
        "rgba8.png": _save(folder / "rgba8.png", _noise(rng, (37, 45, 4))),
        "grey16.png": _save(folder / "grey16.png", _noise(rng, (37, 45), np.uint16)),
        "palette.png": folder / "palette.png",
        "palette_alpha.png": folder / "palette_alpha.png",
    }


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [(32, 32), (48, 64), (37, 45)])
def test_read_image_is_bit_for_bit_the_edge_preprocessing(tmp_path, channels, size):
    # Training and the device must see identical inputs: no tolerance here.
    from edge.images import load_image, to_model_input

    for name, path in _edge_test_images(tmp_path).items():
        training = read_image(path, size, channels)
        device = to_model_input([load_image(path)], size, channels, "float32")[0]
        assert training.dtype == device.dtype == np.float32, name
        assert training.shape == device.shape == (*size, channels), name
        np.testing.assert_array_equal(training, device, err_msg=name)


def test_read_image_size_forms_and_errors_follow_edge(tmp_path):
    from edge.images import ImageError, load_image

    path = _edge_test_images(tmp_path)["rgb8.png"]
    np.testing.assert_array_equal(read_image(path, 32, 3), read_image(path, (32, 32), 3))
    np.testing.assert_array_equal(read_image(path, None, 3), load_image(path))  # None: no resize
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        read_image(path, 32, 2)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    with pytest.raises(ImageError) as edge_error:
        load_image(broken)
    with pytest.raises(DataError) as data_error:
        read_image(broken, 32, 3)
    assert str(data_error.value) == str(edge_error.value)  # "PATH: cannot read image: REASON"


# ----------------------------------------------------------------------------
# Bad input


def _truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


@pytest.mark.parametrize("name", ["truncated.jpg", "truncated.png", "text.png", "empty.bmp"])
def test_unreadable_images_raise_naming_the_file(tmp_path, name):
    rng = np.random.default_rng(0)
    path = tmp_path / name
    if name.startswith("truncated"):
        _truncate(_save(path, _noise(rng, (64, 64, 3))))
    elif name.startswith("text"):
        path.write_text("this is not\na picture\n")
    else:
        path.write_bytes(b"")
    with pytest.raises(DataError) as excinfo:
        read_image(path, (32, 32), 3)
    _assert_one_line_error(excinfo, path, "cannot read image")
    with pytest.raises(DataError) as excinfo:
        validate([Sample(path, 0)])
    _assert_one_line_error(excinfo, path, "cannot read image")


def test_skip_unreadable_counts_skipped(folders):
    _truncate(folders / "ok" / "g3.png")
    (folders / "ok" / "g7.png").write_text("not an image")
    _truncate(folders / "bad" / "crack" / "c1.jpg")
    split = load_folders([folders / "ok"], [folders / "bad"], test_normal_dirs=[folders / "ok"])
    with pytest.raises(DataError) as excinfo:
        validate(split)
    _assert_one_line_error(excinfo, folders / "ok" / "g3.png", "cannot read image")
    ok, skipped = validate(split, skip_unreadable=True)
    bad_files = {folders / "ok" / "g3.png", folders / "ok" / "g7.png"}
    bad_files.add(folders / "bad" / "crack" / "c1.jpg")
    # g3 and g7 appear in both train and test (test_normal_dirs is the same folder).
    assert {path for path, _ in skipped} == bad_files and len(skipped) == 5
    assert all("\n" not in reason and reason for _, reason in skipped)
    assert isinstance(ok, DataSplit) and len(ok.train) == 8 and len(ok.test) == 8 + 5
    assert not bad_files & {s.path for s in ok.train + ok.test}


def test_missing_mask_and_mask_of_another_size(folders):
    (folders / "bad" / "hole" / "Imgs" / "h1_mask.png").unlink()
    split = load_folders([folders / "ok"], [folders / "bad"])
    assert has_pixel_masks(split.test)
    with pytest.raises(DataError) as excinfo:
        validate(split, skip_unreadable=True)
    _assert_one_line_error(excinfo, folders / "bad" / "hole" / "Imgs" / "h1.png", "no mask")

    _save(folders / "bad" / "hole" / "Imgs" / "h1_mask.png", np.zeros((24, 31), np.uint8))
    split = load_folders([folders / "ok"], [folders / "bad"])
    with pytest.raises(DataError) as excinfo:
        validate(split.test, skip_unreadable=True)
    _assert_one_line_error(excinfo, folders / "bad" / "hole" / "Imgs" / "h1_mask.png", "31x24")

    _truncate(folders / "bad" / "hole" / "Imgs" / "h1_mask.png")
    with pytest.raises(DataError) as excinfo:
        validate(split.test, skip_unreadable=True)
    _assert_one_line_error(excinfo, folders / "bad" / "hole" / "Imgs" / "h1_mask.png")


def test_no_masks_at_all_is_image_level(folders):
    masks = list((folders / "bad").rglob("*_mask.png")) + list((folders / "bad").rglob("c*.png"))
    for mask in masks:
        mask.unlink()
    split = load_folders([folders / "ok"], [folders / "bad"])
    assert not has_pixel_masks(split.test)
    ok, skipped = validate(split)
    assert len(ok.test) == len(split.test) and skipped == []


# ----------------------------------------------------------------------------
# Splits and tf.data


def test_split_holdout_deterministic_and_disjoint():
    samples = [Sample(Path(f"{i:02d}.png"), 0) for i in range(23)]
    kept, held = split_holdout(samples, 0.2, seed=3)
    assert (kept, held) == split_holdout(samples, 0.2, seed=3)
    assert len(held) == round(23 * 0.2) and len(kept) + len(held) == 23
    assert not set(kept) & set(held) and set(kept) | set(held) == set(samples)
    assert kept == [s for s in samples if s in set(kept)]  # order kept
    assert split_holdout(samples, 0.2, seed=4)[1] != held
    assert len(split_holdout(samples[:2], 0.01)[1]) == 1  # at least one held out
    assert split_holdout(samples[:2], 0.0) == (samples[:2], [])
    with pytest.raises(ValueError):
        split_holdout(samples, 1.0)


def test_split_good_three_disjoint_parts():
    samples = [Sample(Path(f"{i:02d}.png"), 0) for i in range(40)]
    train, validation, calibration = split_good(samples, 0.1, 0.2, seed=3)
    assert (len(train), len(validation), len(calibration)) == (28, 4, 8)
    assert set(train) | set(validation) | set(calibration) == set(samples)
    assert len(set(train) | set(validation) | set(calibration)) == 40
    assert (train, validation, calibration) == split_good(samples, 0.1, 0.2, seed=3)
    # Without a calibration share the split is the one runs made before it existed.
    kept, held = split_holdout(samples, 0.1, seed=3)
    assert split_good(samples, 0.1, 0.0, seed=3) == (kept, held, [])
    assert split_good(samples, 0.0, 0.1, seed=3) == (kept, [], held)
    # Two images held out, one for each purpose.
    assert [len(p) for p in split_good(samples[:10], 0.1, 0.1)] == [8, 1, 1]


def test_data_spec_round_trips_through_json(tmp_path, monkeypatch):
    data_dir = make_synthetic_dataset(tmp_path / "data", image_size=32, n_train=4, n_test_good=2, n_test_defect=2)
    monkeypatch.chdir(tmp_path)
    spec = json.loads(json.dumps(data_spec("data", "mvtec")))  # relative paths become absolute
    assert spec["path"] == str(data_dir.resolve())
    split, skipped = load_split(spec)
    assert (len(split.train), len(split.test), skipped) == (4, 2 + 2 * 2, [])  # 2 defects per defect type
    with pytest.raises(DataError, match="unknown layout"):
        load_split({**spec, "layout": "nonsense"})


# ----------------------------------------------------------------------------
# Real data: the magnetic-tile set


def test_load_magnetic_tile_and_auto_layout(tmp_path):
    # A miniature copy of the layout: auto-detection and NAME.png-beside-NAME.jpg masks.
    rng = np.random.default_rng(0)
    for folder, count in (("MT_Free", 5), ("MT_Crack", 2), ("MT_Fray", 1)):
        for i in range(count):
            _save(tmp_path / folder / "Imgs" / f"x{i}.jpg", _noise(rng, (20, 12)))
            _save(tmp_path / folder / "Imgs" / f"x{i}.png", np.zeros((20, 12), np.uint8))
    split = load_dataset(tmp_path)
    assert len(split.train) == 4
    assert split.describe() == "4 train, 4 test (good 1, MT_Crack 2, MT_Fray 1)"
    assert all(s.path.suffix == ".jpg" for s in split.train + split.test)


def test_real_magnetic_tile():
    if not MAGNETIC_TILE.is_dir():
        pytest.skip(f"magnetic-tile data not found at {MAGNETIC_TILE} (see shared/data/README.md)")
    split = load_magnetic_tile(MAGNETIC_TILE)
    good = split.train + [s for s in split.test if s.label == 0]
    bad = [s for s in split.test if s.label == 1]
    assert len(good) == 952 and len(bad) == 392
    assert all(s.path.parent.parent.name == "MT_Free" for s in good)
    assert all(s.path.suffix.lower() == ".jpg" for s in good + bad)  # no .png masks as images
    defects = {"MT_Blowhole", "MT_Break", "MT_Crack", "MT_Fray", "MT_Uneven"}
    assert {s.defect_type for s in bad} == defects
    assert all(s.mask_path == s.path.with_suffix(".png") and s.mask_path.is_file() for s in bad)
    # Read only a few: one image per defect type, mask at its original size.
    few = list({s.defect_type: s for s in bad}.values())
    ok, skipped = validate(few)
    assert len(ok) == len(few) and skipped == []
    images, masks = load_arrays(few, RiadConfig(image_size=(64, 64)), with_masks=True)
    assert images.shape == (len(few), 64, 64, 3) and masks.any(axis=(1, 2)).sum() >= len(few) - 1
    assert np.allclose(images[..., 0], images[..., 2])  # grey repeated to 3 channels
