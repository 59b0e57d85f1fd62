"""The continuous inspection loop: capture -> inference -> output, three threads, bounded queues.

    capture thread      source blocks -> FrameAccumulator -> frames queue (maxsize)
    inference thread    frames queue -> FrameScorer (tiles of up to `batch_frames` frames at once) -> results queue
    output (caller)     results -> StripStitcher -> RegionTracker -> JSON lines, overlays, latency

When inference is slower than the camera, the frames queue fills up and the
`policy` decides: "block" holds the capture back (nothing is lost; a real
camera's own buffer then overflows), "drop" drops the new frame and counts
it (`frames_dropped`; its lines are not inspected). Memory is bounded by the
queue sizes, one frame buffer, the stitcher's frame-height rows and the
region tracker's `max_open_lines`.

Latency is measured from the arrival of a frame's last line to its JSON line
being written. Bad data never stops the stream (see `edge.stream.accumulate`);
the end of the input or Ctrl-C (KeyboardInterrupt) flushes the last frame,
the open regions, the outputs and the summary.

Example:

>>> pipeline = StreamPipeline(Runner.open("riad.onnx"), StreamSettings(frame_height=256, overlap=32))  # doctest: +SKIP
>>> summary = pipeline.run(open_source("strip.png"), JsonLines("out.jsonl"))                          # doctest: +SKIP
>>> summary["lines_per_s"], summary["defects"]                                                       # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import queue
import signal
import threading
import time
from collections import deque
from typing import Iterator

from edge.errors import ConfigError, InputError, RiadError, one_line
from edge.regions import RegionTracker
from edge.stream.accumulate import FrameAccumulator
from edge.stream.output import LatencyStats, write_overlay
from edge.stream.scorer import FrameScorer, ScoredFrame
from edge.stream.stitch import StripStitcher

log = logging.getLogger(__name__)
PROGRESS_EVERY_S = 5.0  # a progress line on stderr this often

POLICIES = ("block", "drop")
_END = object()
STOP_GRACE_S = 1.5  # Ctrl-C: the most time left for the frames in flight (a stuck source is abandoned)


@dataclasses.dataclass(frozen=True)
class StreamSettings:
    """How the stream is cut, scored and judged.

    Args:
        frame_height: lines per frame; None: about `DEFAULT_FRAME_LINES`, fitted
            to the tile grid (`frame_geometry`).
        overlap: lines shared by consecutive frames; None: a tile less one
            stride, so consecutive frames continue one grid of tiles and the
            strip map is the map `riad-edge infer` stitches for the same strip.
        stride: (rows, columns) between tiles, in model pixels; None: the
            model's `tile_stride` (half a tile).
        queue_size: frames waiting for inference, at most (and results waiting for output).
        policy: "block" or "drop" when the frames queue is full.
        batch_frames: most frames whose tiles go through the model together.
        pixel_threshold: the region threshold; None: the model metadata's calibrated one (`edge.verdicts`).
        image_threshold: overrides the calibrated threshold as `riad-edge infer --image-threshold`
            does (image and region threshold are one value); give at most one of the two.
        min_pixels: smaller regions are not reported; None: the metadata's `min_region_area`.
        max_open_lines: see `RegionTracker`.
        overlay_dir: where to write overlay PNGs of defective frames (None: none).
    """

    frame_height: int | None = None
    overlap: int | None = None
    stride: tuple[int, int] | None = None
    queue_size: int = 8
    policy: str = "block"
    batch_frames: int = 4
    pixel_threshold: float | None = None
    image_threshold: float | None = None
    min_pixels: int | None = None
    max_open_lines: int = 4096
    overlay_dir: str | None = None

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise ConfigError(f"policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        if self.queue_size < 1 or self.batch_frames < 1:
            raise ConfigError("queue_size and batch_frames must be >= 1")
        if self.pixel_threshold is not None and self.image_threshold is not None:
            raise ConfigError("give the pixel threshold or the image threshold, not both: they are one threshold")


DEFAULT_FRAME_LINES = 256


def frame_geometry(
    frame_height: int | None, overlap: int | None, tile: int, stride: int, scale: float
) -> tuple[int, int]:
    """(frame height, overlap) in camera lines: the given ones, or ones that continue one grid of tiles.

    With the defaults, frames step by a whole number of tile strides and
    overlap by a tile less one stride (at the model's scale `scale`), so the
    tiles of consecutive frames are the tiles `riad-edge infer` cuts from the
    whole strip, each once.

    Example:

    >>> frame_geometry(None, None, tile=128, stride=64, scale=1.0)
    (256, 64)
    >>> frame_geometry(None, None, tile=128, stride=64, scale=0.5)
    (256, 128)
    """
    if overlap is None:
        overlap = round((tile - stride) / scale)
        if frame_height is not None:
            overlap = min(overlap, frame_height // 2)
    if frame_height is None:
        steps = max(1, round((DEFAULT_FRAME_LINES - overlap) * scale / stride))
        frame_height = overlap + round(steps * stride / scale)
    return int(frame_height), int(overlap)


def _thresholds(runner, settings: StreamSettings) -> tuple[float, int]:
    """(the region threshold, the smallest region) in force: the settings', else the metadata's."""
    known = getattr(runner, "thresholds", None) or {}
    pixel = next(
        (t for t in (settings.image_threshold, settings.pixel_threshold, known.get("region")) if t is not None), None
    )
    if pixel is None:
        raise InputError("no region threshold: the model metadata has none; give --pixel-threshold")
    area = settings.min_pixels if settings.min_pixels is not None else int(known.get("min_region_area", 1) or 1)
    return float(pixel), area


class StreamPipeline:
    """Runs a source through a runner until the input ends or Ctrl-C.

    Args:
        runner: an `edge.runner.Runner` (any backend) or a look-alike.
        settings: `StreamSettings`.
    """

    def __init__(self, runner, settings: StreamSettings = StreamSettings()):
        self.runner, self.settings = runner, settings
        self.pixel_threshold, self.min_pixels = _thresholds(runner, settings)
        self.scorer = FrameScorer(runner, settings.stride)
        self.frame_height, self.overlap = frame_geometry(
            settings.frame_height,
            settings.overlap,
            self.scorer.tile_size[0],
            self.scorer.stride[0],
            self.scorer.scale[0],
        )
        self._stop = threading.Event()
        self._frames: queue.Queue = queue.Queue(maxsize=settings.queue_size)
        self._results: queue.Queue = queue.Queue(maxsize=settings.queue_size)
        self._faults: deque = deque(maxlen=1000)
        self._errors: list[BaseException] = []
        self.frames_dropped = 0
        self.accumulator: FrameAccumulator | None = None
        self._source = None

    def stop(self) -> None:
        """Asks the capture to end; the pipeline then flushes and returns (also what Ctrl-C does)."""
        self._stop.set()
        interrupt = getattr(self._source, "interrupt", None)
        if interrupt is not None:
            interrupt()

    # ------------------------------------------------------------------
    # Capture and inference threads

    def _capture(self, source) -> None:
        accumulator = self.accumulator
        try:
            for block in source:
                now = time.perf_counter()
                bad_before = accumulator.bad_blocks
                frames = accumulator.push(block, now)
                if accumulator.bad_blocks != bad_before:
                    self._faults.append(accumulator.faults[-1])
                for frame in frames:
                    self._offer(frame)
                if self._stop.is_set():
                    break
        except Exception as err:  # a source that fails outright ends the stream, reported
            self._faults.append(f"source failed: {str(err).splitlines()[0] if str(err) else repr(err)}")
            if isinstance(err, RiadError):  # a clear end (a camera that never came back): a non-zero exit too
                self._errors.append(err)
        finally:
            try:
                _close(source)  # here, not in the output thread: a source is used by one thread only
            except Exception as err:
                self._faults.append(f"closing the source failed: {one_line(err)}")
            for frame in accumulator.flush(time.perf_counter()):
                self._offer(frame, force=True)
            self._frames.put(_END)

    def _offer(self, frame, force: bool = False) -> None:
        if self.settings.policy == "block" or force:
            self._frames.put(frame)
            return
        try:
            self._frames.put_nowait(frame)
        except queue.Full:
            self.frames_dropped += 1

    def _infer(self) -> None:
        try:
            while True:
                batch = [self._frames.get()]
                while batch[-1] is not _END and len(batch) < self.settings.batch_frames:
                    try:
                        batch.append(self._frames.get_nowait())
                    except queue.Empty:
                        break
                frames = [f for f in batch if f is not _END]
                if frames:
                    for scored in self.scorer.score(frames):
                        self._results.put(scored)
                if batch[-1] is _END:
                    break
        except BaseException as err:
            self._errors.append(err)
            self.stop()  # interrupts a source waiting for data too
            self._drain_frames()
        finally:
            self._results.put(_END)

    def _drain_frames(self) -> None:
        """After an inference failure: empty the frames queue until the capture ends."""
        while True:
            item = self._frames.get()
            if item is _END:
                return

    # ------------------------------------------------------------------
    # Output (the calling thread)

    def run(self, source, writer) -> dict:
        """Inspects the whole source; writes records to `writer` (`.write(dict)`); returns the summary.

        The summary is also written as the last record. Ctrl-C ends the
        stream early, with everything flushed (`"interrupted": true`), within
        `STOP_GRACE_S` whatever the source is doing. The source is closed by
        the capture thread when it ends.

        Raises:
            the runner's error, after the summary is written, if inference failed
            (or the source's own `RiadError`, such as a camera that never reconnected);
            the writer's error (a full disk: `edge.errors.OutputError`), at once.
        """
        self._source = source
        fixed = bool(getattr(source, "fixed_block_height", False))
        self.accumulator = FrameAccumulator(self.frame_height, self.overlap, fixed_block_height=fixed)
        state = _OutputState(self)
        started = time.perf_counter()
        threads = [
            threading.Thread(target=self._capture, args=(source,), daemon=True, name="capture"),
            threading.Thread(target=self._infer, daemon=True, name="inference"),
        ]
        for thread in threads:
            thread.start()
        interrupted = False
        try:
            self._consume(state, writer)
        except KeyboardInterrupt:
            interrupted = True
            self.stop()
            try:
                self._consume(state, writer, deadline=time.perf_counter() + STOP_GRACE_S)
            except KeyboardInterrupt:
                pass
        except BaseException:  # the output failed (a full disk): the capture stops, the error goes up
            self.stop()
            threading.Thread(target=self._discard_results, daemon=True, name="discard").start()
            # Let a model call in progress return before the interpreter exits: a runtime's thread
            # killed inside native code at exit can abort the process (seen as exit 134, not 5).
            for thread in threads:
                thread.join(timeout=STOP_GRACE_S)
            raise
        state.finish(writer)
        summary = state.summary(time.perf_counter() - started, interrupted)
        writer.write(summary)
        if self._errors:
            raise self._errors[0]
        return summary

    def _consume(self, state: "_OutputState", writer, deadline: float | None = None) -> None:
        while True:
            self._write_faults(writer)
            if deadline is not None and time.perf_counter() > deadline:
                return
            try:
                item = self._results.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is _END:
                self._write_faults(writer)
                return
            state.emit(item, writer)

    def _discard_results(self) -> None:
        """After an output failure: empty the results queue so that inference and capture can end."""
        while self._results.get() is not _END:
            pass

    def _write_faults(self, writer) -> None:
        while self._faults:
            writer.write({"type": "fault", "time": round(time.time(), 6), "reason": self._faults.popleft()})


@contextlib.contextmanager
def stop_signals() -> Iterator[None]:
    """Within the block, SIGTERM (a service manager stopping the stream) acts as Ctrl-C does.

    A SIGINT that the shell set to be ignored (a background job) is heard again. Main thread only.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    for number in previous:
        signal.signal(number, _interrupt)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _interrupt(number, frame) -> None:
    raise KeyboardInterrupt(signal.Signals(number).name)


def _close(source) -> None:
    close = getattr(source, "close", None)
    if close is not None:
        close()


class _OutputState:
    """Stitcher, region tracker and counters of the output side."""

    def __init__(self, pipeline: StreamPipeline):
        self.pipeline = pipeline
        self.settings = pipeline.settings
        self.stitcher: StripStitcher | None = None
        self.tracker = RegionTracker(pipeline.pixel_threshold, pipeline.min_pixels, self.settings.max_open_lines)
        self.latency = LatencyStats()
        self.frames = self.defects = self.defective_frames = self.lines_inspected = 0
        self.started = self.reported = time.perf_counter()

    def emit(self, scored: ScoredFrame, writer) -> None:
        frame = scored.frame
        if self.stitcher is None:
            self.stitcher = StripStitcher(frame.image.shape[1])
        first_row, rows, covered = self.stitcher.add(frame.first_line, scored.total, scored.count, frame.next_start)
        self.lines_inspected += int(covered.sum())
        regions = self.tracker.add(first_row, rows)
        self.defects += len(regions)
        # The verdict is the regions' (edge.verdicts): a frame is anomalous when a region of the stitched map
        # closed in it, as an image is when its stitched map has one.
        anomalous = bool(regions)
        row, col = scored.worst_tile
        record = {
            "type": "frame",
            "frame": frame.index,
            "time": round(time.time(), 6),
            "lines": [frame.first_line, frame.last_line],
            "final_lines": [first_row, first_row + len(rows) - 1],
            "score": round(float(rows.max() if rows.size else scored.mean_map.max()), 6),
            "tile": {"line": frame.first_line + row, "column": col, "score": round(scored.score, 6)},
            "anomalous": anomalous,
            "regions": [r.to_dict() for r in regions],
            "partial": frame.partial,
        }
        if anomalous:
            self.defective_frames += 1
            if self.settings.overlay_dir:
                record["overlay"] = str(self._overlay(scored, regions))
        record["latency_ms"] = round((time.perf_counter() - frame.ready) * 1e3, 3)
        writer.write(record)
        self.latency.add(time.perf_counter() - frame.ready)
        self.frames += 1
        self._progress()

    def _progress(self) -> None:
        now = time.perf_counter()
        if now - self.reported >= PROGRESS_EVERY_S:
            self.reported = now
            lines = self.pipeline.accumulator.lines_seen
            log.info(
                f"stream: {self.frames} frames, {lines} lines ({lines / (now - self.started):.0f} lines/s), "
                f"{self.defective_frames} anomalous frames, {self.defects} regions"
            )

    def _overlay(self, scored: ScoredFrame, regions):
        frame = scored.frame
        boxes = [(r.top - frame.first_line, r.left, r.bottom - frame.first_line, r.right) for r in regions]
        anomalous = scored.mean_map > self.pipeline.pixel_threshold
        path = f"{self.settings.overlay_dir}/frame_{frame.index:06d}_lines_{frame.first_line}-{frame.last_line}.png"
        return write_overlay(path, frame.image, anomalous, boxes)

    def finish(self, writer) -> None:
        """End of stream: the rows still held and the regions still open."""
        if self.stitcher is None:
            return
        first_row, rows, covered = self.stitcher.flush()
        self.lines_inspected += int(covered.sum())
        regions = self.tracker.add(first_row, rows) + self.tracker.flush()
        if regions:
            self.defects += len(regions)
            writer.write({"type": "regions", "time": round(time.time(), 6), "regions": [r.to_dict() for r in regions]})

    def _promise(self) -> float | None:
        """The calibration's false alarms per 1000 lines of good product (docs/method.md, "Thresholds").

        None for a model not calibrated at a scale, or a threshold given on the command line.
        """
        if self.settings.pixel_threshold is not None or self.settings.image_threshold is not None:
            return None
        return (getattr(self.pipeline.runner, "thresholds", None) or {}).get("false_alarms_per_1000_lines")

    def summary(self, seconds: float, interrupted: bool) -> dict:
        pipeline = self.pipeline
        accumulator = pipeline.accumulator
        session = getattr(pipeline.runner, "session", None)
        return {
            "type": "summary",
            "lines": accumulator.lines_seen,
            "lines_inspected": self.lines_inspected,
            "width": accumulator.width,
            "frames": self.frames,
            "frames_dropped": pipeline.frames_dropped,
            "bad_blocks": accumulator.bad_blocks,
            "defects": self.defects,
            "defective_frames": self.defective_frames,
            "seconds": round(seconds, 3),
            "lines_per_s": round(accumulator.lines_seen / seconds, 1) if seconds > 0 else None,
            "latency": self.latency.summary(),
            "pixel_threshold": pipeline.pixel_threshold,
            "promised_false_alarms_per_1000_lines": self._promise(),
            "min_pixels": pipeline.min_pixels,
            "frame_height": pipeline.frame_height,
            "overlap": pipeline.overlap,
            "scale": list(pipeline.scorer.scale),
            "stride": list(pipeline.scorer.stride),
            "policy": self.settings.policy,
            "backend": getattr(session, "backend", None),
            "interrupted": interrupted,
            "error": str(pipeline._errors[0]).splitlines()[0]
            if pipeline._errors and str(pipeline._errors[0])
            else None,
        }
