"""RIAD on surveillance video (Sec. 4.1, 4.3, Table 3): frames scored one by one.

- `riad_tf.video.layouts`: UCSD Ped2, CUHK Avenue and a generic layout of
  video files or frame folders with frame labels; checking them.
- `riad_tf.video.frames`: decoding frames in order (OpenCV for video files)
  into model inputs.
- `riad_tf.video.jobs`: training on normal videos, calibration, and
  frame-level AUROC with temporal smoothing, overall and per video (the video
  counterparts of `riad_tf.jobs`).
- `riad_tf.video.report`: the HTML report with a score plot per video.
- `edge.temporal` (numpy only): the smoothing itself, shared with the device.

Importing this package does not import TensorFlow or OpenCV.

Example:

>>> split = validate_videos(load_video_dataset("UCSDped2", "ped2"))       # doctest: +SKIP
>>> train_on_videos(RiadConfig.load("configs/ped2.yaml"), split, "runs/ped2")  # doctest: +SKIP
>>> evaluate_videos("runs/ped2", split.test)["frame_auroc"]             # doctest: +SKIP
"""

from edge.temporal import minmax_normalise, temporal_smoothing
from riad_tf.video.frames import decode_video
from riad_tf.video.jobs import (
    calibrate_videos,
    evaluate_videos,
    frame_auroc,
    holdout_clips,
    summarize_videos,
    train_on_videos,
)
from riad_tf.video.layouts import (
    VIDEO_LAYOUTS,
    Video,
    VideoSplit,
    exclude_videos,
    list_videos,
    load_avenue,
    load_ped2,
    load_video_dataset,
    load_video_folders,
    read_avenue_label_masks,
    read_label_csv,
    read_ped2_ground_truth,
    resolve_video_layout,
    validate_videos,
)

__all__ = [
    "VIDEO_LAYOUTS",
    "Video",
    "VideoSplit",
    "calibrate_videos",
    "decode_video",
    "evaluate_videos",
    "exclude_videos",
    "frame_auroc",
    "holdout_clips",
    "list_videos",
    "load_avenue",
    "load_ped2",
    "load_video_dataset",
    "load_video_folders",
    "minmax_normalise",
    "read_avenue_label_masks",
    "read_label_csv",
    "read_ped2_ground_truth",
    "resolve_video_layout",
    "summarize_videos",
    "temporal_smoothing",
    "train_on_videos",
    "validate_videos",
]
