"""What both command lines (`riad-tf`, `riad-edge`) share: errors, logging, and the options named alike.

Example:

>>> int_list("1, 4,8")
(1, 4, 8)
"""

from __future__ import annotations

import functools
import json
import logging
import math
import sys
from typing import Iterable, Sequence

import click

from edge.errors import InputError, OutputError, RiadError, one_line


class FiniteFloat(click.FloatRange):
    """A click float option that is a finite number within [min, max] (click's FloatRange lets NaN through).

    Example:

    >>> FiniteFloat(min=0).convert("2.5", None, None)
    2.5
    >>> FiniteFloat().convert("nan", None, None)
    Traceback (most recent call last):
    ...
    click.exceptions.BadParameter: nan is not a finite number.
    """

    name = "finite float"

    def convert(self, value, param, ctx):
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value} is not a finite number.", param, ctx)
        return super().convert(number, param, ctx)


POSITIVE_INT = click.IntRange(min=1)


class _OneLineError(click.ClickException):
    """A user-facing failure as click prints it ("Error: ..."), with the exit status of its kind."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def friendly_errors(command):
    r"""A decorator turning the errors a user can act on into one line and the exit status of their kind.

    `edge.errors.RiadError` (and the errors built on it) keeps its `exit_code`;
    a missing file exits 3, any other `OSError` (a read-only folder, a full
    disk) exits 5. Anything else is a bug: it keeps its traceback.

    Example:

    >>> from edge.errors import ConfigError
    >>> @friendly_errors
    ... def command():
    ...     raise ConfigError("epochs: must be at least 1, got 0\nmore detail")
    >>> try:
    ...     command()
    ... except click.ClickException as err:
    ...     print(err.exit_code, err.message)
    4 epochs: must be at least 1, got 0
    """

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except RiadError as err:
            raise _OneLineError(one_line(err), err.exit_code) from None
        except FileNotFoundError as err:
            raise _OneLineError(os_error_line(err), InputError.exit_code) from None
        except OSError as err:
            raise _OneLineError(os_error_line(err), OutputError.exit_code) from None

    return wrapper


def os_error_line(err: OSError) -> str:
    """An operating-system error as the other errors read: `FILE: reason`, with both files of a rename.

    Example:

    >>> os_error_line(PermissionError(13, "Permission denied", "/srv/runs/a/model.keras"))
    '/srv/runs/a/model.keras: Permission denied'
    """
    if err.filename is None:
        return one_line(err)
    target = f" -> {err.filename2}" if err.filename2 is not None else ""
    return f"{err.filename}{target}: {err.strerror or one_line(err)}"


def bundled_options(name: str, options: Sequence[tuple[tuple[str, ...], dict]]):
    """A decorator adding click options whose values reach the command as one dict, `name`.

    Args:
        name: the command's parameter that receives `{option name: value}`.
        options: `(declarations, attributes)` of each option, as `click.option` takes them.

    Example:

    >>> @click.command()
    ... @bundled_options("runtime", [(("--threads",), {"type": int})])
    ... def command(runtime):
    ...     print(runtime)
    >>> command(["--threads", "2"], standalone_mode=False)
    {'threads': 2}
    """
    keys = [click.Option(list(declarations), **attributes).name for declarations, attributes in options]

    def decorate(command):
        @functools.wraps(command)
        def with_bundle(*args, **kwargs):
            return command(*args, **{name: {key: kwargs.pop(key) for key in keys}}, **kwargs)

        for declarations, attributes in reversed(options):
            with_bundle = click.option(*declarations, **attributes)(with_bundle)
        return with_bundle

    return decorate


def int_list(text: str | None, *, positive: bool = False, what: str = "integers") -> tuple[int, ...]:
    """Parses a comma-separated list such as "1,4,8" (empty or None: an empty tuple).

    Raises:
        click.BadParameter: not a list of integers, or (with `positive`) a value below 1.
    """
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip()) if text else ()
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of {what}") from None
    if positive and (not values or min(values) < 1):
        raise click.BadParameter(f"{text!r}: give positive {what} such as 1,4")
    return values


def size_mode_options(command):
    """`--tile` / `--resize`: what to do with an input whose size differs from the training images'."""
    command = click.option(
        "--resize", is_flag=True, help="Squeeze inputs of another size to the model's input (distorts them)."
    )(command)
    return click.option(
        "--tile",
        is_flag=True,
        help="Inspect inputs of another size in model-size tiles at the training scale "
        "(a model trained at a scale tiles every input).",
    )(command)


def size_mode(tile: bool, resize: bool) -> str:
    """The `edge.inspection` size mode of the two flags."""
    if tile and resize:
        raise click.UsageError("give --tile or --resize, not both")
    return "tile" if tile else "resize" if resize else "strict"


def echo_records(records: Iterable[dict]) -> None:
    """Prints one JSON line per record; exits with status 1 at the end if any record is an error."""
    failed = 0
    for record in records:
        click.echo(json.dumps(record, allow_nan=False))
        failed += "error" in record
    if failed:
        raise click.ClickException(f"{failed} image(s) could not be scored (see their error records)")


def verbosity_options(command):
    """`-v/--verbose` (repeatable) and `-q/--quiet`, for a CLI's group: see `setup_logging`."""
    command = click.option("-q", "--quiet", is_flag=True, help="Warnings and errors only.")(command)
    return click.option(
        "-v", "--verbose", count=True, help="More detail; -v also shows the runtimes' own start-up messages."
    )(command)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a message comes (test runners swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def setup_logging(verbose: int = 0, quiet: bool = False) -> int:
    """Human messages of `riad_tf` and `edge` go to stderr as plain lines; returns the level set.

    Machine output (JSON) is the only thing a command writes to stdout, so
    `riad-tf demo | jq` and `riad-edge infer ... > records.jsonl` work.
    """
    level = logging.WARNING if quiet else logging.DEBUG if verbose > 1 else logging.INFO
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.set_name("riad-cli")
    for name in ("riad_tf", "edge"):
        logger = logging.getLogger(name)
        logger.handlers = [h for h in logger.handlers if h.get_name() != "riad-cli"] + [handler]
        logger.setLevel(level)
        logger.propagate = False
    return level


def map_options(command):
    """`--maps-dir DIR` and `--float-maps`: where the anomaly maps go (`edge.predictions.MapNames`)."""
    command = click.option(
        "--float-maps", is_flag=True, help="Also write each map as float32 NAME_map.npy beside the PNG."
    )(command)
    return click.option("--maps-dir", type=click.Path(file_okay=False), help="Write NAME_map.png anomaly maps here.")(
        command
    )
