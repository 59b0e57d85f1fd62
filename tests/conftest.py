"""Shared fixtures: tiny configurations so the suite runs in minutes on 2 CPU cores."""

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

import riad_tf  # noqa: F401  (before any test imports tensorflow: it sets TensorFlow's CPU defaults)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TINY_WIDTHS = (4, 8, 8, 16, 16)


@pytest.fixture
def tiny_config():
    from riad_tf.config import RiadConfig

    return RiadConfig(image_size=(32, 32), widths=TINY_WIDTHS, ks=(2, 4, 8), smoothing=5, epochs=2, batch_size=4)


def onnx_runtime_op_types(model, folder: Path) -> list[str]:
    """The operator types ONNX Runtime runs `model` (a path or an `onnx.ModelProto`) with, after its graph
    optimisations, its QDQ fusions included; the optimised model is written into `folder`."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    optimized = folder / f"optimized-{len(list(folder.iterdir()))}.onnx"
    options.optimized_model_filepath = str(optimized)
    source = str(model) if isinstance(model, (str, Path)) else model.SerializeToString()
    ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    return [node.op_type for node in onnx.load(str(optimized)).graph.node]
