"""scripts/ and experiments/: every name they import from the project exists, and every script starts.

The broken `DATA_FILE` import of scripts/magnetic_tile.py sat inside a function, where neither
importing the script nor its `--help` reaches it; the static check below reads every `from X
import Y` of the project's own packages, at any depth of any file, and looks Y up in X.
"""

import ast
import importlib
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("riad_tf", "edge", "scripts", "experiments")
SCRIPTS = sorted(
    f"{folder}.{path.stem}"
    for folder in ("scripts", "experiments")
    for path in (REPO / folder).glob("*.py")
    if path.stem != "__init__"
)
NEEDS_TORCH = {"experiments.reference_torch"}  # PyTorch at import (the `[reference]` extra)


def _project_imports(path: Path):
    """`(line, module, name)` of every `from <project module> import name` in `path`."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module.split(".")[0] in PACKAGES:
            for alias in node.names:
                yield node.lineno, node.module, alias.name


def _missing(module: str, name: str) -> bool:
    if module in NEEDS_TORCH and importlib.util.find_spec("torch") is None:
        return False  # checked where the extra is installed
    imported = importlib.import_module(module)
    if hasattr(imported, name):
        return False
    return not hasattr(imported, "__path__") or importlib.util.find_spec(f"{module}.{name}") is None


def test_every_name_imported_from_the_project_exists():
    files = [p for folder in (*PACKAGES, "tests") for p in sorted((REPO / folder).rglob("*.py"))]
    checked, missing = 0, []
    for path in files:
        for line, module, name in _project_imports(path):
            checked += 1
            if _missing(module, name):
                missing.append(f"{path.relative_to(REPO)}:{line}: {module} has no {name}")
    assert checked > 300, "the walk found the imports"
    assert not missing, "\n".join(missing)


def test_the_static_check_catches_a_name_that_is_gone(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("def main():\n    from riad_tf.cli import DATA_FILE\n")
    assert [(m, n) for _, m, n in _project_imports(broken)] == [("riad_tf.cli", "DATA_FILE")]
    assert _missing("riad_tf.cli", "DATA_FILE")
    assert not _missing("riad_tf.run", "DATA_FILE")


def _help(module: str) -> tuple[str, int, str]:
    done = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True, text=True)
    return module, done.returncode, done.stdout + done.stderr


def test_every_script_answers_help():
    """Each runs as `python3 -m scripts.NAME` from the repository root, with no sys.path tricks."""
    runnable = [m for m in SCRIPTS if m not in NEEDS_TORCH or importlib.util.find_spec("torch")]
    assert len(runnable) >= 12
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(_help, runnable))
    failed = [f"{m}: exit {code}: {out[-300:]}" for m, code, out in results if code != 0 or "usage:" not in out]
    assert not failed, "\n".join(failed)


def _fake_magnetic_tile(root: Path, good: int = 30, defective: int = 4) -> Path:
    """The magnetic-tile layout with tiny grey images: MT_Free/Imgs good ones, MT_Crack/Imgs with masks."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for folder, count in (("MT_Free", good), ("MT_Crack", defective)):
        images = root / folder / "Imgs"
        images.mkdir(parents=True)
        for i in range(count):
            pixels = (rng.random((40, 48)) * 60 + 100).astype(np.uint8)
            mask = np.zeros((40, 48), np.uint8)
            if folder != "MT_Free":
                pixels[10:20, 10:30], mask[10:20, 10:30] = 20, 255
            Image.fromarray(pixels).save(images / f"exp{i}.jpg")
            Image.fromarray(mask).save(images / f"exp{i}.png")
    return root


def test_magnetic_tile_script_trains_and_evaluates_on_tiny_data(tmp_path):
    """The script's whole path (the one the broken import sat on), on a tiny data set in its layout."""
    data = _fake_magnetic_tile(tmp_path / "mt")
    config = tmp_path / "tiny.yaml"
    config.write_text(
        f"base: {REPO / 'configs' / 'magnetic_tile.yaml'}\n"
        "image_size: [32, 32]\nwidths: [4, 8, 8, 16, 16]\nks: [2, 4]\nsmoothing: 3\nepochs: 1\n"
        "batch_size: 4\nval_fraction: 0.15\ncalibration_fraction: 0.15\ntarget_fpr: 0.2\n"
    )
    out = tmp_path / "out"
    command = [sys.executable, "-m", "scripts.magnetic_tile", "--data", str(data), "--out", str(out)]
    command += ["--config", str(config), "--no-baseline", "--no-progress"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "image AUROC" in done.stdout + done.stderr
    assert any(out.rglob("model.keras")) and any(out.rglob("metrics.json"))


def test_bench_runtimes_times_more_models_on_both_runtimes_in_the_same_turns(tmp_path):
    from scripts.bench_runtimes import configurations, parse_args

    (tmp_path / "riad.onnx").touch()
    (tmp_path / "riad_int8.onnx").touch()
    also = parse_args(["--also", "nncf=n/riad_int8.onnx", "--also", "ov=o/riad_int8.onnx"]).also
    found = [(name, str(path), settings is not None) for name, path, settings in configurations(tmp_path, False, also)]
    assert [name for name, _, _ in found] == [
        "onnxruntime fp32",
        "onnxruntime int8",
        "onnxruntime nncf",
        "onnxruntime ov",
        "openvino f32",
        "openvino int8",
        "openvino nncf",
        "openvino ov",
    ]
    assert found[2] == ("onnxruntime nncf", "n/riad_int8.onnx", False)
    assert found[6] == ("openvino nncf", "n/riad_int8.onnx", True)


def test_runtime_accuracy_takes_check_images_from_the_data_set_when_the_run_records_none():
    from scripts.runtime_accuracy import data_check_images

    labels = np.array([0, 1, 1, 0, 1, 1, 1, 1])
    test = np.arange(8, dtype=np.float32).reshape(8, 1, 1, 1)
    data = dict(
        holdout=np.zeros((5, 1, 1, 1), np.float32),
        test=test,
        test_masks=test[..., 0] > 3,
        labels=labels,
        defect_types=np.array(["good", "a", "a", "good", "b", "b", "c", "c"]),
    )
    images = data_check_images(data, limit=3)
    assert len(images.good) == 3
    assert images.defective[:, 0, 0, 0].tolist() == [1, 4, 6]  # every other defective image, no good one
    assert images.masks.tolist() == [[[False]], [[True]], [[True]]]
