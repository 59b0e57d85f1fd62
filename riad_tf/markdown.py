"""Markdown tables for the text that evaluations, benchmarks and experiments write (`metrics.md`, results.md).

Example:

>>> print(markdown_table(["subset", "AUROC"], [["overall", cell(0.98765)], ["crack", cell(None)]]))
| subset | AUROC |
| --- | --- |
| overall | 0.9877 |
| crack | n/a |
"""

from __future__ import annotations

import html
from typing import Sequence


def cell(value, spec: str = ".4f") -> str:
    """A table cell: floats with `spec`, None as "n/a", anything else as text."""
    if value is None:
        return "n/a"
    return format(value, spec) if isinstance(value, float) else str(value)


def escaped(text) -> str:
    r"""`text` safe inside a markdown table cell: HTML markup shown as text, `|` kept inside the cell.

    Example:

    >>> print(escaped("<svg onload=alert(1)>|x"))
    &lt;svg onload=alert(1)&gt;\|x
    """
    return html.escape(str(text), quote=False).replace("|", "\\|")


def markdown_table(header: Sequence, rows: Sequence[Sequence]) -> str:
    """A markdown table of `header` and `rows` (cells turned into text with `str`, escaped by `escaped`)."""
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(map(escaped, line)) + " |" for line in lines)
