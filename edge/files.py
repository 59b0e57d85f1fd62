r"""Atomic file writes: a reader sees the old file or the whole new one, never half of it.

Every output of riad-tf and riad-edge (models, metadata, maps, reports, CSVs)
is written to a temporary file beside its target and renamed into place; an
interrupted write leaves the previous file untouched and no temporary behind.

Example:

>>> with atomic_path("out/scores.csv") as tmp:         # doctest: +SKIP
...     Path(tmp).write_text("frame,score\n")
>>> atomic_write_bytes("out/model.onnx", data)         # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from edge.errors import OutputError

_UMASK = os.umask(0)
os.umask(_UMASK)  # read once: the mode a plain open() would give new files


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[str]:
    """Yields a temporary file name beside `path`; renames it to `path` when the block succeeds.

    Args:
        path: the final file; its folder is created.
        suffix: the temporary name's ending, for writers that choose the
            format by extension (Keras needs ".keras").

    Yields:
        The temporary file's name (the file exists and is empty).

    Raises:
        OutputError: the file cannot be written (a full disk, no permission),
            naming `path`; the previous file is left as it was.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    except OSError as err:
        raise OutputError(f"{path}: cannot write: {err.strerror or err}") from None
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; others (a device service, a web server) must read outputs
        os.replace(tmp, path)
    except OutputError:
        Path(tmp).unlink(missing_ok=True)
        raise
    except OSError as err:  # a full disk, a folder gone: the line names the file, the old one stays
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"{path}: cannot write: {err.strerror or err}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary folder beside `folder`; it replaces `folder` whole when the block succeeds.

    A reader sees the old folder (or none) or the whole new one: a report
    that fails half-way (a full disk) leaves the previous report as it was.

    Raises:
        OutputError: the folder cannot be written, naming it.
    """
    folder = Path(folder)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    except OSError as err:
        raise OutputError(f"{folder}: cannot write: {err.strerror or err}") from None
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_UMASK)
        old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OutputError):  # it names a file inside the temporary folder: name the final one
            raise OutputError(str(err).replace(str(tmp), str(folder))) from None
        if isinstance(err, OSError):
            raise OutputError(f"{folder}: cannot write: {err.strerror or err}") from None
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Writes `data` to `path` atomically; returns the path."""
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Writes `text` (UTF-8) to `path` atomically; returns the path."""
    return atomic_write_bytes(path, text.encode())


def open_own_file(path: str | os.PathLike, fresh: bool = False, append: bool = False):
    """Opens `path` for reading and writing (binary, unbuffered) without following a symbolic link there.

    A file in a shared folder (a run's `.lock`, a stream's `.partial`) must
    not be a link someone planted to make us truncate or fill another file.

    Args:
        path: the file; created (mode 0666 less the umask) when missing.
        fresh: start a new, empty file: whatever is at `path` (a stale file or
            a link) is removed first, and the new one is created exclusively.
        append: every write goes to the file's end (O_APPEND), as a log's lines must.

    Returns:
        A binary file object opened "r+b", unbuffered.

    Raises:
        OutputError: `path` is a symbolic link (without `fresh`), or cannot be opened.
    """
    path = Path(path)
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | (os.O_APPEND if append else 0)
    try:
        if fresh:
            path.unlink(missing_ok=True)  # removes a link itself, never its target
            flags |= os.O_EXCL
        fd = os.open(path, flags, 0o666)
    except OSError as err:
        if path.is_symlink():
            raise OutputError(f"{path}: is a symbolic link; refusing to write through it (remove it)") from None
        raise OutputError(f"{path}: cannot open: {err.strerror or err}") from None
    return os.fdopen(fd, "r+b", buffering=0)


def check_writable(folder: str | os.PathLike, need_bytes: int = 0, purpose: str = "this") -> None:
    """Checks before long work that `folder` can be created and written and has `need_bytes` free.

    Args:
        folder: the output folder (created when missing).
        need_bytes: free space wanted.
        purpose: what needs the space, for the message ("training this model").

    Raises:
        OutputError: one line naming the folder and the problem.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-") as probe:  # unique: runs may start together
            probe.write(b"ok")
            probe.flush()
    except OSError as err:
        raise OutputError(f"{folder}: cannot write here: {err.strerror or err}") from None
    free = shutil.disk_usage(folder).free
    if free < need_bytes:
        raise OutputError(f"{folder}: {free / 2**20:.0f} MiB free, {purpose} needs about {need_bytes / 2**20:.0f} MiB")


def unique_name(name_for: Callable[[int], str], used: set[str], casefold: bool = False) -> str:
    """The first of `name_for(1)`, `name_for(2)`, ... not in `used` (lower-cased with `casefold`); adds it there.

    Example:

    >>> used = set()
    >>> [unique_name(lambda i: "a" if i == 1 else f"a_{i}", used) for _ in range(3)]
    ['a', 'a_2', 'a_3']
    """
    index = 1
    while (key := name_for(index).lower() if casefold else name_for(index)) in used:
        index += 1
    used.add(key)
    return name_for(index)
