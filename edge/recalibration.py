"""New thresholds for models already exported: `riad-edge set-thresholds MODEL --from RUN`.

`riad-tf calibrate RUN` writes new thresholds into the run (`thresholds.json`);
a model exported before keeps the thresholds of its export, inside the model
file and in the JSON beside it (`edge.metadata`). `set_thresholds` puts the
run's new thresholds into both copies (`edge.metadata.update_metadata`, atomic
writes), once they are valid (`edge.verdicts.thresholds_problem`) and the run's
config is the model's: every key both configs have must agree, but those a
recalibration changes (`RECALIBRATION_KEYS`). Nothing here needs TensorFlow:
the run's two files are read as plain JSON and YAML.

Example:

>>> set_thresholds_command("export/riad.onnx", "runs/my bottle")
"riad-edge set-thresholds export/riad.onnx --from 'runs/my bottle'"
>>> config_differences({"n": 3, "seed": 0, "target_fpr": 0.01}, {"n": 4, "seed": 0, "target_fpr": 0.2})
['n: 3 (model), 4 (run)']
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shlex
from pathlib import Path
from typing import Sequence

import yaml

from edge.errors import InputError, one_line
from edge.metadata import ModelMetadata, metadata_path, read_metadata, update_metadata
from edge.verdicts import thresholds_problem

# A run's files that the device reads (`riad_tf.run` takes these two names from here).
RUN_THRESHOLDS_FILE = "thresholds.json"
RUN_CONFIG_FILE = "config.yaml"
# Config keys `riad-tf calibrate` may change: they may differ between a run and the models exported from it.
RECALIBRATION_KEYS = frozenset({"target_fpr", "min_region_area"})
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RunThresholds:
    """Thresholds calibrated in a run, and the config of the model they belong to.

    Attributes:
        thresholds: the thresholds record (`edge.verdicts`).
        path: the `thresholds.json` they were read from.
        config: the run's config (`config.yaml` beside `path`), or None when there is none.
        config_path: where that config is, or would be.
    """

    thresholds: dict
    path: Path
    config: dict | None
    config_path: Path


@dataclasses.dataclass(frozen=True)
class ThresholdUpdate:
    """One model's thresholds before and after `set_thresholds`."""

    model: Path
    metadata: ModelMetadata
    new: RunThresholds

    @property
    def old_image(self) -> float | None:
        return (self.metadata.thresholds or {}).get("image")

    @property
    def changed(self) -> bool:
        return self.metadata.thresholds != self.new.thresholds

    def line(self) -> str:
        """The human line: `MODEL: image threshold OLD -> NEW (from FILE: target, images)`."""
        new = self.new.thresholds
        old = "none" if self.old_image is None else f"{self.old_image:.6g}"
        source = f"from {self.new.path}"
        if "target_fpr" in new and "num_images" in new:
            source += f": target false-positive rate {new['target_fpr']:g}, {new['num_images']} good images"
        unchanged = "" if self.changed else ", unchanged"
        return f"{self.model}: image threshold {old} -> {new['image']:.6g} ({source}{unchanged})"

    def record(self) -> dict:
        """The JSON record of `riad-edge set-thresholds --json`."""
        return {
            "model": str(self.model),
            "metadata": str(metadata_path(self.model)),
            "image_threshold": {"old": self.old_image, "new": self.new.thresholds["image"]},
            "thresholds_from": str(self.new.path),
            "changed": self.changed,
        }


def set_thresholds_command(model, source) -> str:
    """The shell command that puts `source`'s thresholds (a run or a thresholds.json) into `model`."""
    return f"riad-edge set-thresholds {shlex.quote(str(model))} --from {shlex.quote(str(source))}"


def read_run_thresholds(source) -> RunThresholds:
    """The thresholds of a run folder (`RUN/thresholds.json`), or of a thresholds JSON file, with the run's config.

    Args:
        source: a riad-tf run folder, or a `thresholds.json` (its config is the
            `config.yaml` beside it, when there is one).

    Raises:
        InputError: one line naming the file: missing, not JSON or YAML, or thresholds that break a rule.
    """
    source = Path(source)
    path = source / RUN_THRESHOLDS_FILE if source.is_dir() else source
    if not path.is_file():
        raise InputError(f"{path}: not found; calibrate the run first (riad-tf calibrate RUN --good DIR)")
    thresholds = _read_file(path, json.loads)
    problem = thresholds_problem(thresholds)
    if problem:
        raise InputError(f"{path}: thresholds {problem}")
    config_path = path.parent / RUN_CONFIG_FILE
    config = _read_file(config_path, yaml.safe_load) if config_path.is_file() else None
    if config is not None and not isinstance(config, dict):
        raise InputError(f"{config_path}: not a riad-tf config (a YAML mapping)")
    return RunThresholds(thresholds, path, config, config_path)


def _read_file(path: Path, parse):
    try:
        return parse(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as err:
        raise InputError(f"{path}: cannot read it: {one_line(err)}") from None


def config_differences(model_config: dict, run_config: dict) -> list[str]:
    """The keys both configs have whose values differ, but `RECALIBRATION_KEYS`: "key: model value (model), run value (run)"."""
    shared = sorted((model_config.keys() & run_config.keys()) - RECALIBRATION_KEYS)
    return [
        f"{key}: {model_config[key]!r} (model), {run_config[key]!r} (run)"
        for key in shared
        if _as_json(model_config[key]) != _as_json(run_config[key])
    ]


def _as_json(value):
    """A config value as JSON gives it back (YAML and JSON differ on tuples)."""
    return json.loads(json.dumps(value))


def set_thresholds(models: Sequence, new: RunThresholds, force: bool = False) -> list[ThresholdUpdate]:
    """Puts `new`'s thresholds into each model's metadata, inside the model file and beside it.

    Every model is read and checked before any is written, so a refused one
    leaves all of them as they were. A model whose thresholds already are the
    new ones is not rewritten.

    Args:
        models: exported models (`.onnx`, `.tflite`, `.engine`, with their metadata).
        new: the thresholds and the run's config (`read_run_thresholds`).
        force: set them even when the run's config differs from a model's, or is missing.

    Returns:
        One `ThresholdUpdate` per model, in order.

    Raises:
        InputError: a model's metadata cannot be read or does not match its file
            (`edge.metadata.read_metadata`), or (without `force`) the run's config
            is not the model's, naming both files.
    """
    updates = []
    for model in map(Path, models):
        metadata = read_metadata(model)
        problem = _belonging_problem(model, metadata, new)
        if problem and not force:
            raise InputError(f"{problem}; pass --force to set them anyway")
        if problem:
            log.warning(f"warning: --force: {problem}")
        updates.append(ThresholdUpdate(model, metadata, new))
    for update in updates:
        if update.changed:
            update_metadata(update.model, dataclasses.replace(update.metadata, thresholds=new.thresholds))
    return updates


def _belonging_problem(model: Path, metadata: ModelMetadata, new: RunThresholds) -> str | None:
    """Why `new`'s thresholds may not be `model`'s (one line naming both files), or None."""
    beside = metadata_path(model)
    described = beside if beside.is_file() else model
    if new.config is None:
        return f"{new.path}: no {RUN_CONFIG_FILE} beside it to check that these thresholds are {described}'s"
    differing = config_differences(metadata.config, new.config)
    if not differing:
        return None
    more = f" and {len(differing) - 3} more" if len(differing) > 3 else ""
    return (
        f"{new.config_path}: another model's config than {described} ({'; '.join(differing[:3])}{more}), "
        "so its thresholds do not belong to it"
    )
