"""The errors a user can act on, each with its own exit status; anything else is a bug and shows its traceback.

Both command lines (`riad-tf`, `riad-edge`) turn these into one line naming
the file or setting and the problem (`edge.cli_options.friendly_errors`):

| exit | error | what |
|---|---|---|
| 1 | `RiadError` | a failure the user can act on, not of a kind below |
| 2 | (click) | a wrong command line |
| 3 | `InputError` | a data set, image, model or metadata file that cannot be used |
| 4 | `ConfigError` | a configuration value that breaks a rule (the message names the key) |
| 5 | `OutputError` | an output that cannot be written (read-only folder, full disk, permissions) |
| 6 | `RuntimeUnavailable` | TensorRT, CUDA or another runtime missing here |
| 7 | `TrainingError` | training finished but its model cannot be trusted |
| 8 | `RunLocked` | another command is writing the same run directory |

Each is also a `ValueError`, `OSError` or `RuntimeError`, as before, so code
that caught those keeps working.

Example:

>>> error = ConfigError("epochs must be at least 1, got 0")
>>> error.exit_code, isinstance(error, ValueError)
(4, True)
"""

from __future__ import annotations


class RiadError(Exception):
    """A failure the user can act on; the message is one line naming the file or key and the problem."""

    exit_code = 1


class InputError(RiadError, ValueError):
    """A data set, image, model or metadata file that cannot be used."""

    exit_code = 3


class ConfigError(RiadError, ValueError):
    """A configuration value that breaks a rule."""

    exit_code = 4


class OutputError(RiadError, OSError):
    """An output that cannot be written."""

    exit_code = 5


class RuntimeUnavailable(RiadError, RuntimeError):
    """A runtime (TensorRT, CUDA, ...) that is not available on this machine."""

    exit_code = 6


class TrainingError(RiadError, RuntimeError):
    """Training ran, but its model cannot be trusted (and was not saved)."""

    exit_code = 7


class RunLocked(RiadError):
    """Another process holds the run directory's lock."""

    exit_code = 8


def one_line(err: BaseException) -> str:
    """The first line of an error's message; "FILE: reason" for an `OSError` (its repr when it has no text)."""
    text = str(err)
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        text = f"{err.filename}: {err.strerror}"
    return text.splitlines()[0] if text else repr(err)
