"""The error every export step raises when it cannot finish."""

from __future__ import annotations

from edge.errors import RiadError


class ExportError(RiadError, ValueError):
    """An export that cannot be completed; `written` holds the files already written."""

    def __init__(self, message: str, written: dict | None = None):
        super().__init__(message)
        self.written = dict(written or {})
