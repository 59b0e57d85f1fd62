"""Lines in, frames out: a fixed-height window over the strip that slides with overlap.

A frame holds `height` consecutive lines; the next frame starts `height -
overlap` lines later, so `overlap` lines are seen twice and a defect on a
frame border is whole in at least one frame when it is shorter than the
overlap. Lines are counted from 0 at the start of the stream: a frame's
`first_line` is its position in the strip.

Blocks that cannot be used (`BadBlock`, a wrong width, channels or dtype,
non-finite values, a frame of the wrong height from a frame source) are
counted in `bad_blocks`, reported in `faults`, and skipped. The lines they
stood for still advance the line counter, so later coordinates stay true; the
frame in progress is cut short there (`Frame.partial`).

Example:

>>> acc = FrameAccumulator(height=8, overlap=2)
>>> frames = acc.push(LineBlock(np.zeros((20, 16), np.uint8)), now=0.0) + acc.flush(now=0.0)
>>> [(f.first_line, len(f.image)) for f in frames]
[(0, 8), (6, 8), (12, 8)]
"""

from __future__ import annotations

import dataclasses
from collections import deque

import numpy as np

from edge.errors import ConfigError
from edge.images import ImageError, as_unit_float
from edge.stream.sources import BadBlock, LineBlock

MAX_FAULTS_KEPT = 100


@dataclasses.dataclass
class Frame:
    """`image` `(h, W, C)` float32 in [0, 1], lines `first_line .. first_line + h - 1` of the strip.

    `next_start`: the first line a later frame can start at (lines before it
    are final once this frame is scored). `ready`: `time.perf_counter()` when
    its last line arrived.
    """

    index: int
    first_line: int
    image: np.ndarray
    next_start: int
    ready: float
    partial: bool = False

    @property
    def last_line(self) -> int:
        return self.first_line + len(self.image) - 1


class FrameAccumulator:
    """Collects lines into frames of `height` lines overlapping by `overlap`.

    Args:
        height: lines per frame.
        overlap: lines shared by consecutive frames, `0 <= overlap < height`.
        width: expected line width (None: taken from the first good block).
        fixed_block_height: blocks are whole frames of one height (frame
            folders, video): the first good block sets it, others are rejected.

    Memory: one frame buffer of `height x width x C` float32.
    """

    def __init__(self, height: int, overlap: int = 0, width: int | None = None, fixed_block_height: bool = False):
        if height < 1 or not 0 <= overlap < height:
            raise ConfigError(f"frame height must be >= 1 and 0 <= overlap < height, got {height} and {overlap}")
        self.height, self.overlap, self.width = int(height), int(overlap), width
        self.fixed_block_height = fixed_block_height
        self.block_height: int | None = None
        self.channels: int | None = None
        self.lines_seen = 0  # strip lines accounted for, good or bad
        self.bad_blocks = 0
        self.faults: deque[str] = deque(maxlen=MAX_FAULTS_KEPT)
        self._buffer: np.ndarray | None = None
        self._filled = 0  # lines in the buffer
        self._fresh = 0  # of those, lines not yet in an emitted frame
        self._first_line = 0  # strip line of buffer row 0
        self._frames = 0

    # ------------------------------------------------------------------

    def push(self, block: LineBlock | BadBlock, now: float) -> list[Frame]:
        """Adds a block; returns the frames it completed (possibly a cut-short one on bad data)."""
        lines, reason = self._check(block)
        if reason is not None:
            return self._skip(reason, block, now)
        frames, row = [], 0
        while row < len(lines):
            take = min(len(lines) - row, self.height - self._filled)
            self._buffer[self._filled : self._filled + take] = lines[row : row + take]
            self._filled += take
            self._fresh += take
            row += take
            if self._filled == self.height:  # emitted as soon as its last line is in
                frames.append(self._emit(now))
                self._slide()
        self.lines_seen += len(lines)
        return frames

    def flush(self, now: float) -> list[Frame]:
        """End of input: the lines not yet in a frame, as a last (shorter) frame."""
        frames = [self._emit(now, partial=True)] if self._fresh > 0 else []
        self._restart()
        return frames

    # ------------------------------------------------------------------

    def _check(self, block) -> tuple[np.ndarray | None, str | None]:
        if isinstance(block, BadBlock):
            return None, block.reason
        origin = block.origin or "block"
        try:
            lines = as_unit_float(block.lines)
        except ImageError as err:
            return None, f"{origin}: {err}"
        if len(lines) == 0:
            return None, f"{origin}: no lines"
        if self.width is None:
            self.width = lines.shape[1]
        if self.channels is None:
            self.channels = lines.shape[2]
        if lines.shape[1] != self.width:
            return None, f"{origin}: line width {lines.shape[1]}, expected {self.width}"
        if lines.shape[2] != self.channels:
            return None, f"{origin}: {lines.shape[2]} channels, expected {self.channels}"
        if self.fixed_block_height:
            self.block_height = self.block_height or len(lines)
            if len(lines) != self.block_height:
                return None, f"{origin}: frame of {len(lines)} lines, expected {self.block_height}"
        if not np.isfinite(lines).all():
            return None, f"{origin}: non-finite values"
        if self._buffer is None:
            self._buffer = np.zeros((self.height, self.width, self.channels), np.float32)
        return lines, None

    def _skip(self, reason: str, block, now: float) -> list[Frame]:
        self.bad_blocks += 1
        self.faults.append(reason)
        if self.fixed_block_height and self.block_height:
            skipped = self.block_height  # a frame source lost one whole frame, whatever came instead
        else:
            skipped = block.lines if isinstance(block, BadBlock) else len(block.lines)
        frames = self.flush(now)  # the frame in progress ends where the bad data starts
        self.lines_seen += skipped
        self._first_line = self.lines_seen
        return frames

    def _emit(self, now: float, partial: bool = False) -> Frame:
        step = self.height - self.overlap if not partial else self._filled
        frame = Frame(
            self._frames, self._first_line, self._buffer[: self._filled].copy(), self._first_line + step, now, partial
        )
        self._frames += 1
        self._fresh = 0
        return frame

    def _slide(self) -> None:
        """Keeps the last `overlap` lines at the top of the buffer."""
        if self.overlap:
            self._buffer[: self.overlap] = self._buffer[self.height - self.overlap : self.height]
        self._first_line += self.height - self.overlap
        self._filled = self.overlap

    def _restart(self) -> None:
        self._filled = self._fresh = 0
        self._first_line = self.lines_seen
