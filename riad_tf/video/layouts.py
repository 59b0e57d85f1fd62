"""Video data sets: finding the videos, their frame labels, and checking them.

A video is a video file (`.avi`, `.mp4`, ...) or a folder of frame images.
Three layouts are understood:

- UCSD Ped2 (`load_ped2`): `Train/TrainNNN/*.tif` and `Test/TestNNN/*.tif`
  (the `TestNNN_gt` pixel-mask folders are ignored); frame labels from the
  data set's MATLAB ground truth `Test/UCSDped2.m` (`TestDataset.gt{i} =
  [61:180];`, 1-based inclusive spans, several per video allowed).
- CUHK Avenue (`load_avenue`): `training_videos/` and `testing_videos/`
  (`01.avi`, ... or frame folders; `training/frames/NN/` and
  `testing/frames/NN/` also work); frame labels from
  `ground_truth_demo/testing_label_mask/N_label.mat` (a frame is anomalous
  where its mask has any pixel set).
- Generic (`load_video_folders`): `train/` and `test/` holding video files or
  frame folders, and `labels.csv`.

In every layout a `labels.csv` at the root, with the columns `video,frame,label`
(frame numbers 1-based, every frame of every test video listed once, label 1 for
an anomalous frame), takes precedence over the data set's own ground truth.
Video names match when equal, or when both are numbers of equal value
(`01` and `1`).

Training videos hold normal frames only. `validate_videos` decodes every frame
once before training, counts the frames of video files and checks each test
video's labels against its frame count, so a bad file stops the run at once
with a one-line `DataError` naming it.

Example:

>>> split = validate_videos(load_video_dataset("UCSDped2", "ped2"))   # doctest: +SKIP
>>> split.describe()                                                   # doctest: +SKIP
'16 train videos (2550 frames); 12 test videos (2010 frames, 1652 anomalous)'
"""

from __future__ import annotations

import csv
import dataclasses
import re
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from edge.images import frame_files, natural_key
from riad_tf.data import DataError
from riad_tf.image_files import image_size_of
from riad_tf.video.frames import count_video_frames, is_video_file, iter_frames, stack_frames

VIDEO_LAYOUTS = ("ped2", "avenue", "video")
LABELS_CSV = "labels.csv"
LABEL_COLUMNS = ("video", "frame", "label")


@dataclasses.dataclass(frozen=True, eq=False)
class Video:
    """One video of a data set.

    Attributes:
        name: the file's stem or the frame folder's name (`Test001`, `01`).
        source: the video file or the frame folder.
        frame_paths: the frame images in order, or None for a video file.
        labels: uint8 `(num_frames,)`, 1 for an anomalous frame; None for a
            training video.
        num_frames: the frame count; None for a video file until
            `validate_videos` has counted it.
    """

    name: str
    source: Path
    frame_paths: tuple[Path, ...] | None = dataclasses.field(default=None, repr=False)
    labels: np.ndarray | None = dataclasses.field(default=None, repr=False)
    num_frames: int | None = None

    def frames(self, config, indices: Sequence[int] | None = None) -> Iterator[np.ndarray]:
        """Yields float32 `(H, W, C)` model inputs (see `riad_tf.video.frames`).

        Args:
            config: a `RiadConfig`.
            indices: ascending 0-based frame numbers; None reads all frames.
        """
        return iter_frames(self.source, self.frame_paths, config, indices)

    def read(self, config, indices: Sequence[int] | None = None) -> np.ndarray:
        """The frames as one float32 `(N, H, W, C)` array."""
        count = len(indices) if indices is not None else self.num_frames
        return stack_frames(self.frames(config, indices), config, count)


@dataclasses.dataclass
class VideoSplit:
    """Training videos (normal only) and labelled test videos."""

    train: list[Video]
    test: list[Video]

    def describe(self) -> str:
        """One line such as `16 train videos (2550 frames); 12 test videos (2010 frames, 1652 anomalous)`."""

        def frames(videos):
            counts = [v.num_frames for v in videos]
            return "?" if None in counts else str(sum(counts))

        anomalous = sum(int(v.labels.sum()) for v in self.test if v.labels is not None)
        return (
            f"{len(self.train)} train videos ({frames(self.train)} frames); "
            f"{len(self.test)} test videos ({frames(self.test)} frames, {anomalous} anomalous)"
        )


# ----------------------------------------------------------------------------
# Listing


def list_videos(folder: Path) -> list[Video]:
    """The videos in `folder`: video files, and subfolders holding frame images.

    Subfolders named `*_gt` (Ped2's pixel masks), hidden entries and
    subfolders without frame images are skipped.

    Raises:
        DataError: the folder is missing or holds no video.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found")
    videos = []
    for entry in sorted(folder.iterdir(), key=lambda p: natural_key(p.name)):
        if entry.name.startswith("."):
            continue
        if is_video_file(entry):
            videos.append(Video(entry.stem, entry))
        elif entry.is_dir() and not entry.name.lower().endswith("_gt"):
            frames = frame_files(entry)
            if frames:
                videos.append(Video(entry.name, entry, tuple(frames), num_frames=len(frames)))
    if not videos:
        raise DataError(f"{folder}: no videos (video files or folders of frame images) in this folder")
    return videos


def same_video_name(a: str, b: str) -> bool:
    """True when the names are equal, or both are numbers of equal value (`01`, `1`)."""
    a, b = str(a), str(b)
    return a == b or (a.isdigit() and b.isdigit() and int(a) == int(b))


def exclude_videos(videos: Sequence[Video], names: Sequence[str]) -> tuple[list[Video], list[Video]]:
    """Splits off the videos named in `names` (e.g. the test videos Avenue17 drops).

    Returns:
        (kept, excluded), each in the order of `videos`.

    Raises:
        DataError: a name matches no video (a typo would silently change the benchmark).
    """
    for name in names:
        if not any(same_video_name(name, v.name) for v in videos):
            known = ", ".join(v.name for v in videos)
            raise DataError(f"exclude_test_videos: no test video named {name!r} (test videos: {known})")
    excluded = [v for v in videos if any(same_video_name(n, v.name) for n in names)]
    return [v for v in videos if v not in excluded], excluded


# ----------------------------------------------------------------------------
# Frame labels


def read_label_csv(path: Path) -> dict[str, np.ndarray]:
    """Reads frame labels `video,frame,label` (frame 1-based, every frame once).

    Returns:
        `{video name: uint8 (num_frames,) labels}`.

    Raises:
        DataError: "PATH: line N: PROBLEM" for a bad row, a duplicate or a gap.

    Example:

    >>> read_label_csv(Path("labels.csv"))["01"][:5]               # doctest: +SKIP
    array([0, 0, 1, 1, 1], dtype=uint8)
    """
    path = Path(path)
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            missing = set(LABEL_COLUMNS) - set(reader.fieldnames or ())
            if missing:
                raise DataError(
                    f"{path}: missing column(s) {', '.join(sorted(missing))}; "
                    f"expected a header {','.join(LABEL_COLUMNS)}"
                )
            frames: dict[str, dict[int, int]] = {}
            for row in reader:
                line = reader.line_num
                video, frame, label = (str(row[c] or "").strip() for c in LABEL_COLUMNS)
                if not video or not frame.isdigit() or int(frame) < 1 or label not in ("0", "1"):
                    raise DataError(
                        f"{path}: line {line}: expected a video name, a frame number >= 1 "
                        f"(1-based) and a label 0 or 1, got {video!r}, {frame!r}, {label!r}"
                    )
                per_video = frames.setdefault(video, {})
                if int(frame) in per_video:
                    raise DataError(f"{path}: line {line}: frame {frame} of video {video!r} listed twice")
                per_video[int(frame)] = int(label)
    except OSError as err:
        raise DataError(f"{path}: cannot read labels: {err.strerror or err}") from None
    labels = {}
    for video, per_video in frames.items():
        count = max(per_video)
        if len(per_video) != count:
            gap = min(set(range(1, count + 1)) - set(per_video))
            raise DataError(f"{path}: video {video!r} has no row for frame {gap} (list every frame 1..N)")
        labels[video] = np.array([per_video[i] for i in range(1, count + 1)], np.uint8)
    if not labels:
        raise DataError(f"{path}: no label rows")
    return labels


def read_ped2_ground_truth(path: Path) -> list[list[tuple[int, int]]]:
    r"""Parses UCSD's MATLAB ground truth (`UCSDped2.m`) without MATLAB.

    Lines look like `TestDataset.gt{3} = [1:146];` or `[5:90, 140:200]`; spans
    are 1-based and inclusive; `%` starts a comment.

    Returns:
        For test video i (1-based, in order), its list of (first, last) spans.

    Raises:
        DataError: no entries, a malformed span, or missing entries.

    Example:

    >>> import tempfile
    >>> m = Path(tempfile.mkdtemp()) / "UCSDped2.m"
    >>> _ = m.write_text("TestDataset = {};\nTestDataset.gt{1} = [61:180];\nTestDataset.gt{2} = [5:9, 20];\n")
    >>> read_ped2_ground_truth(m)
    [[(61, 180)], [(5, 9), (20, 20)]]
    """
    path = Path(path)
    try:
        text = "\n".join(line.split("%", 1)[0] for line in path.read_text(errors="replace").splitlines())
    except OSError as err:
        raise DataError(f"{path}: cannot read ground truth: {err.strerror or err}") from None
    entries: dict[int, list[tuple[int, int]]] = {}
    for match in re.finditer(r"gt\s*\{\s*(\d+)\s*\}\s*=\s*\[([^\]]*)\]", text):
        spans = []
        for item in re.split(r"[\s,;]+", match.group(2).strip()):
            if not item:
                continue
            bounds = item.split(":")
            if len(bounds) > 2 or not all(b.isdigit() for b in bounds):
                raise DataError(f"{path}: gt{{{match.group(1)}}}: cannot read span {item!r} (expected FIRST:LAST)")
            first, last = int(bounds[0]), int(bounds[-1])
            if first < 1 or last < first:
                raise DataError(f"{path}: gt{{{match.group(1)}}}: bad span {item!r} (1-based, FIRST <= LAST)")
            spans.append((first, last))
        entries[int(match.group(1))] = spans
    if not entries:
        raise DataError(f"{path}: no 'TestDataset.gt{{i}} = [FIRST:LAST]' entries")
    missing = sorted(set(range(1, max(entries) + 1)) - set(entries))
    if missing:
        raise DataError(f"{path}: no entry gt{{{missing[0]}}}")
    return [entries[i] for i in range(1, max(entries) + 1)]


def spans_to_labels(spans: Sequence[tuple[int, int]], num_frames: int) -> np.ndarray:
    """uint8 `(num_frames,)` labels, 1 inside the 1-based inclusive spans.

    Example:

    >>> spans_to_labels([(2, 3)], 5)
    array([0, 1, 1, 0, 0], dtype=uint8)
    """
    labels = np.zeros(num_frames, np.uint8)
    for first, last in spans:
        if last > num_frames:
            raise ValueError(f"span {first}:{last} passes the last frame ({num_frames})")
        labels[first - 1 : last] = 1
    return labels


def read_avenue_label_masks(folder: Path) -> dict[str, np.ndarray]:
    """Frame labels from Avenue's `N_label.mat` files (MATLAB `volLabel`, one mask per frame).

    Needs scipy. A frame is anomalous when its mask has any pixel set.

    Returns:
        `{"N": uint8 (num_frames,) labels}` (names without leading zeros).

    Raises:
        DataError: no label files, or a file without `volLabel`.
    """
    from scipy.io import loadmat

    labels = {}
    for path in sorted(Path(folder).glob("*_label.mat"), key=lambda p: natural_key(p.name)):
        try:
            volume = loadmat(path).get("volLabel")
        except (OSError, ValueError, NotImplementedError) as err:
            raise DataError(f"{path}: cannot read labels: {str(err).splitlines()[0]}") from None
        if volume is None:
            raise DataError(f"{path}: no 'volLabel' variable (expected Avenue's testing_label_mask files)")
        masks = np.asarray(volume, dtype=object).ravel()
        labels[path.name[: -len("_label.mat")]] = np.array([np.any(m) for m in masks], np.uint8)
    if not labels:
        raise DataError(f"{folder}: no N_label.mat files")
    return labels


def _with_labels(videos: Sequence[Video], labels: Mapping[str, np.ndarray], source: Path) -> list[Video]:
    labelled = []
    for video in videos:
        found = [v for k, v in labels.items() if same_video_name(k, video.name)]
        if not found:
            raise DataError(f"{source}: no frame labels for test video {video.name!r} ({video.source})")
        labelled.append(dataclasses.replace(video, labels=found[0]))
    return labelled


def _frame_count(video: Video) -> int:
    return video.num_frames if video.num_frames is not None else count_video_frames(video.source)


# ----------------------------------------------------------------------------
# Layouts


def load_ped2(root) -> VideoSplit:
    """Lists UCSD Ped2 (or Ped1): `Train/TrainNNN/`, `Test/TestNNN/`, `Test/UCSDped2.m`.

    The i-th `gt{i}` entry labels the i-th test video in name order. A
    `labels.csv` at the root replaces the `.m` file.

    Raises:
        DataError: a folder or the ground truth is missing, or they disagree.

    Example:

    >>> load_ped2("UCSD_Anomaly_Dataset.v1p2/UCSDped2").describe()   # doctest: +SKIP
    """
    root = Path(root)
    train, test = list_videos(root / "Train"), list_videos(root / "Test")
    csv_path = root / LABELS_CSV
    if csv_path.is_file():
        return VideoSplit(train, _with_labels(test, read_label_csv(csv_path), csv_path))
    candidates = sorted((root / "Test").glob("UCSDped*.m")) + sorted(root.glob("UCSDped*.m"))
    if not candidates:
        raise DataError(f"{root}: no frame labels: expected Test/UCSDped2.m or {LABELS_CSV}")
    spans = read_ped2_ground_truth(candidates[0])
    if len(spans) != len(test):
        raise DataError(f"{candidates[0]}: {len(spans)} gt entries for {len(test)} test videos in {root / 'Test'}")
    labelled = []
    for i, (video, video_spans) in enumerate(zip(test, spans), start=1):
        try:
            labels = spans_to_labels(video_spans, _frame_count(video))
        except ValueError as err:
            raise DataError(f"{candidates[0]}: gt{{{i}}} ({video.name}): {err}") from None
        labelled.append(dataclasses.replace(video, labels=labels))
    return VideoSplit(train, labelled)


def load_avenue(root) -> VideoSplit:
    """Lists CUHK Avenue: training and testing videos (or frame folders) and frame labels.

    Videos: `training_videos/` and `testing_videos/`, else `training/frames/`
    and `testing/frames/`. Labels: `labels.csv` at the root, else the
    `N_label.mat` files in `ground_truth_demo/testing_label_mask/` (or
    `testing_label_mask/`). Avenue17 leaves some test videos out at evaluation
    (`RiadConfig.exclude_test_videos`); all are listed here.

    Raises:
        DataError: no videos or no labels found.

    Example:

    >>> load_avenue("Avenue Dataset").describe()                      # doctest: +SKIP
    """
    root = Path(root)
    train = list_videos(_first_dir(root, ("training_videos", "training/frames", "training")))
    test = list_videos(_first_dir(root, ("testing_videos", "testing/frames", "testing")))
    csv_path = root / LABELS_CSV
    if csv_path.is_file():
        return VideoSplit(train, _with_labels(test, read_label_csv(csv_path), csv_path))
    for folder in (root / "ground_truth_demo" / "testing_label_mask", root / "testing_label_mask"):
        if folder.is_dir():
            return VideoSplit(train, _with_labels(test, read_avenue_label_masks(folder), folder))
    raise DataError(
        f"{root}: no frame labels: expected {LABELS_CSV} or ground_truth_demo/testing_label_mask/N_label.mat"
    )


def load_video_folders(root) -> VideoSplit:
    """Lists the generic layout: `train/` and `test/` (video files or frame folders) and `labels.csv`.

    Example:

    >>> load_video_folders("my_camera").describe()                    # doctest: +SKIP
    """
    root = Path(root)
    train, test = list_videos(root / "train"), list_videos(root / "test")
    csv_path = root / LABELS_CSV
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: frame labels not found (columns {','.join(LABEL_COLUMNS)})")
    return VideoSplit(train, _with_labels(test, read_label_csv(csv_path), csv_path))


def _first_dir(root: Path, names: Sequence[str]) -> Path:
    for name in names:
        if (root / name).is_dir():
            return root / name
    raise DataError(f"{root}: none of the folders {', '.join(names)} found")


def detect_video_layout(root) -> str | None:
    """The layout `root` looks like: "ped2", "avenue" or "video"; None for none of them."""
    root = Path(root)
    if (root / "Train").is_dir() and (root / "Test").is_dir() and not (root / "train" / "good").is_dir():
        return "ped2"
    if any(
        (root / a).is_dir() and (root / b).is_dir()
        for a, b in (("training_videos", "testing_videos"), ("training/frames", "testing/frames"))
    ):
        return "avenue"
    if (root / "train").is_dir() and (root / "test").is_dir() and (root / LABELS_CSV).is_file():
        return "video"
    return None


def resolve_video_layout(path, layout: str) -> str | None:
    """The video layout to load for a `--data PATH --layout LAYOUT` pair, or None for image data.

    "ped2", "avenue" and "video" are returned as they are; "auto" detects one
    from the folder (None when it is not a video data set).
    """
    if layout in VIDEO_LAYOUTS:
        return layout
    if layout == "auto" and path is not None and Path(path).is_dir():
        return detect_video_layout(path)
    return None


def load_video_dataset(root, layout: str = "auto") -> VideoSplit:
    """Lists a video data set in any of the known layouts.

    Args:
        root: the data-set folder.
        layout: "ped2", "avenue", "video", or "auto" (detected from the folders).

    Returns:
        A `VideoSplit` (video files not yet counted: see `validate_videos`).

    Raises:
        DataError: the layout cannot be told, or a loader's error.
    """
    if root is None:
        raise DataError("a video data set needs a data-set folder (--data)")
    if layout == "auto":
        layout = detect_video_layout(root) or ""
    loaders = {"ped2": load_ped2, "avenue": load_avenue, "video": load_video_folders}
    if layout not in loaders:
        raise DataError(
            f"{root}: not a known video layout: expected Train/ and Test/ (ped2), "
            "training_videos/ and testing_videos/ (avenue), or train/, test/ and labels.csv (video)"
        )
    return loaders[layout](root)


# ----------------------------------------------------------------------------
# Checking


def validate_videos(split: VideoSplit) -> VideoSplit:
    """Decodes every frame once; counts video files' frames; checks labels against frame counts.

    Unreadable frames stop the run (skipping one would shift every later
    frame's label).

    Returns:
        The same videos with `num_frames` set.

    Raises:
        DataError: one line naming the first bad file and its problem.
    """
    if not split.train:
        raise DataError("no training videos")
    checked = {"train": [], "test": []}
    every = [("train", v) for v in split.train] + [("test", v) for v in split.test]
    for part, video in tqdm(every, desc="checking videos", unit="video", disable=None):
        if video.frame_paths is None:
            count = count_video_frames(video.source)
        else:
            for path in video.frame_paths:
                image_size_of(path)  # decodes fully
            count = len(video.frame_paths)
        if count == 0:
            raise DataError(f"{video.source}: no frames could be decoded")
        if part == "test":
            if video.labels is None:
                raise DataError(f"{video.source}: test video without frame labels")
            if len(video.labels) != count:
                raise DataError(f"{video.source}: {count} frames but its labels cover {len(video.labels)}")
        checked[part].append(dataclasses.replace(video, num_frames=count))
    return VideoSplit(checked["train"], checked["test"])
