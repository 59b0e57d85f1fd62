"""Where lines come from: frame folders, video files, a replayed image, raw binary lines, camera plug-ins.

Every source is an iterable of `LineBlock`s: a run of consecutive camera lines
`(lines, W, C)` as read, or a `BadBlock` saying what could not be used (a
corrupt file, a short read). Sources never raise on bad data in the middle of
a stream; they report it and go on. The pipeline turns blocks into frames
(`edge.stream.accumulate`).

Source specifications (`open_source(spec, ...)`, `riad-edge stream --source`):

    DIR                      every image in the folder, in natural name order
    FILE.avi|.mp4|...        a video file, frame by frame (OpenCV)
    FILE.png|.tif|... (*)    one large image replayed as a line scan, top to bottom
    raw:-                    raw lines on stdin        (needs --width, --dtype, --channels)
    raw:FILE                 raw lines from a file or a FIFO
    tcp://127.0.0.1:PORT     raw lines from a TCP socket (loopback only)
    SCHEME:ARGS              a registered camera plug-in (`register_source`, or the
                             `riad_edge.sources` entry-point group)

(*) an image file given as `--source` is replayed at `--line-rate` lines/s
(0: as fast as the pipeline takes them).

Example:

>>> source = ImageLineScan(np.zeros((100, 64), np.uint8), lines_per_block=10)
>>> [block.lines.shape for block in source][:2]
[(10, 64), (10, 64)]
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import select
import socket
import stat
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, Protocol, runtime_checkable

import numpy as np

from edge.errors import ConfigError, InputError
from edge.images import IMAGE_EXTENSIONS, ImageError, frame_files, load_image
from edge.video_files import VIDEO_EXTENSIONS, decode_video

RAW_DTYPES = ("uint8", "uint16", "float32")
POLL_S = 0.1  # a silent pipe or socket looks at interrupt() this often
BACKOFF_FIRST_S, BACKOFF_MAX_S = 0.5, 8.0  # TCP reconnection waits: first, then doubling up to
ENTRY_POINT_GROUP = "riad_edge.sources"
log = logging.getLogger(__name__)


@dataclasses.dataclass
class LineBlock:
    """Consecutive camera lines as read: `lines` `(n, W)` or `(n, W, C)`, `origin` names where from."""

    lines: np.ndarray
    origin: str = ""


@dataclasses.dataclass
class BadBlock:
    """Data that could not be used. `lines`: how many camera lines it stood for (0 if unknown)."""

    reason: str
    lines: int = 0
    origin: str = ""


@runtime_checkable
class LineSource(Protocol):
    """The plug-in interface: an iterable of `LineBlock | BadBlock` with a `close()`.

    A source whose blocks are whole frames of one height may set the class
    attribute `fixed_block_height = True`: a block of another height is then
    reported and skipped as a short or wrong-size frame.

    The pipeline iterates and closes a source in its capture thread. On
    Ctrl-C it calls the source's `interrupt()`, if it has one, from another
    thread: a source that can block waiting for data implements it to end
    its iteration soon (see `RawLines`); one that cannot is abandoned after
    the pipeline's grace period.

    A camera SDK adapter (GenICam via Harvesters, a vendor SDK) implements
    this and is registered with `register_source("scheme", factory)`; the core
    never imports it.
    """

    def __iter__(self) -> Iterator[LineBlock | BadBlock]: ...

    def close(self) -> None: ...


# ----------------------------------------------------------------------------
# Frame folders and video files


class FrameFolder:
    """The image files of a folder, in natural name order, each a block of lines.

    A file that cannot be decoded becomes a `BadBlock` standing for as many
    lines as the last good frame had.
    """

    fixed_block_height = True  # every image is a whole frame: one of another height is reported

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"{self.folder}: no such folder")
        self.files = frame_files(self.folder)
        if not self.files:
            raise InputError(f"{self.folder}: no image files ({', '.join(IMAGE_EXTENSIONS)})")

    def __iter__(self):
        last_height = 0
        for path in self.files:
            try:
                lines = load_image(path)
            except ImageError as err:
                yield BadBlock(str(err), last_height, str(path))
                continue
            last_height = len(lines)
            yield LineBlock(lines, str(path))

    def close(self) -> None:
        pass


class VideoFile:
    """A video file decoded frame by frame (`edge.video_files`); a frame that does not decode is an error."""

    fixed_block_height = True

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._frames = decode_video(self.path)

    def __iter__(self):
        for index, frame in enumerate(self._frames):
            yield LineBlock(frame, f"{self.path}#{index}")

    def close(self) -> None:
        self._frames.close()


# ----------------------------------------------------------------------------
# One large image replayed as a line scan


class ImageLineScan:
    """Replays an image (array or file) top to bottom as a line-scan camera would deliver it.

    Args:
        image: `(H, W[, C])` array, or an image file.
        line_rate: lines per second to pace the replay at (0: no pacing).
        lines_per_block: lines handed over per block (a camera's buffer).
        repeat: times to replay the image (the strip continues seamlessly).
    """

    def __init__(self, image, line_rate: float = 0.0, lines_per_block: int = 64, repeat: int = 1):
        self.origin = str(image) if isinstance(image, (str, os.PathLike)) else "array"
        self.image = load_image(image) if isinstance(image, (str, os.PathLike)) else np.asarray(image)
        if line_rate < 0 or lines_per_block < 1 or repeat < 1:
            raise ConfigError("line_rate must be >= 0, lines_per_block and repeat >= 1")
        self.line_rate = float(line_rate)
        self.lines_per_block = int(lines_per_block)
        self.repeat = int(repeat)

    def __iter__(self):
        start, sent = time.perf_counter(), 0
        for _ in range(self.repeat):
            for top in range(0, len(self.image), self.lines_per_block):
                block = self.image[top : top + self.lines_per_block]
                sent += len(block)
                if self.line_rate > 0:  # the last line of the block is due at sent / rate
                    delay = start + sent / self.line_rate - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                yield LineBlock(block, f"{self.origin}:{top}")

    def close(self) -> None:
        pass


# ----------------------------------------------------------------------------
# Raw lines from a byte stream


class RawLines:
    """Raw lines from a binary stream: `width x channels` values of `dtype` per line, row-major.

    Args:
        stream: a readable binary file object (stdin's buffer, a file, a FIFO, a socket).
        width, channels, dtype: the line format ("uint8", "uint16", "float32").
        lines_per_block: lines read per block.
        name: the stream's name for messages.
        closer: called by `close()` (None: nothing to close).
        reopen: for a source that can come back (a camera that restarts): called
            with the interrupt event when the stream ends, returns `(stream,
            closer)`, or None when interrupted; raises when it gives up.

    A short read at the end (part of a line) becomes a `BadBlock`. A stream
    with a file descriptor (a pipe, FIFO, socket or terminal) is polled, so
    `interrupt()` ends the iteration within `POLL_S` even while the sender is
    silent; Ctrl-C never waits on a blocked read. (Polling needs `select` on
    that descriptor: Linux and macOS.)
    """

    def __init__(
        self,
        stream,
        width: int,
        channels: int = 1,
        dtype: str = "uint8",
        lines_per_block: int = 64,
        name: str = "stream",
        closer=None,
        reopen=None,
    ):
        if dtype not in RAW_DTYPES:
            raise InputError(f"{name}: raw dtype must be one of {', '.join(RAW_DTYPES)}, got {dtype!r}")
        if width < 1 or channels not in (1, 3) or lines_per_block < 1:
            raise InputError(f"{name}: raw lines need width >= 1 and 1 or 3 channels, got {width} x {channels}")
        self.name, self._reopen = name, reopen
        self.width, self.channels, self.dtype = int(width), int(channels), np.dtype(dtype)
        self.line_bytes = self.width * self.channels * self.dtype.itemsize
        self.lines_per_block = int(lines_per_block)
        self._interrupted = threading.Event()
        self._attach(stream, closer)

    def _attach(self, stream, closer) -> None:
        self.stream, self._closer, self._fd = stream, closer, _pollable_fd(stream)

    def __iter__(self):
        wanted = self.line_bytes * self.lines_per_block
        offset = 0
        while not self._interrupted.is_set():
            data = self._read(wanted)
            whole = len(data) // self.line_bytes * self.line_bytes
            if whole:
                lines = np.frombuffer(data[:whole], self.dtype).reshape(-1, self.width, self.channels)
                yield LineBlock(lines, f"{self.name}@{offset}")
            if whole < len(data) and not self._interrupted.is_set():
                yield BadBlock(
                    f"{self.name}: short line at byte {offset + whole} ({len(data) - whole} of {self.line_bytes} bytes)",
                    1,
                    self.name,
                )
            offset += len(data)
            if len(data) < wanted and not self._interrupted.is_set():  # the stream ended
                if self._reopen is None or not self._reconnect():
                    return
                yield BadBlock(f"{self.name}: the stream ended at byte {offset}; reconnected", 0, self.name)

    def _reconnect(self) -> bool:
        self.close()
        reopened = self._reopen(self._interrupted)
        if reopened is not None:
            self._attach(*reopened)
        return reopened is not None

    def _read(self, size: int) -> bytes:
        """`size` bytes; fewer at the end of the stream or after `interrupt()`."""
        chunks, got = [], 0
        while got < size and not self._interrupted.is_set():
            try:
                if self._fd is None:
                    chunk = self.stream.read(size - got)
                elif select.select([self._fd], [], [], POLL_S)[0]:
                    chunk = os.read(self._fd, size - got)
                else:
                    continue  # nothing yet: look at the interrupt again
            except OSError:
                if self._reopen is None:
                    raise
                chunk = b""  # a reset connection ends like a closed one, and is reopened
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def interrupt(self) -> None:
        """Ends the iteration soon (within `POLL_S` on a silent pipe or socket); safe from another thread."""
        self._interrupted.set()

    def close(self) -> None:
        if self._closer is not None:
            self._closer()
            self._closer = None


def _pollable_fd(stream) -> int | None:
    """The descriptor to poll before reading: pipes, FIFOs, sockets, terminals; None for files and the rest."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None
    return None if stat.S_ISREG(os.fstat(fd).st_mode) else fd


def _connect(target: str, host: str, port: int, patience: float, interrupted: threading.Event | None = None):
    """A TCP connection to the camera, retried with back-off (0.5 s doubling to 8 s) for up to `patience` s.

    Returns:
        the socket, or None when `interrupted` is set while waiting.

    Raises:
        InputError: refused (or unreachable) for longer than `patience`.
    """
    delay, give_up = BACKOFF_FIRST_S, time.monotonic() + patience
    while True:
        try:
            connection = socket.create_connection((host, port), timeout=10)
            connection.settimeout(None)
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)  # a camera that lost power is noticed
            return connection
        except OSError as err:
            reason, left = err.strerror or str(err), give_up - time.monotonic()
            if left <= 0:
                tried = f" (retried for {patience:g} s)" if patience > 0 else ""
                raise InputError(f"{target}: cannot connect: {reason}{tried}") from None
            wait, delay = min(delay, left), min(2 * delay, BACKOFF_MAX_S)
            log.warning(f"{target}: {reason}; retrying in {wait:.1f} s")
            if interrupted is None:
                time.sleep(wait)
            elif interrupted.wait(wait):
                return None


def open_raw(target: str, reconnect: float = 0.0, **options) -> RawLines:
    """`-` (stdin), a file path or FIFO, or `tcp://HOST:PORT` with HOST on loopback.

    Args:
        reconnect: TCP only: seconds to keep retrying a refused or lost connection
            (a camera that restarts), with back-off; 0: a refused connection is an
            error and a closed one ends the stream.
    """
    if target == "-":
        return RawLines(sys.stdin.buffer, name="stdin", **options)
    if target.startswith("tcp://"):
        host, _, port = target[len("tcp://") :].rpartition(":")
        if host not in ("127.0.0.1", "localhost", "::1", "[::1]"):
            raise InputError(f"{target}: only loopback TCP sources are supported (127.0.0.1, localhost, ::1)")
        if not port.isdigit():
            raise InputError(f"{target}: the port must be a number")
        address = (target, host.strip("[]"), int(port), float(reconnect))

        def reopen(interrupted):
            connection = _connect(*address, interrupted)
            return None if connection is None else (connection, connection.close)

        connection = _connect(*address)
        return RawLines(
            connection, name=target, closer=connection.close, reopen=reopen if reconnect > 0 else None, **options
        )
    path = Path(target)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such raw line file")
    handle = open(path, "rb")
    return RawLines(handle, name=str(path), closer=handle.close, **options)


# ----------------------------------------------------------------------------
# Plug-ins and the source specification

_PLUGINS: dict[str, Callable[..., LineSource]] = {}


def register_source(scheme: str, factory: Callable[..., LineSource]) -> None:
    """Makes `SCHEME:ARGS` open `factory(ARGS, **options)` (a camera SDK adapter, for example)."""
    if not re.fullmatch(r"[a-z][a-z0-9+.-]*", scheme) or scheme in ("raw", "tcp"):
        raise InputError(f"{scheme!r} is not a usable source scheme")
    _PLUGINS[scheme] = factory


def _plugin(scheme: str):
    if scheme in _PLUGINS:
        return _PLUGINS[scheme]
    from importlib.metadata import entry_points

    for entry in entry_points(group=ENTRY_POINT_GROUP):
        if entry.name == scheme:
            _PLUGINS[scheme] = entry.load()
            return _PLUGINS[scheme]
    return None


def open_source(
    spec: str,
    *,
    width=None,
    channels: int = 1,
    dtype: str = "uint8",
    line_rate: float = 0.0,
    lines_per_block: int = 64,
    repeat: int = 1,
    reconnect: float = 0.0,
) -> LineSource:
    """Opens a source from its specification (see the module docstring).

    `reconnect`: seconds a TCP source keeps retrying a refused or lost connection (`open_raw`).

    Raises:
        FileNotFoundError, ValueError: a missing path or an unusable specification.
    """
    scheme, sep, rest = spec.partition(":")
    if spec.startswith("tcp://") or (sep and scheme == "raw"):
        if not width:
            raise InputError(f"{spec}: raw lines need --width (and --dtype, --channels)")
        return open_raw(
            spec if spec.startswith("tcp://") else rest,
            width=width,
            channels=channels,
            dtype=dtype,
            lines_per_block=lines_per_block,
            reconnect=reconnect,
        )
    if sep and len(scheme) > 1 and not Path(spec).exists():
        factory = _plugin(scheme)
        if factory is None:
            raise InputError(f"{spec}: no source plug-in registered for {scheme!r}")
        return factory(
            rest, width=width, channels=channels, dtype=dtype, line_rate=line_rate, lines_per_block=lines_per_block
        )
    path = Path(spec)
    if path.is_dir():
        return FrameFolder(path)
    if path.suffix.lower() in VIDEO_EXTENSIONS:
        return VideoFile(path)
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such image file")
        return ImageLineScan(path, line_rate=line_rate, lines_per_block=lines_per_block, repeat=repeat)
    raise InputError(f"{spec}: not a folder, video, image, raw:TARGET, tcp://127.0.0.1:PORT or registered plug-in")
