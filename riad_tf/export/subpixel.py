"""Transposed convolutions as sub-pixel convolutions: the same function, in operators int8 runtimes run fast.

The U-Net's decoder upsamples with stride-2 transposed convolutions
(`riad_tf.model`). A transposed convolution with stride s computes each of
the s x s output phases (the pixels at rows s*q + a, columns s*r + b) as an
ordinary convolution of the input with a subset of its kernel's taps. So
`subpixel_conv_transposes` replaces each ONNX `ConvTranspose` by one `Conv`
with s*s times the output channels (each phase's taps, zero elsewhere) and a
`DepthToSpace` (mode CRD) that interleaves the phases: the same numbers up to
float rounding.

Why: ONNX Runtime has no int8 kernel for `ConvTranspose` on the CPU. An int8
export left the decoder's four of them in float32 between DequantizeLinear and
QuantizeLinear; on a 2-core AVX2 CPU they took a third of the int8 model's
time. As a `Conv` each is quantized like the others, and its weights get a
scale per output phase and channel. Both int8 ONNX quantizers rewrite their
model first (`riad_tf.export.onnx.quantize_onnx`, `riad_tf.export.nncf_int8`);
the float32 ONNX is not rewritten: the 3 x 3 phase kernel
holds 2.25 times the taps of a 4 x 4 stride-2 kernel (the rest are zeros), and
in float32 the rewritten model was slower (`docs/deployment.md`).

Only transposed convolutions with equal strides, one group, no dilation,
explicit pads, a constant kernel and an output of exactly s times the input
(kernel - pads = stride, which is Keras's "same" padding) are rewritten; any
other is left as it is.

Example:

>>> import onnx
>>> from onnx import helper, numpy_helper
>>> kernel = numpy_helper.from_array(np.ones((2, 3, 4, 4), np.float32), "kernel")
>>> node = helper.make_node("ConvTranspose", ["x", "kernel"], ["y"], strides=[2, 2], pads=[1, 1, 1, 1])
>>> graph = helper.make_graph([node], "up", [helper.make_tensor_value_info("x", 1, [1, 2, 5, 5])],
...                           [helper.make_tensor_value_info("y", 1, [1, 3, 10, 10])], [kernel])
>>> model = helper.make_model(graph)
>>> subpixel_conv_transposes(model)
1
>>> [node.op_type for node in model.graph.node]
['Conv', 'DepthToSpace']
"""

from __future__ import annotations

import numpy as np


def subpixel_onnx(model: bytes) -> bytes:
    """`model` (ONNX bytes) with its transposed convolutions rewritten (`subpixel_conv_transposes`)."""
    import onnx

    proto = onnx.load_from_string(model)
    subpixel_conv_transposes(proto)
    return proto.SerializeToString()


def subpixel_conv_transposes(model) -> int:
    """Rewrites every `ConvTranspose` of `model` (an `onnx.ModelProto`) that `subpixel_kernel` takes, in place.

    Returns:
        How many were rewritten.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    constants = {tensor.name: tensor for tensor in graph.initializer}
    names = {node.name for node in graph.node}
    rewritten, replaced = [], set()
    for index, node in enumerate(graph.node):
        bias_name = node.input[2] if len(node.input) > 2 else ""
        if node.op_type != "ConvTranspose" or node.input[1] not in constants or bias_name not in {"", *constants}:
            continue
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        kernel = numpy_helper.to_array(constants[node.input[1]])
        found = subpixel_kernel(kernel, attributes)
        if found is None:
            continue
        conv_kernel, pads, stride = found
        name = _free_name(f"{node.name or node.output[0]}/subpixel", names)
        graph.initializer.append(numpy_helper.from_array(conv_kernel, f"{name}/kernel"))
        inputs = [node.input[0], f"{name}/kernel"]
        replaced |= {node.input[1], bias_name} - {""}
        if bias_name:
            bias = numpy_helper.to_array(constants[bias_name])
            graph.initializer.append(numpy_helper.from_array(np.repeat(bias, stride * stride), f"{name}/bias"))
            inputs.append(f"{name}/bias")
        conv = helper.make_node(
            "Conv", inputs, [f"{name}/phases"], name=f"{name}/conv", kernel_shape=list(conv_kernel.shape[2:]), pads=pads
        )
        interleave = helper.make_node(
            "DepthToSpace", [f"{name}/phases"], list(node.output), name=f"{name}/depth_to_space", blocksize=stride
        )
        interleave.attribute.append(helper.make_attribute("mode", "CRD"))
        rewritten.append((index, conv, interleave))
    for index, conv, interleave in reversed(rewritten):  # the same place in the graph's order
        del graph.node[index]
        graph.node.insert(index, interleave)
        graph.node.insert(index, conv)
    _drop_unused_constants(graph, replaced)
    return len(rewritten)


def subpixel_kernel(kernel: np.ndarray, attributes: dict) -> tuple[np.ndarray, list[int], int] | None:
    """The `Conv` kernel and pads whose output, interleaved by DepthToSpace (CRD), is the transposed convolution's.

    Args:
        kernel: the `ConvTranspose` kernel, `(C_in, C_out, kh, kw)`.
        attributes: its ONNX attributes.

    Returns:
        (kernel `(C_out * s * s, C_in, th, tw)`, Conv pads, stride s), or None
        when the node is not one this rewrite covers (module docstring).

    Example:

    >>> conv_kernel, pads, stride = subpixel_kernel(np.ones((8, 4, 4, 4)), {"strides": [2, 2], "pads": [1, 1, 1, 1]})
    >>> conv_kernel.shape, pads, stride
    ((16, 8, 3, 3), [1, 1, 1, 1], 2)
    """
    strides = list(attributes.get("strides", [1, 1]))
    pads = list(attributes.get("pads", [0, 0, 0, 0]))
    size = list(kernel.shape[2:])
    plain = (
        kernel.ndim == 4
        and len(set(strides)) == 1
        and attributes.get("group", 1) == 1
        and set(attributes.get("dilations", [1, 1])) == {1}
        and attributes.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")
        and "output_shape" not in attributes
        and not any(attributes.get("output_padding", []))
    )
    stride = strides[0]
    if not plain or stride < 2 or any(size[i] - pads[i] - pads[i + 2] != stride for i in (0, 1)):
        return None
    if any(not 0 <= pads[i] < size[i] for i in (0, 1)):
        return None
    taps = [_phase_taps(size[i], stride, pads[i]) for i in (0, 1)]
    channels_in, channels_out = kernel.shape[:2]
    conv_kernel = np.zeros((channels_out, stride, stride, channels_in, len(taps[0][0]), len(taps[1][0])), kernel.dtype)
    for a in range(stride):
        for b in range(stride):
            for t, kh in enumerate(taps[0][a]):
                for u, kw in enumerate(taps[1][b]):
                    if kh is not None and kw is not None:
                        conv_kernel[:, a, b, :, t, u] = kernel[:, :, kh, kw].T
    first = [-_first_offset(size[i], stride, pads[i]) for i in (0, 1)]
    last = [len(taps[i][0]) - 1 - first[i] for i in (0, 1)]
    return (
        conv_kernel.reshape(channels_out * stride * stride, channels_in, *conv_kernel.shape[4:]),
        first + last,
        stride,
    )


def _first_offset(size: int, stride: int, pad: int) -> int:
    """The lowest input offset (relative to the phase's row q) any output phase reads: ceil((pad - size + 1) / s)."""
    return -((size - 1 - pad) // stride)


def _phase_taps(size: int, stride: int, pad: int) -> list[list[int | None]]:
    """For each phase a, the kernel tap that the input at each offset d (lowest first) meets, or None.

    Output row s*q + a takes input row q + d through tap a + pad - s*d (when it is inside the kernel).
    """
    first, last = _first_offset(size, stride, pad), (stride - 1 + pad) // stride
    return [
        [tap if 0 <= (tap := a + pad - stride * d) < size else None for d in range(first, last + 1)]
        for a in range(stride)
    ]


def _free_name(name: str, taken: set[str]) -> str:
    """`name`, or `name_2`, `name_3`, ... : the first not in `taken` (which it joins)."""
    free, count = name, 1
    while free in taken:
        count += 1
        free = f"{name}_{count}"
    taken.add(free)
    return free


def _drop_unused_constants(graph, replaced: set[str]) -> None:
    """Removes the `replaced` kernels and biases that no node reads any more."""
    used = {name for node in graph.node for name in node.input} | {value.name for value in graph.output}
    kept = [tensor for tensor in graph.initializer if tensor.name not in replaced or tensor.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
