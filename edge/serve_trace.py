"""What makes `riad-edge serve` traceable: the identity of the model in force, and the access log.

Every answer of the service that a model is loaded for carries `"model"`
(`ModelIdentity.as_dict`), and `/metrics` carries it as `riad_model_info`, so
any verdict can be traced to the exact model file (its sha256) and the
threshold it was judged by. The identity is computed once per load (at start
and on each reload), never per request.

`--access-log PATH` writes one JSON object per request (`access_entry`), one
line each, appended as each answer goes out (docs/serve.md, "Access log").

Example:

>>> identity = ModelIdentity("riad.onnx", "ab12", "calibrated", 0.5)
>>> identity.labels()["image_threshold"], identity.as_dict()["threshold_source"]
('0.5', 'calibrated')
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import sys
from pathlib import Path
from typing import Mapping

from edge.files import open_own_file
from edge.metadata import ModelMetadata, file_sha256
from edge.predictions import threshold_source

log = logging.getLogger(__name__)
STDOUT = "-"  # `--access-log -`: the access log on stdout


@dataclasses.dataclass(frozen=True)
class ModelIdentity:
    """Which model answers, and by which threshold.

    Attributes:
        file: the model file's name.
        sha256: the model file's sha256 (None when it cannot be known).
        threshold_source: "calibrated", "override" or "none" (`edge.predictions.threshold_source`).
        image_threshold: the image threshold in force, or None without one (scores only).
    """

    file: str
    sha256: str | None
    threshold_source: str
    image_threshold: float | None

    def as_dict(self) -> dict:
        """The identity as the `"model"` object of an answer."""
        return dataclasses.asdict(self)

    def labels(self) -> dict[str, str]:
        """The identity as Prometheus labels (strings; "" for what is not known)."""
        return {key: "" if value is None else str(value) for key, value in self.as_dict().items()}


def model_identity(
    metadata: ModelMetadata, thresholds: Mapping | None, model_path: str | os.PathLike | None = None
) -> ModelIdentity:
    """The identity of a loaded model.

    Args:
        metadata: the model's metadata (`runner.metadata`).
        thresholds: the thresholds in force (`edge.predictions.with_overrides`), or None.
        model_path: the model file, when known: its name is the one reported, and its
            sha256 is computed when the metadata has none (read from inside the model).

    Returns:
        A `ModelIdentity`; `sha256` is None only without both a metadata sha256 and a path.
    """
    sha256 = metadata.sha256 or (file_sha256(model_path) if model_path is not None else None)
    image = (thresholds or {}).get("image")
    return ModelIdentity(
        file=Path(model_path).name if model_path is not None else metadata.model_file,
        sha256=sha256,
        threshold_source=threshold_source(thresholds),
        image_threshold=None if image is None else float(image),
    )


def access_entry(
    request, status: int, record: Mapping | None, model_sha256: str | None, arrived: datetime.datetime, seconds: float
) -> dict:
    """One line of the access log.

    Args:
        request: the aiohttp request (its client address, method, path and `?name=`).
        status: the answer's HTTP status.
        record: the JSON answer, when there is one: its `path` (the image's name),
            `score`, `anomalous` and `model.sha256` are logged.
        model_sha256: the sha256 of the model in force, for an answer that names none.
        arrived: when the request arrived (UTC).
        seconds: from the request's arrival to its answer.

    Returns:
        A dict with every key always present (null when it does not apply): `time`,
        `client`, `method`, `path`, `status`, `image`, `score`, `anomalous`,
        `model_sha256`, `duration_ms`.
    """
    record = record or {}
    return {
        "time": arrived.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "client": request.remote,
        "method": request.method,
        "path": request.path,
        "status": status,
        "image": record.get("path", request.query.get("name")),
        "score": record.get("score"),
        "anomalous": record.get("anomalous"),
        "model_sha256": (record.get("model") or {}).get("sha256", model_sha256),
        "duration_ms": round(seconds * 1e3, 3),
    }


class AccessLog:
    """A JSON-lines access log: each line written whole, straight to the file (no buffer to lose).

    Args:
        target: the log file (created, appended to; never written through a
            symbolic link), or "-" for stdout.

    Raises:
        OutputError: the file cannot be opened, naming it.
    """

    def __init__(self, target: str | os.PathLike):
        self.target = str(target)
        self._file = sys.stdout.buffer if self.target == STDOUT else open_own_file(target, append=True)
        self._failed = False

    def write(self, entry: Mapping) -> None:
        """Appends `entry` as one line; a failed write is logged once and never fails the request."""
        try:
            self._file.write((json.dumps(entry, allow_nan=False) + "\n").encode())
            self._file.flush()
        except (OSError, ValueError) as err:
            if not self._failed:
                log.error(f"serve: {self.target}: cannot write the access log: {err}")
            self._failed = True

    def close(self) -> None:
        """Closes the file (stdout stays open)."""
        if self.target != STDOUT:
            self._file.close()
