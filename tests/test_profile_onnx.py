"""scripts/profile_onnx.py: ONNX Runtime's profile, summed per operator type and split at the U-Net."""

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from scripts.profile_onnx import main, profile  # noqa: E402


def _two_part_model(path, size=32):
    """A convolution under the U-Net's name scope, then a multiplication outside it."""
    kernel = numpy_helper.from_array(np.ones((4, 1, 3, 3), np.float32), "kernel")
    nodes = [
        helper.make_node("Transpose", ["images"], ["nchw"], name="riad_detector/to_nchw", perm=[0, 3, 1, 2]),
        helper.make_node(
            "Conv",
            ["nchw", "kernel"],
            ["riad_unet/enc1_conv:0"],
            name="riad_detector/riad_unet/enc1_conv",
            pads=[1] * 4,
        ),
        helper.make_node("Mul", ["riad_unet/enc1_conv:0"] * 2, ["maps"], name="riad_detector/scoring/mul"),
    ]
    graph = helper.make_graph(
        nodes,
        "two_parts",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [None, size, size, 1])],
        [helper.make_tensor_value_info("maps", TensorProto.FLOAT, [None, 4, size, size])],
        [kernel],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_profile_sums_kernels_per_operator_and_finds_the_unet_share(tmp_path):
    path = _two_part_model(tmp_path / "model.onnx")
    result = profile(path, batch=2, iters=3, threads=1)
    ops = result["ops_ms_per_call"]
    assert {"Conv", "Mul", "Transpose"} <= set(ops)
    assert result["ms_per_call"] == pytest.approx(sum(ops.values()))
    assert 0 < result["unet_ms_per_call"] < result["ms_per_call"]
    assert result["unet_ms_per_call"] == pytest.approx(ops["Conv"], rel=1e-6)
    reorders = sum(ms for op, ms in ops.items() if op.startswith("Reorder"))  # blocked layouts, where ORT uses them
    assert result["reorder_ms_per_call"] == pytest.approx(reorders)
    nodes = result["nodes_ms_per_call"]
    assert [ms for _, _, ms in nodes] == sorted((ms for _, _, ms in nodes), reverse=True)
    assert sum(ms for _, _, ms in nodes) == pytest.approx(result["ms_per_call"])
    assert ("riad_detector/scoring/mul", "Mul") in {(name, op) for name, op, _ in nodes}


def test_main_prints_a_table_and_refuses_a_missing_model(tmp_path, capsys):
    path = _two_part_model(tmp_path / "model.onnx")
    main([str(path), "--iters", "2", "--threads", "1", "--json-file", str(tmp_path / "p.json")])
    out = capsys.readouterr().out
    assert "| of which in the U-Net |" in out and (tmp_path / "p.json").is_file()
    assert "slowest nodes" not in out
    main([str(path), "--iters", "2", "--threads", "1", "--nodes", "1"])
    listed = capsys.readouterr().out.split("the 1 slowest nodes, ms per call\n")[1].strip().splitlines()
    assert len(listed) == 1 and listed[0].split()[1] in {"Conv", "Mul", "Transpose"}
    with pytest.raises(SystemExit, match="missing.onnx: no such model file"):
        main([str(tmp_path / "missing.onnx")])
