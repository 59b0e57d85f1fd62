"""Line-scan inspection on the device: lines in, defects with strip coordinates out (docs/linescan.md).

No TensorFlow or Keras here: numpy, OpenCV (connected components, video) and
Pillow, around any backend of `edge.runner.Runner`.

Example:

>>> from edge.runner import Runner                                          # doctest: +SKIP
>>> from edge.stream import JsonLines, StreamPipeline, StreamSettings, open_source   # doctest: +SKIP
>>> pipeline = StreamPipeline(Runner.open("riad.onnx"), StreamSettings(frame_height=128, overlap=16))  # doctest: +SKIP
>>> pipeline.run(open_source("strip.png", line_rate=20000), JsonLines("-"))  # doctest: +SKIP
"""

from edge.regions import Region, RegionTracker, box_iou, connected_regions
from edge.stream.accumulate import Frame, FrameAccumulator
from edge.stream.output import JsonLines, LatencyStats, write_overlay
from edge.stream.pipeline import POLICIES, StreamPipeline, StreamSettings, stop_signals
from edge.stream.scorer import FrameScorer, ScoredFrame
from edge.stream.sources import (
    BadBlock,
    FrameFolder,
    ImageLineScan,
    LineBlock,
    LineSource,
    RawLines,
    VideoFile,
    open_source,
    register_source,
)
from edge.stream.stitch import StripStitcher
from edge.tiling import cut_tiles, tile_starts, tile_sums

__all__ = [
    "BadBlock",
    "Frame",
    "FrameAccumulator",
    "FrameFolder",
    "FrameScorer",
    "ImageLineScan",
    "JsonLines",
    "LatencyStats",
    "LineBlock",
    "LineSource",
    "POLICIES",
    "RawLines",
    "Region",
    "RegionTracker",
    "ScoredFrame",
    "StreamPipeline",
    "StreamSettings",
    "stop_signals",
    "StripStitcher",
    "VideoFile",
    "box_iou",
    "connected_regions",
    "cut_tiles",
    "open_source",
    "register_source",
    "tile_starts",
    "tile_sums",
    "write_overlay",
]
