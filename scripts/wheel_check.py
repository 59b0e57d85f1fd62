"""Builds the riad-tf wheel and runs it from a fresh virtual environment, as a device would install it.

Checks, in order (`.ci/run` calls this after the tests):

1. `pip wheel` builds one wheel from the tracked files; it holds the `riad_tf` and `edge` packages and
   nothing of tests/, scripts/, experiments/ or runs/.
2. A new virtual environment installs it with the `[edge]` extra; TensorFlow
   is not pulled in.
3. `riad-edge --version` prints the wheel's version.
4. `riad-edge infer` runs one image through a tiny ONNX detector exported here
   (random weights: this checks the install, not accuracy) and prints a record
   with a score.
5. `riad-tf` in that environment says in one line what to install and exits
   non-zero, instead of a traceback.

Prints one line per check and exits 1 at the first that fails.

Example:

    python3 -m scripts.wheel_check                 # in a temporary folder
    python3 -m scripts.wheel_check --keep runs/wheel-check
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXCLUDED = ("tests/", "scripts/", "experiments/", "runs/")


class CheckFailed(Exception):
    """A check that did not pass, with what was seen."""


def run(command: list, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in command], capture_output=True, text=True, **kwargs)


def tracked_copy(folder: Path) -> Path:
    """The repository's tracked files, copied into `folder`.

    The build then sees what a clean clone holds, and leaves no build/ folder in the working tree.
    """
    listed = run(["git", "-C", ROOT, "ls-files", "-z"], check=True).stdout.split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, folder / name)
    return folder


def build_wheel(out: Path) -> Path:
    source = tracked_copy(out.parent / "source")
    done = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", out, source])
    wheels = sorted(out.glob("riad_tf-*.whl"))
    if done.returncode != 0 or len(wheels) != 1:
        raise CheckFailed(f"pip wheel failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")
    names = zipfile.ZipFile(wheels[0]).namelist()
    for package in ("riad_tf/cli.py", "edge/cli.py"):
        if package not in names:
            raise CheckFailed(f"{wheels[0].name} lacks {package}")
    stray = [n for n in names if n.startswith(EXCLUDED)]
    if stray:
        raise CheckFailed(f"{wheels[0].name} holds {stray[0]} (and {len(stray) - 1} more) that is not the library")
    return wheels[0]


def install_edge(wheel: Path, venv: Path) -> Path:
    """A fresh virtual environment with the wheel and its [edge] extra; returns its bin folder."""
    run([sys.executable, "-m", "venv", venv], check=True)
    bin_dir = venv / "bin"
    done = run([bin_dir / "python", "-m", "pip", "install", "--quiet", f"{wheel}[edge]"])
    if done.returncode != 0:
        raise CheckFailed(f"pip install {wheel.name}[edge] failed: {done.stderr.strip()[-500:]}")
    leaked = run([bin_dir / "python", "-c", "import importlib.util as u; print(u.find_spec('tensorflow') is not None)"])
    if leaked.stdout.strip() != "False":
        raise CheckFailed("the [edge] install pulled in TensorFlow")
    return bin_dir


def tiny_model_and_image(folder: Path) -> tuple[Path, Path]:
    """A tiny random-weight detector exported to ONNX (in this environment, with TensorFlow) and one grey image."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # the converter's deprecation lines
    import numpy as np
    from PIL import Image

    from riad_tf.config import RiadConfig
    from riad_tf.detector import Detector
    from riad_tf.export import export_detector
    from riad_tf.model import build_unet

    config = RiadConfig(image_size=(32, 32), widths=(4, 8, 8, 16, 16), ks=(2, 4), smoothing=5, channels=1)
    written = export_detector(
        Detector(build_unet(config.input_shape, config.widths), config), folder, formats=("onnx",)
    )
    image = folder / "part.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32), np.uint8)).save(image)
    return written["onnx"], image


def check_commands(bin_dir: Path, model: Path, image: Path) -> list[str]:
    """Runs the installed commands; returns one line per passed check."""
    from riad_tf import __version__

    version = run([bin_dir / "riad-edge", "--version"])
    if version.returncode != 0 or __version__ not in version.stdout:
        raise CheckFailed(
            f"riad-edge --version: exit {version.returncode}, {version.stdout!r} {version.stderr[-300:]!r}"
        )
    infer = run([bin_dir / "riad-edge", "infer", model, image])
    records = [json.loads(line) for line in infer.stdout.splitlines() if line.startswith("{")]
    if infer.returncode != 0 or not records or "score" not in records[0]:
        raise CheckFailed(
            f"riad-edge infer: exit {infer.returncode}, stdout {infer.stdout[-300:]!r}, {infer.stderr[-300:]!r}"
        )
    training = run([bin_dir / "riad-tf", "train", "--help"])
    said = training.stderr.strip().splitlines()
    if training.returncode == 0 or len(said) != 1 or "pip install" not in said[0]:
        raise CheckFailed(f"riad-tf without TensorFlow: exit {training.returncode}, stderr {training.stderr[-500:]!r}")
    return [
        f"riad-edge --version: {version.stdout.strip()}",
        f"riad-edge infer: score {records[0]['score']:.4g} for {image.name}",
        f"riad-tf without TensorFlow: exit {training.returncode}, {said[0]}",
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--keep", type=Path, default=None, help="work in this folder and keep it (default: a temporary one)"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="wheel-check-") as temporary:
        work = args.keep or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        try:
            wheel = build_wheel(work / "dist")
            print(f"wheel: {wheel.name} holds riad_tf and edge, nothing else", flush=True)
            bin_dir = install_edge(wheel, work / "venv")
            print("installed with [edge] into a fresh venv, without TensorFlow", flush=True)
            model, image = tiny_model_and_image(work / "model")
            for line in check_commands(bin_dir, model, image):
                print(line, flush=True)
        except CheckFailed as err:
            print(f"wheel check FAILED: {err}", file=sys.stderr)
            return 1
    print("wheel check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
