"""Data sets: finding the images of a layout, and splitting them.

Three layouts are understood:

- MVTec AD (`load_mvtec`): `CATEGORY/train/good`, `CATEGORY/test/<defect>`,
  masks in `CATEGORY/ground_truth/<defect>/NAME_mask.png`.
- Plain folders (`load_folders`): folders of good images, folders of defective
  images, masks named `NAME_mask.png` (beside the image or in a mask folder) or
  `NAME.png` beside a `NAME.jpg`.
- The magnetic-tile data set (`load_magnetic_tile`), a case of plain folders.

A loader only lists files; `riad_tf.image_files` reads and checks them. A run
records its data set as a `data_spec` (folders and layout, JSON), which
`riad_tf.image_files.load_split` reads back. `split_good` splits the good
images into training, validation and calibration shares.

Example:

>>> split = load_dataset("riad-demo/data")                    # doctest: +SKIP
>>> train, validation, calibration = split_good(split.train, 0.1, 0.1)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from edge.errors import InputError
from edge.images import IMAGE_EXTENSIONS

# Folder names that say nothing about the defect: `MT_Crack/Imgs/x.jpg` is a crack.
GENERIC_FOLDER_NAMES = frozenset({"imgs", "img", "images", "image"})
MASK_SUFFIX = "_mask"
log = logging.getLogger(__name__)

PathLike = str | os.PathLike


class DataError(InputError):
    """Bad input data; the message is one line naming the file or folder and the problem."""


@dataclasses.dataclass(frozen=True)
class Sample:
    """One image of a data set.

    Attributes:
        path: the image file.
        label: 0 for a good image, 1 for an anomalous one.
        mask_path: its ground-truth mask (defect where > 127), or None: good
            images have none (their mask is all zero), and anomalous images of a
            data set without masks are evaluated at image level only.
        defect_type: "good", or the defect's name (its folder's name).
    """

    path: Path
    label: int
    mask_path: Path | None = None
    defect_type: str = "good"


@dataclasses.dataclass
class DataSplit:
    """Training images (good only) and test images (good and anomalous)."""

    train: list[Sample]
    test: list[Sample]

    def describe(self) -> str:
        """One line such as `40 train, 30 test (10 good, scratch 10, spot 10)`."""
        counts: dict[str, int] = {}
        for sample in self.test:
            counts[sample.defect_type] = counts.get(sample.defect_type, 0) + 1
        parts = ", ".join(f"{name} {count}" for name, count in counts.items())
        return f"{len(self.train)} train, {len(self.test)} test ({parts or 'none'})"


# ----------------------------------------------------------------------------
# Layouts


def load_mvtec(category_dir: PathLike) -> DataSplit:
    """Lists one MVTec AD category.

    Args:
        category_dir: the category folder, holding `train/good`, `test/<defect>`
            (`test/good` holds good test images) and `ground_truth/<defect>`.

    Returns:
        A `DataSplit`; an anomalous image's mask is
        `ground_truth/<defect>/NAME_mask.png` when that file exists.

    Raises:
        DataError: a folder is missing or holds no images.

    Example:

    >>> split = load_mvtec("mvtec/bottle")                    # doctest: +SKIP
    >>> split.test[-1].defect_type                            # doctest: +SKIP
    'contamination'
    """
    root = Path(category_dir)
    train = [Sample(p, 0) for p in _images_in(root / "train" / "good", masks_expected=False)]
    test_dir = root / "test"
    if not test_dir.is_dir():
        raise DataError(f"{test_dir}: folder not found (an MVTec category needs test/<defect>/)")
    test = []
    for defect_dir in sorted(d for d in test_dir.iterdir() if d.is_dir()):
        defect = defect_dir.name
        for path in _images_in(defect_dir):
            if defect == "good":
                test.append(Sample(path, 0))
                continue
            mask = root / "ground_truth" / defect / f"{path.stem}{MASK_SUFFIX}.png"
            test.append(Sample(path, 1, mask if mask.is_file() else None, defect))
    if not test:
        raise DataError(f"{test_dir}: no test folders with images")
    return DataSplit(train, test)


def load_folders(
    normal_dirs: PathLike | Sequence[PathLike],
    abnormal_dirs: PathLike | Sequence[PathLike] = (),
    mask_dir: PathLike | None = None,
    test_normal_dirs: PathLike | Sequence[PathLike] = (),
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> DataSplit:
    """Lists a generic layout: folders of good and of defective images.

    Folders are searched recursively. A mask is found by the image's name: in
    `mask_dir` (or its `<defect>/` subfolder) as `NAME_mask.png` or `NAME.png`,
    else beside the image as `NAME_mask.png`, or as `NAME.png` beside a
    `NAME.jpg` (such a `.png` is a mask, never listed as an image). A defect's
    type is its folder's name, or the folder above when that one is a generic
    name like `Imgs` (`MT_Crack/Imgs/x.jpg` is an `MT_Crack`).

    Args:
        normal_dirs: folders of good images.
        abnormal_dirs: folders of defective images (test only).
        mask_dir: a folder of masks, if they are not beside the images.
        test_normal_dirs: folders of good test images. When none are given,
            a seeded share `test_fraction` of the good images becomes the good
            test images and the rest trains.
        test_fraction: that share.
        seed: seed of that split.

    Returns:
        A `DataSplit`. Good images carry no mask (theirs is all zero).

    Raises:
        DataError: a folder is missing or holds no images.

    Example:

    >>> split = load_folders("ok/", ["crack/", "dent/"])       # doctest: +SKIP
    """
    normal = [Sample(p, 0) for p in _images_in_all(normal_dirs)]
    if not normal:
        raise DataError("no folder of good images given")
    test_normal = [Sample(p, 0) for p in _images_in_all(test_normal_dirs)]
    if test_normal:
        train = normal
    else:
        train, test_normal = _split_off(normal, test_fraction, seed)
    masks = _MaskFinder(mask_dir)
    abnormal = [
        Sample(p, 1, masks.find(p, _defect_type(p)), _defect_type(p))
        for p in _images_in_all(abnormal_dirs)
        if masks.mask_dir is None or masks.mask_dir not in p.parents  # a mask folder inside
    ]
    return DataSplit(train, test_normal + abnormal)


def load_magnetic_tile(root: PathLike, *, test_fraction: float = 0.2, seed: int = 0) -> DataSplit:
    """Lists the magnetic-tile surface-defect data set (Huang et al. 2020).

    `MT_Free/Imgs` holds the 952 good images: a seeded share `test_fraction`
    becomes good test images, the rest trains. Every other `MT_*/Imgs` folder
    holds defective images (label 1, defect type `MT_Blowhole` etc.) with the
    mask `NAME.png` beside each `NAME.jpg`. Four `MT_Uneven` masks are empty:
    those images keep label 1 (they sit in a defect folder) but contribute no
    defective pixels. Image sizes vary; `read_image` resizes them.

    Args:
        root: the folder holding `MT_Free`, `MT_Blowhole`, ...
        test_fraction, seed: the split of the good images.

    Returns:
        A `DataSplit`.

    Example:

    >>> split = load_magnetic_tile("../shared/data/magnetic_tile")  # doctest: +SKIP
    """
    root = Path(root)
    if not (root / "MT_Free").is_dir():
        raise DataError(f"{root}: not the magnetic-tile data set (no MT_Free folder)")
    defect_dirs = sorted(d for d in root.glob("MT_*") if d.is_dir() and d.name != "MT_Free")
    return load_folders([root / "MT_Free"], defect_dirs, test_fraction=test_fraction, seed=seed)


def load_dataset(
    path: PathLike | None = None,
    *,
    layout: str = "auto",
    normal: PathLike | Sequence[PathLike] = (),
    abnormal: PathLike | Sequence[PathLike] = (),
    masks: PathLike | None = None,
    test_normal: PathLike | Sequence[PathLike] = (),
    test_fraction: float = 0.2,
    seed: int = 0,
) -> DataSplit:
    """Lists a data set in any of the known layouts.

    Args:
        path: a data-set folder (MVTec category or magnetic-tile root).
        layout: "mvtec", "magnetic_tile", "folders", or "auto": MVTec when
            `path/train/good` exists, magnetic tile when `path/MT_Free` exists,
            folders when `normal` is given.
        normal, abnormal, masks, test_normal: the folders of `load_folders`.
        test_fraction, seed: the split of good images into train and test
            (folder layouts only).

    Returns:
        A `DataSplit`.

    Raises:
        DataError: the layout cannot be told, or a loader's error.

    Example:

    >>> load_dataset("mvtec/bottle").describe()               # doctest: +SKIP
    '209 train, 83 test (broken_large 20, broken_small 22, contamination 21, good 20)'
    """
    if layout == "auto":
        layout = _detect_layout(path, normal)
    if layout in ("mvtec", "magnetic_tile") and path is None:
        raise DataError(f"layout {layout!r} needs a data-set folder")
    if layout == "mvtec":
        return load_mvtec(path)
    if layout == "magnetic_tile":
        return load_magnetic_tile(path, test_fraction=test_fraction, seed=seed)
    if layout == "folders":
        if not normal:
            raise DataError("the folder layout needs at least one folder of good images (normal)")
        return load_folders(normal, abnormal, masks, test_normal, test_fraction=test_fraction, seed=seed)
    raise DataError(f"unknown layout {layout!r}: use auto, mvtec, magnetic_tile or folders")


def _detect_layout(path: PathLike | None, normal) -> str:
    if path is not None:
        root = Path(path)
        if not root.is_dir():
            raise DataError(f"{root}: folder not found")
        if (root / "train" / "good").is_dir():
            return "mvtec"
        if (root / "MT_Free").is_dir():
            return "magnetic_tile"
    if normal:
        return "folders"
    where = f"{path}: " if path is not None else ""
    raise DataError(
        f"{where}cannot tell the data layout: expected train/good/ (MVTec) or MT_Free/ "
        "(magnetic tile); otherwise give the good-image folders (normal) and optionally "
        "defect folders (abnormal) and a mask folder (masks)"
    )


def data_spec(
    path: PathLike | None = None,
    layout: str = "auto",
    normal: Sequence[PathLike] = (),
    abnormal: Sequence[PathLike] = (),
    masks: PathLike | None = None,
    test_normal: Sequence[PathLike] = (),
) -> dict:
    """A data set as absolute folders and a layout, JSON-serialisable (a run's `data.json`).

    The arguments are those of `load_dataset`; a video layout (`riad_tf.video`)
    uses only `path` and `layout`.

    Example:

    >>> data_spec("data/bottle", "mvtec")["layout"]
    'mvtec'
    """
    return {
        "path": str(Path(path).resolve()) if path else None,
        "layout": layout,
        "normal": [str(Path(p).resolve()) for p in normal],
        "abnormal": [str(Path(p).resolve()) for p in abnormal],
        "masks": str(Path(masks).resolve()) if masks else None,
        "test_normal": [str(Path(p).resolve()) for p in test_normal],
    }


def split_holdout(samples: Sequence[Sample], fraction: float = 0.1, seed: int = 0) -> tuple[list[Sample], list[Sample]]:
    """Holds out a seeded share of (good training) images.

    The held-out images calibrate thresholds and give a validation loss.

    Args:
        samples: the images to split.
        fraction: the share to hold out; when > 0 and there are at least two
            images, at least one is held out and at least one kept.
        seed: the same seed gives the same split.

    Returns:
        (kept, held_out), disjoint, each in the order of `samples`.

    Example:

    >>> samples = [Sample(Path(f"{i}.png"), 0) for i in range(10)]
    >>> kept, held_out = split_holdout(samples, 0.2)
    >>> len(kept), len(held_out)
    (8, 2)
    """
    return _split_off(list(samples), fraction, seed)


def split_good(
    samples: Sequence[Sample], validation_fraction: float, calibration_fraction: float, seed: int = 0
) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """Splits good images three ways: training, validation, calibration.

    The validation images choose the kept epoch and watch batch norm; the
    calibration images set the thresholds. They must differ: scores of images
    that chose the model are optimistic, and a threshold set on them breaks its
    false-positive bound (docs/method.md, "Thresholds"). The held-out share is
    `validation_fraction + calibration_fraction` of the images, drawn as
    `split_holdout` draws it, so a run with `calibration_fraction` 0 (older
    runs) holds out the same images as before; its calibration list is empty.

    Args:
        samples: the good images.
        validation_fraction, calibration_fraction: shares of `samples`, summing to less than 1.
        seed: the same seed gives the same split.

    Returns:
        (training, validation, calibration), disjoint, each in the order of
        `samples`. Each share above 0 gets at least one image when the
        images allow it.

    Example:

    >>> samples = [Sample(Path(f"{i}.png"), 0) for i in range(20)]
    >>> [len(part) for part in split_good(samples, 0.1, 0.2)]
    [14, 2, 4]
    """
    held_share = validation_fraction + calibration_fraction
    kept, held = _split_off(list(samples), held_share, seed)
    if not held or calibration_fraction == 0:
        return kept, held, []
    calibration_share = calibration_fraction / held_share
    if validation_fraction == 0:
        return kept, [], held
    validation, calibration = _split_off(held, calibration_share, seed + 1)
    return kept, validation, calibration


def _split_off(samples: list[Sample], fraction: float, seed: int):
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"the held-out share must be in [0, 1), got {fraction}")
    count = round(len(samples) * fraction)
    if fraction > 0 and len(samples) >= 2:
        count = min(max(count, 1), len(samples) - 1)
    chosen = set(np.random.default_rng(seed).permutation(len(samples))[:count].tolist())
    kept = [s for i, s in enumerate(samples) if i not in chosen]
    taken = [s for i, s in enumerate(samples) if i in chosen]
    return kept, taken


# ----------------------------------------------------------------------------
# Finding files


def _as_dirs(dirs: PathLike | Sequence[PathLike]) -> list[Path]:
    if isinstance(dirs, (str, os.PathLike)):
        return [Path(dirs)]
    return [Path(d) for d in dirs]


def _images_in_all(dirs: PathLike | Sequence[PathLike]) -> list[Path]:
    return [p for d in _as_dirs(dirs) for p in _images_in(d)]


def _images_in(folder: Path, masks_expected: bool = True) -> list[Path]:
    """The images under `folder` (recursively, sorted), masks left out.

    With `masks_expected` False (MVTec's train/good, where no masks belong), a
    file left out as a mask is reported with a warning.
    """
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found")
    images, skipped = [], []
    for current, subdirs, names in os.walk(folder):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        files = [n for n in names if not n.startswith(".") and _is_image_name(n)]
        stems = {}
        for name in files:
            stems.setdefault(Path(name).stem, []).append(name)
        for name in sorted(files):
            (images if not _is_mask_name(name, stems) else skipped).append(Path(current) / name)
    if skipped and not masks_expected:
        log.warning(
            f"{folder}: {len(skipped)} file(s) left out as masks (NAME_mask.*, or NAME.png beside an image "
            f"NAME.jpg), first: {skipped[0].name}; rename them if they are training images"
        )
    if not images:
        raise DataError(f"{folder}: no images ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
    return images


def _is_image_name(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


def _is_mask_name(name: str, stems: dict[str, list[str]]) -> bool:
    """`NAME_mask.*`, or `NAME.png` beside an image `NAME.<other extension>`."""
    path = Path(name)
    if path.stem.lower().endswith(MASK_SUFFIX):
        return True
    return path.suffix.lower() == ".png" and any(Path(other).suffix.lower() != ".png" for other in stems[path.stem])


def _defect_type(path: Path) -> str:
    folder = path.parent
    if folder.name.lower() in GENERIC_FOLDER_NAMES and folder.parent.name:
        folder = folder.parent
    return folder.name


class _MaskFinder:
    """Finds an image's mask in a mask folder or beside the image."""

    def __init__(self, mask_dir: PathLike | None):
        self.mask_dir = Path(mask_dir) if mask_dir is not None else None
        if self.mask_dir is not None and not self.mask_dir.is_dir():
            raise DataError(f"{self.mask_dir}: mask folder not found")
        self._listings: dict[Path, dict[str, Path]] = {}

    def find(self, image: Path, defect_type: str) -> Path | None:
        """`NAME_mask.*` or `NAME.*` in the mask folder, else `NAME_mask.*` or `NAME.png` beside."""
        names = (image.stem + MASK_SUFFIX, image.stem)
        places = []
        if self.mask_dir is not None:
            places += [(self.mask_dir / defect_type, name, False) for name in names]
            places += [(self.mask_dir, name, False) for name in names]
        places += [(image.parent, names[0], False), (image.parent, names[1], True)]
        for folder, stem, png_only in places:
            found = self._lookup(folder, stem)
            if found is None or found == image:
                continue
            if not png_only or found.suffix.lower() == ".png":
                return found
        return None

    def _lookup(self, folder: Path, stem: str) -> Path | None:
        """The file `stem.<image extension>` in `folder` (.png preferred)."""
        if folder not in self._listings:
            listing: dict[str, Path] = {}
            if folder.is_dir():
                for entry in sorted(folder.iterdir(), key=lambda p: p.suffix.lower() != ".png"):
                    if entry.is_file() and _is_image_name(entry.name):
                        listing.setdefault(entry.stem, entry)
            self._listings[folder] = listing
        return self._listings[folder].get(stem)
