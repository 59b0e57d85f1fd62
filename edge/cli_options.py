"""What both command lines (`riad-tf`, `riad-edge`) share: the one-line error wrapper and list options.

Example:

>>> int_list("1, 4,8")
(1, 4, 8)
"""

from __future__ import annotations

import functools
import json
from typing import Callable, Iterable

import click


def friendly_errors(expected: Callable[[], tuple[type[BaseException], ...]] = tuple):
    """A decorator turning expected failures into a one-line error and exit status 1.

    `ValueError` and `FileNotFoundError` are always expected; `expected`
    returns more exception classes. It is called only when a command fails, so
    a CLI can name classes from heavy modules without importing them up front.

    Example:

    >>> @friendly_errors()
    ... def command():
    ...     raise ValueError("data/x.png: cannot read image\\nmore detail")
    >>> command()
    Traceback (most recent call last):
    click.exceptions.ClickException: data/x.png: cannot read image
    """

    def decorate(command):
        @functools.wraps(command)
        def wrapper(*args, **kwargs):
            try:
                return command(*args, **kwargs)
            except Exception as err:
                if not isinstance(err, (ValueError, FileNotFoundError, *expected())):
                    raise
                raise click.ClickException(str(err).splitlines()[0] if str(err) else repr(err)) from None

        return wrapper

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
        "--tile", is_flag=True, help="Inspect inputs of another size in model-size tiles at the training scale."
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
