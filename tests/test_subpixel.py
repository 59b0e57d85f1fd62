"""Transposed convolutions rewritten as sub-pixel convolutions compute the same maps (`riad_tf.export.subpixel`)."""

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import helper, numpy_helper  # noqa: E402

from riad_tf.export.subpixel import subpixel_conv_transposes  # noqa: E402


def _conv_transpose_model(kernel_size: int, stride: int, pads, bias: bool, seed: int = 0, **attributes):
    rng = np.random.default_rng(seed)
    constants = [numpy_helper.from_array(rng.standard_normal((3, 5, kernel_size, kernel_size), np.float32), "W")]
    inputs = ["x", "W"]
    if bias:
        constants.append(numpy_helper.from_array(rng.standard_normal(5).astype(np.float32), "B"))
        inputs.append("B")
    node = helper.make_node("ConvTranspose", inputs, ["y"], strides=[stride, stride], pads=pads, **attributes)
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 6, 7])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    graph = helper.make_graph([node], "up", [x], [y], constants)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.mark.parametrize(
    "kernel_size, stride, pads, bias",
    [
        (4, 2, [1, 1, 1, 1], True),  # the U-Net's decoder (Keras "same")
        (2, 2, [0, 0, 0, 0], False),  # no overlap
        (3, 2, [1, 0, 0, 1], True),  # uneven pads
        (5, 2, [2, 2, 1, 1], False),
        (6, 3, [2, 1, 1, 2], True),  # stride 3
    ],
)
def test_the_rewritten_upsampling_gives_the_same_output(kernel_size, stride, pads, bias):
    model = _conv_transpose_model(kernel_size, stride, pads, bias)
    x = np.random.default_rng(1).standard_normal((1, 3, 6, 7)).astype(np.float32)
    expected = _run(model, x)
    assert subpixel_conv_transposes(model) == 1
    assert [node.op_type for node in model.graph.node] == ["Conv", "DepthToSpace"]
    assert {t.name for t in model.graph.initializer}.isdisjoint({"W", "B"})  # the old kernel is gone
    got = _run(model, x)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize(
    "kernel_size, stride, pads, attributes",
    [
        (3, 1, [1, 1, 1, 1], {}),  # stride 1: nothing to interleave
        (4, 2, [0, 0, 0, 0], {}),  # output 2 pixels longer than twice the input
        (4, 2, [1, 1, 1, 1], {"output_padding": [1, 1]}),
        (4, 2, [1, 1, 1, 1], {"dilations": [2, 2]}),
    ],
)
def test_other_transposed_convolutions_are_left_alone(kernel_size, stride, pads, attributes):
    model = _conv_transpose_model(kernel_size, stride, pads, bias=False, **attributes)
    assert subpixel_conv_transposes(model) == 0
    assert [node.op_type for node in model.graph.node] == ["ConvTranspose"]


def test_unnamed_nodes_get_distinct_names_and_a_computed_bias_is_left_alone():
    rng = np.random.default_rng(2)
    kernels = [numpy_helper.from_array(rng.standard_normal((3, 3, 4, 4), np.float32), f"W{i}") for i in (1, 2)]
    nodes = [
        helper.make_node("ConvTranspose", ["x", "W1"], ["h"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("ConvTranspose", ["h", "W2"], ["y"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("ConvTranspose", ["y", "W2", "b"], ["z"], strides=[2, 2], pads=[1, 1, 1, 1]),
    ]
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 4, 4])
    b = helper.make_tensor_value_info("b", onnx.TensorProto.FLOAT, [3])
    z = helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "up3", [x, b], [z], kernels)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feed = {"x": rng.standard_normal((1, 3, 4, 4)).astype(np.float32), "b": np.ones(3, np.float32)}

    def run(m):
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]

    expected = run(model)
    assert subpixel_conv_transposes(model) == 2  # the third's bias is computed, not a constant
    assert [node.op_type for node in model.graph.node].count("ConvTranspose") == 1
    assert "W2" in {t.name for t in model.graph.initializer}  # still read by the node left alone
    np.testing.assert_allclose(run(model), expected, rtol=1e-4, atol=1e-4)
