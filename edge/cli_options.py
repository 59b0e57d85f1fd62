"""What both command lines (`riad-tf`, `riad-edge`) share: the one-line error wrapper and list options.

Example:

>>> int_list("1, 4,8")
(1, 4, 8)
"""

from __future__ import annotations

import functools
from typing import Callable

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
