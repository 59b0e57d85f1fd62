"""NNCF's int8 QDQ graph in the layout ONNX Runtime fuses into int8 kernels: the same numbers, faster.

ONNX Runtime runs a quantized `Conv` as one int8 kernel (`QLinearConv`) only
when its input and weights come from `DequantizeLinear` nodes and its output
goes to a `QuantizeLinear`, through a `Relu` only when that `QuantizeLinear`
clips at zero anyway (uint8, zero point 0). NNCF's int8 of the U-Net
(`riad_tf.export.nncf_int8`) is laid out for OpenVINO, which runs it fastest:
float biases, int8 activations around 0 after ReLUs (a skip connection shares
its scale with the signed upsampled tensor it is concatenated with) and no
quantization after the upsampling's `DepthToSpace` and the skip `Concat`.
ONNX Runtime runs most of its convolutions in float32 between
`DequantizeLinear` nodes: on the 64 px magnetic-tile model NNCF's int8 was
slower than float32 (docs/deployment.md). `fusable_qdq` rewrites it without
changing what it computes on the calibrated ranges:

1. a `QuantizeLinear` -> `DequantizeLinear` pair with the input's own scale
   and zero point after each `DepthToSpace` and `Concat` whose inputs are all
   dequantized with one scale and zero point (the values are already on that
   grid, so the pair changes nothing);
2. a `Relu`'s output quantized to int8 around 0 is quantized to uint8 from 0
   with the same scale: the same non-negative levels, and 128 more above
   NNCF's int8 top, which clipped them; ONNX Runtime then drops the `Relu`.
   Other int8 tensors stay int8 around 0, and so do ReLU outputs feeding a
   `Concat` that step 1 could not quantize (inputs of two grids): made uint8,
   they changed ONNX Runtime's optimised output of a small test graph by up to
   62 int8 levels (unoptimised: unchanged; the cause is not known);
3. each float bias of a convolution with dequantized input and weights and a
   quantized output becomes int32, where int32 holds it, at scale input
   scale x weight scale (per output channel), with a
   `DequantizeLinear`, the form ONNX's QDQ convention gives a bias: it moves by
   at most half a step of that scale;
4. a convolution whose output no `QuantizeLinear` takes runs in float32
   anyway: its weights become the float32 constants its `DequantizeLinear`
   computed, which ONNX Runtime lays out once for its blocked float kernels.

Example: a convolution between int8 activations, with a float bias.

>>> import onnx
>>> from onnx import TensorProto, helper, numpy_helper
>>> constants = [numpy_helper.from_array(np.array(v, dtype), name) for name, v, dtype in [
...     ("s", 0.1, np.float32), ("zp", 0, np.int8), ("w", np.ones((2, 1, 1, 1)), np.int8),
...     ("ws", [0.01, 0.02], np.float32), ("wzp", [0, 0], np.int8), ("b", [0.5, -0.5], np.float32)]]
>>> nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"]),
...          helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xd"]),
...          helper.make_node("DequantizeLinear", ["w", "ws", "wzp"], ["wd"], axis=0),
...          helper.make_node("Conv", ["xd", "wd", "b"], ["c"]),
...          helper.make_node("QuantizeLinear", ["c", "s", "zp"], ["cq"]),
...          helper.make_node("DequantizeLinear", ["cq", "s", "zp"], ["y"])]
>>> graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
...                           [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 2, 2])], constants)
>>> model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
>>> fusable_qdq(model)
{'requantized': 0, 'unsigned': 0, 'int32_biases': 1, 'float_weights': 0}
>>> numpy_helper.to_array(model.graph.initializer[-3])  # the bias in units of 0.1 x (0.01, 0.02)
array([ 500, -250], dtype=int32)
"""

from __future__ import annotations

import numpy as np

# Operators that move or copy values without computing new ones: their output is on their input's grid.
DATA_MOVEMENT = ("DepthToSpace", "Concat")


def fusable_qdq(model) -> dict[str, int]:
    """Rewrites NNCF's QDQ `model` (an `onnx.ModelProto`) in place into ONNX Runtime's fusable layout.

    Returns:
        How many tensors were quantized again after data movement, how many
        activations became uint8, how many biases int32 and how many float32
        convolutions got float32 weights.
    """
    graph = _Graph(model.graph)
    counts = {"requantized": _requantize_data_movement(graph), "unsigned": _unsigned_activations(graph)}
    counts["int32_biases"] = _int32_biases(graph)
    counts["float_weights"] = _float_weights(graph)
    graph.sort()
    graph.drop_unused_constants()
    return counts


class _Graph:
    """An `onnx.GraphProto` with its constants, producers and consumers, and helpers to add to it."""

    def __init__(self, graph):
        from onnx import numpy_helper

        self.proto = graph
        self.constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        self.producer = {out: node for node in graph.node for out in node.output}
        self.node_names = {node.name for node in graph.node}
        self.tensors = {*self.constants, *self.producer, *(value.name for value in graph.input)}
        self.consumers: dict[str, list] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)

    def unique(self, name: str) -> str:
        """`name`, or `name` with underscores appended, so that no tensor of the graph has it yet."""
        while name in self.tensors:
            name += "_"
        self.tensors.add(name)
        return name

    def constant(self, name: str, value: np.ndarray) -> str:
        """Adds an initializer named `name` (made unique) holding `value`; returns its name."""
        from onnx import numpy_helper

        name = self.unique(name)
        self.constants[name] = value
        self.proto.initializer.append(numpy_helper.from_array(value, name))
        return name

    def add(self, op_type: str, inputs: list[str], output: str, rename: bool = True, **attributes):
        """Appends a node computing tensor `output` (made unique unless `rename` is False); sort afterwards."""
        from onnx import helper

        if rename:
            output = self.unique(output)
        name = f"{output}_{op_type}"
        while name in self.node_names:
            name += "_"
        self.node_names.add(name)
        self.proto.node.append(helper.make_node(op_type, inputs, [output], name=name, **attributes))
        node = self.proto.node[-1]  # append copied the message: keep the one in the graph
        self.producer[output] = node
        for name in inputs:
            self.consumers.setdefault(name, []).append(node)
        return node

    def forget_type(self, name: str) -> None:
        """Drops the recorded type of tensor `name` (shape inference, or the runtime, infers it again)."""
        kept = [value for value in self.proto.value_info if value.name != name]
        del self.proto.value_info[:]
        self.proto.value_info.extend(kept)

    def activation_qdq(self, name: str):
        """(scale, zero point) names of the DequantizeLinear producing activation `name`, or None."""
        node = self.producer.get(name)
        if node is None or node.op_type != "DequantizeLinear" or node.input[0] in self.constants:
            return None
        if len(node.input) < 3 or self.constants.get(node.input[1], np.ones(2)).size != 1:
            return None
        return node.input[1], node.input[2]

    def drop_unused_constants(self) -> None:
        """Removes the initializers no node reads any more (the replaced biases and zero points)."""
        used = {name for node in self.proto.node for name in node.input}
        used.update(value.name for value in self.proto.output)
        kept = [tensor for tensor in self.proto.initializer if tensor.name in used]
        del self.proto.initializer[:]
        self.proto.initializer.extend(kept)

    def sort(self) -> None:
        """Puts the nodes back in an order where each comes after its inputs' producers."""
        done = {*self.constants, *(value.name for value in self.proto.input)}
        pending, ordered = list(self.proto.node), []
        while pending:
            ready = [all(not name or name in done for name in node.input) for node in pending]
            if not any(ready):
                raise ValueError("the graph has a cycle or an input nothing produces")
            ordered += [node for node, go in zip(pending, ready) if go]
            done.update(out for node, go in zip(pending, ready) if go for out in node.output)
            pending = [node for node, go in zip(pending, ready) if not go]
        del self.proto.node[:]
        self.proto.node.extend(ordered)


def _same(graph: _Graph, params) -> bool:
    """Whether every (scale, zero point) pair in `params` holds the same values."""
    values = {(float(graph.constants[s]), int(graph.constants[z]), graph.constants[z].dtype.str) for s, z in params}
    return len(values) == 1


def _requantize_data_movement(graph: _Graph) -> int:
    """Step 1: a QuantizeLinear -> DequantizeLinear pair after data movement whose inputs share one grid."""
    count = 0
    for node in list(graph.proto.node):  # in graph order, so a Concat sees its DepthToSpace input requantized
        if node.op_type not in DATA_MOVEMENT:
            continue
        params = [graph.activation_qdq(name) for name in node.input]
        users = graph.consumers.get(node.output[0], [])
        if not params or None in params or not _same(graph, params):
            continue
        if not users or any(user.op_type == "QuantizeLinear" for user in users):
            continue
        original = node.output[0]
        node.output[0] = graph.unique(f"{original}_float")
        graph.producer[node.output[0]] = node
        scale, zero = params[0]
        quantized = graph.add("QuantizeLinear", [node.output[0], scale, zero], f"{original}_quantized")
        graph.add("DequantizeLinear", [quantized.output[0], scale, zero], original, rename=False)
        count += 1
    return count


def _unsigned_activations(graph: _Graph) -> int:
    """Step 2: ReLU outputs quantized to int8 around 0 become uint8 from 0, with the same scale."""
    count, outputs = 0, {value.name for value in graph.proto.output}
    for node in list(graph.proto.node):
        if node.op_type != "QuantizeLinear" or len(node.input) < 3:
            continue
        if getattr(graph.producer.get(node.input[0]), "op_type", None) != "Relu" or node.output[0] in outputs:
            continue
        zero = graph.constants.get(node.input[2])
        pairs = graph.consumers.get(node.output[0], [])
        if zero is None or zero.dtype != np.int8 or zero.size != 1 or int(zero) != 0:
            continue
        if not pairs or any(
            d.op_type != "DequantizeLinear" or list(d.input[1:3]) != list(node.input[1:3]) for d in pairs
        ):
            continue
        if any(_unquantized_concat(graph, user) for d in pairs for user in graph.consumers.get(d.output[0], [])):
            continue  # under ONNX Runtime's optimisations such a Concat of uint8 inputs computed other values
        unsigned = graph.constant(f"{node.output[0]}_zero_point_u8", np.array(0, np.uint8))
        for user in (node, *pairs):
            user.input[2] = unsigned
        graph.forget_type(node.output[0])
        count += 1
    return count


def _unquantized_concat(graph: _Graph, node) -> bool:
    """Whether `node` is a Concat whose output no QuantizeLinear takes (step 1 could not requantize it)."""
    users = graph.consumers.get(node.output[0], [])
    return node.op_type == "Concat" and not any(user.op_type == "QuantizeLinear" for user in users)


def _int32_biases(graph: _Graph) -> int:
    """Step 3: float biases of convolutions with dequantized input and weights become int32 ones."""
    count = 0
    for node in list(graph.proto.node):
        if node.op_type != "Conv" or len(node.input) < 3 or node.input[2] not in graph.constants:
            continue
        activation, weights = graph.activation_qdq(node.input[0]), graph.producer.get(node.input[1])
        if activation is None or weights is None or weights.op_type != "DequantizeLinear":
            continue
        if weights.input[0] not in graph.constants or not _quantized_output(graph, node):
            continue  # a float32 convolution keeps its exact bias (step 4)
        weight_scale = graph.constants[weights.input[1]].astype(np.float64)
        axis = next((a.i for a in weights.attribute if a.name == "axis"), 1)
        if weight_scale.size > 1 and axis != 0:
            continue
        bias = graph.constants[node.input[2]].astype(np.float64)
        scale = (float(graph.constants[activation[0]]) * np.broadcast_to(weight_scale.reshape(-1), bias.shape)).astype(
            np.float32
        )
        if np.any(scale <= 0) or np.any(np.abs(bias / scale) >= 2**31 - 1):
            continue  # int32 cannot hold it: the float bias stays
        levels = np.round(bias / scale).astype(np.int32)
        name = node.input[2]
        inputs = [
            graph.constant(f"{name}_int32", levels),
            graph.constant(f"{name}_int32_scale", scale),
            graph.constant(f"{name}_int32_zero_point", np.zeros_like(levels)),
        ]
        node.input[2] = graph.add("DequantizeLinear", inputs, f"{name}_dequantized", axis=0).output[0]
        count += 1
    return count


def _float_weights(graph: _Graph) -> int:
    """Step 4: convolutions that stay float32 (no QuantizeLinear takes their output) get float32 weights.

    The weights are the values their DequantizeLinear computed; as a constant,
    ONNX Runtime lays them out once for its blocked float kernels, which it
    cannot do for weights computed at run time.
    """
    count = 0
    for node in list(graph.proto.node):
        if node.op_type != "Conv" or _quantized_output(graph, node):
            continue
        for position in range(1, len(node.input)):
            source = graph.producer.get(node.input[position])
            if source is None or source.op_type != "DequantizeLinear" or source.input[0] not in graph.constants:
                continue
            node.input[position] = graph.constant(f"{node.input[position]}_float", _dequantized(graph, source))
            count += position == 1
    return count


def _quantized_output(graph: _Graph, node) -> bool:
    """Whether a QuantizeLinear takes `node`'s output, directly or after one Relu."""
    users = graph.consumers.get(node.output[0], [])
    if len(users) == 1 and users[0].op_type == "Relu":
        users = graph.consumers.get(users[0].output[0], [])
    return bool(users) and all(user.op_type == "QuantizeLinear" for user in users)


def _dequantized(graph: _Graph, node) -> np.ndarray:
    """What the DequantizeLinear `node` of a constant computes: (levels - zero point) x scale, float32."""
    levels = graph.constants[node.input[0]].astype(np.float32)
    scale = graph.constants[node.input[1]].astype(np.float32)
    zero = graph.constants[node.input[2]].astype(np.float32) if len(node.input) > 2 else np.zeros_like(scale)
    if scale.ndim == 1 and levels.ndim > 1:  # per channel along `axis` (ONNX's default: 1)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1) % levels.ndim
        shape = [1] * levels.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return ((levels - zero) * scale).astype(np.float32)
