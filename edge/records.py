"""The JSON-lines records both command lines write, in one place (docs/records.md).

Every record is one JSON object on one line with a `type`:

    image     riad-tf predict, riad-edge infer: one per input image (`edge.predictions`)
    frame     riad-edge stream: one per frame of the line-scan strip
    fault     riad-edge stream: data that could not be used (the stream goes on)
    regions   riad-edge stream: regions still open when the stream ended
    summary   riad-edge stream (last line), riad-edge video (its only line)

The same things have the same keys everywhere: `score` (Eq. 10), `anomalous`
(bool), `threshold`, `regions` (boxes with `peak`), `error`/`reason` (one line).

Example:

>>> check_record({"type": "image", "path": "a.png", "score": 0.1})
>>> check_record({"type": "image", "path": "a.png"})
Traceback (most recent call last):
ValueError: an image record needs a score or an error: {'type': 'image', 'path': 'a.png'}
"""

from __future__ import annotations

import math
from typing import Mapping

REQUIRED = {
    "image": {"type", "path"},
    "frame": {"type", "frame", "time", "lines", "score", "anomalous", "regions", "partial", "latency_ms"},
    "fault": {"type", "time", "reason"},
    "regions": {"type", "time", "regions"},
    "summary": {"type"},
}


def check_record(record: Mapping) -> None:
    """Raises ValueError when `record` does not follow the schema above."""
    kind = record.get("type")
    if kind not in REQUIRED:
        raise ValueError(f"unknown record type {kind!r}: {dict(record)}")
    missing = REQUIRED[kind] - set(record)
    if missing:
        raise ValueError(f"a {kind} record lacks {sorted(missing)}: {dict(record)}")
    if kind == "image" and ("score" in record) == ("error" in record):
        raise ValueError(f"an image record needs a score or an error: {dict(record)}")
    for key in ("score", "threshold"):
        if key in record and not (isinstance(record[key], (int, float)) and math.isfinite(record[key])):
            raise ValueError(f"{key} must be a finite number: {dict(record)}")
    if "anomalous" in record and not isinstance(record["anomalous"], bool):
        raise ValueError(f"anomalous must be true or false: {dict(record)}")
    for region in record.get("regions", []):
        if "peak" not in region or "columns" not in region:
            raise ValueError(f"a region needs columns and peak: {region}")
