"""NNCF's QDQ layout rewritten for ONNX Runtime's int8 kernels computes the same (`riad_tf.export.qdq_layout`)."""

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from conftest import onnx_runtime_op_types  # noqa: E402
from riad_tf.export.qdq_layout import fusable_qdq  # noqa: E402

CHANNELS = 4


class _Builder:
    """A QDQ graph as NNCF lays it out, built one quantized operation at a time."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.constants = [], []

    def constant(self, name, value):
        self.constants.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op_type, inputs, output, **attributes):
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=output, **attributes))
        return output

    def qdq(self, x, scale, signed):
        """NNCF's activation quantizer: int8 around 0 (signed) or uint8 from 0."""
        zero = self.constant(f"{x}_zp", np.array(0, np.int8 if signed else np.uint8))
        scale = self.constant(f"{x}_scale", np.array(scale, np.float32))
        return self.node(
            "DequantizeLinear", [self.node("QuantizeLinear", [x, scale, zero], f"{x}_q"), scale, zero], f"{x}_dq"
        )

    def conv(self, x, name, out_channels, in_channels, relu, **attributes):
        """A convolution with per-channel symmetric int8 weights and a float bias, as NNCF leaves it."""
        levels = self.rng.integers(-63, 64, (out_channels, in_channels, 3, 3)).astype(np.int8)
        scale = self.rng.uniform(0.002, 0.01, out_channels).astype(np.float32)
        weights = self.node(
            "DequantizeLinear",
            [
                self.constant(f"{name}_w", levels),
                self.constant(f"{name}_ws", scale),
                self.constant(f"{name}_wzp", np.zeros(out_channels, np.int8)),
            ],
            f"{name}_wdq",
            axis=0,
        )
        bias = self.constant(f"{name}_b", self.rng.normal(0, 0.1, out_channels).astype(np.float32))
        y = self.node("Conv", [x, weights, bias], f"{name}_conv", pads=[1, 1, 1, 1], **attributes)
        return self.node("Relu", [y], f"{name}_relu") if relu else y

    def model(self, x, y):
        graph = helper.make_graph(
            self.nodes,
            "nncf-layout",
            [helper.make_tensor_value_info(x, TensorProto.FLOAT, [2, 1, 16, 16])],
            [helper.make_tensor_value_info(y, TensorProto.FLOAT, [2, 1, 16, 16])],
            self.constants,
        )
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _nncf_layout_unet(seed: int = 0):
    """A one-level U-Net in NNCF's layout: the skip's ReLU output shares a signed scale with the upsampling."""
    b = _Builder(seed)
    skip_scale = 0.02  # one scale for both inputs of the Concat (NNCF's unified scales), so signed
    x = b.qdq("x", 1 / 255, signed=False)
    skip = b.qdq(b.conv(x, "enc1", CHANNELS, 1, relu=True), skip_scale, signed=True)
    down = b.qdq(b.conv(skip, "enc2", CHANNELS, CHANNELS, relu=True, strides=[2, 2]), 0.02, signed=False)
    phases = b.qdq(b.conv(down, "up", 4 * CHANNELS, CHANNELS, relu=False), skip_scale, signed=True)
    up = b.node("DepthToSpace", [phases], "up_d2s", blocksize=2, mode="CRD")
    merged = b.node("Concat", [up, skip], "skip_concat", axis=1)  # NNCF quantizes neither output
    dec = b.qdq(b.conv(merged, "dec1", CHANNELS, 2 * CHANNELS, relu=True), 0.02, signed=False)
    out = b.node("Sigmoid", [b.conv(dec, "out", 1, CHANNELS, relu=False)], "y")
    return b.model("x", out)


def _run(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_the_rewritten_graph_computes_what_nncfs_does():
    model = _nncf_layout_unet()
    x = np.random.default_rng(1).random((2, 1, 16, 16), np.float32)
    expected = _run(model, x)
    counts = fusable_qdq(model)
    onnx.checker.check_model(model, full_check=True)
    assert counts == {"requantized": 2, "unsigned": 1, "int32_biases": 4, "float_weights": 1}
    got = _run(model, x)
    # Only rounding moves: int32 biases and int8 kernels that requantize once (under one sigmoid'd step of 0.02).
    np.testing.assert_allclose(got, expected, atol=0.005)
    assert np.abs(got - expected).mean() < 5e-4


def test_onnx_runtime_runs_every_quantized_convolution_as_one_int8_kernel(tmp_path):
    model = _nncf_layout_unet()
    before = onnx_runtime_op_types(model, tmp_path)
    fusable_qdq(model)
    after = onnx_runtime_op_types(model, tmp_path)
    print(f"before: {sorted(before)}\nafter: {sorted(after)}")
    assert before.count("QLinearConv") <= 1  # NNCF's layout: float biases keep them apart
    assert after.count("QLinearConv") == 4  # enc1, enc2, the upsampling and dec1; out's output is float
    assert after.count("Conv") + after.count("FusedConv") == 1
    assert "QLinearConcat" in after  # the skip joins in int8 too


def test_a_skip_connection_above_the_shared_int8_range_keeps_its_largest_values_where_relu_feeds_it():
    """After a ReLU the int8 grid becomes uint8 with zero point 0: the same levels, and 128 more above them."""
    b = _Builder(3)
    y = b.node("Relu", ["x"], "r")
    model = b.model("x", b.qdq(y, 0.01, signed=True))
    x = np.linspace(-1, 2, 2 * 16 * 16, dtype=np.float32).reshape(2, 1, 16, 16)
    before = _run(model, x)
    fusable_qdq(model)
    after = _run(model, x)
    in_range = x <= 1.27
    np.testing.assert_array_equal(after[in_range], before[in_range])
    assert before.max() == pytest.approx(1.27) and after.max() == pytest.approx(2.0)


def test_what_the_rewrite_cannot_keep_exact_it_leaves_alone():
    """A Concat of two grids (and the ReLUs feeding it), a quantized graph output and a bias int32 cannot hold."""
    b = _Builder(4)
    x = b.qdq("x", 1 / 255, signed=False)
    left = b.qdq(b.conv(x, "left", CHANNELS, 1, relu=True), 0.02, signed=True)
    right = b.qdq(b.conv(x, "right", CHANNELS, 1, relu=True), 0.03, signed=True)  # another scale
    merged = b.node("Concat", [left, right], "merged", axis=1)
    (index,) = [i for i, t in enumerate(b.constants) if t.name == "right_b"]
    b.constants[index] = numpy_helper.from_array(np.full(CHANNELS, -1e9, np.float32), "right_b")  # over int32's range
    y = b.node("Relu", [b.conv(merged, "out", 1, 2 * CHANNELS, relu=False)], "out_relu2")
    model = b.model(
        "x", b.node("QuantizeLinear", [y, b.constant("ys", np.float32(0.1)), b.constant("yz", np.int8(0))], "y")
    )
    model.graph.output[0].type.tensor_type.elem_type = TensorProto.INT8
    x_value = np.random.default_rng(5).random((2, 1, 16, 16), np.float32)
    expected = _run(model, x_value)
    counts = fusable_qdq(model)
    assert counts["requantized"] == 0  # the Concat: two scales
    assert counts["unsigned"] == 0  # left and right feed the float Concat; the graph's output keeps its type
    assert counts["int32_biases"] == 1  # left's; right's -1e9 stays float; out's output is float
    np.testing.assert_array_equal(_run(model, x_value), expected)


def test_convolutions_sharing_one_bias_get_tensors_of_their_own():
    b = _Builder(6)
    x = b.qdq("x", 1 / 255, signed=False)
    first = b.qdq(b.conv(x, "first", CHANNELS, 1, relu=True), 0.02, signed=False)
    second = b.conv(x, "second", CHANNELS, 1, relu=True)
    b.nodes[-2].input[2] = "first_b"  # the second convolution reads the first's bias
    model = b.model("x", b.node("Add", [first, b.qdq(second, 0.02, signed=False)], "y"))
    x_value = np.random.default_rng(7).random((2, 1, 16, 16), np.float32)
    expected = _run(model, x_value)
    assert fusable_qdq(model)["int32_biases"] == 2
    np.testing.assert_allclose(_run(model, x_value), expected, atol=0.05)
