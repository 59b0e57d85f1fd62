"""The `riad-tf` console script: the command line where TensorFlow is installed, one line saying what to install elsewhere.

`pip install riad-tf[edge]` on a device installs both console scripts; only
`riad-edge` runs there. Without this check `riad-tf` would end in an
ImportError traceback.
"""

from __future__ import annotations

import importlib.util
import sys

# What the training side imports that the [edge] extra does not install.
TRAINING_MODULES = ("tensorflow", "keras", "sklearn", "scipy")


def missing_training_modules() -> list[str]:
    """The modules of `TRAINING_MODULES` this environment cannot import."""
    return [name for name in TRAINING_MODULES if importlib.util.find_spec(name) is None]


def main() -> None:
    """Runs `riad_tf.cli.main`, or exits with status 1 and one line when the training side is not installed."""
    missing = missing_training_modules()
    if missing:
        sys.exit(
            f"riad-tf: this install lacks {', '.join(missing)}: riad-tf trains, evaluates and exports, "
            "and needs pip install 'riad-tf[tf]'; to run exported models here, use riad-edge"
        )
    from riad_tf.cli import main as cli

    cli()
