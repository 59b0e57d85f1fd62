"""`riad-tf export RUN --triton REPO`: the model repository's layout, config.pbtxt against the ONNX, scores, re-runs.

Triton itself is not run here (there is none on this machine). Instead the
configuration is parsed strictly as Triton's `ModelConfig` (protobuf text
format, against the fields of Triton's model_config.proto that an export may
use), compared with the ONNX model's own inputs and outputs, and the ONNX
model in the repository is run with ONNX Runtime, Triton's backend for it.
"""

import functools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edge.metadata import ModelMetadata, file_sha256
from edge.runner import Runner
from riad_tf.cli import main

SIZE = 32
THRESHOLDS = {"image": 0.25, "region": 0.3}
ONNX_TO_TRITON = {"float32": "TYPE_FP32", "uint8": "TYPE_UINT8"}

# Fields of Triton's inference.ModelConfig (model_config.proto) that an export may write, with their numbers:
# message -> [(number, name, type, repeated)]; a type starting with "." is a message or an enum of this file.
MODEL_CONFIG_FIELDS = {
    "ModelConfig": [
        (1, "name", "string", False),
        (2, "platform", "string", False),
        (17, "backend", "string", False),
        (3, "version_policy", ".inference.ModelVersionPolicy", False),
        (4, "max_batch_size", "int32", False),
        (5, "input", ".inference.ModelInput", True),
        (6, "output", ".inference.ModelOutput", True),
        (11, "dynamic_batching", ".inference.ModelDynamicBatching", False),
        (7, "instance_group", ".inference.ModelInstanceGroup", True),
    ],
    "ModelVersionPolicy": [(3, "specific", ".inference.Specific", False)],
    "Specific": [(1, "versions", "int64", True)],
    "ModelInput": [
        (1, "name", "string", False),
        (2, "data_type", ".inference.DataType", False),
        (4, "dims", "int64", True),
        (5, "reshape", ".inference.ModelTensorReshape", False),
    ],
    "ModelOutput": [
        (1, "name", "string", False),
        (2, "data_type", ".inference.DataType", False),
        (3, "dims", "int64", True),
        (5, "reshape", ".inference.ModelTensorReshape", False),
    ],
    "ModelTensorReshape": [(1, "shape", "int64", True)],
    "ModelDynamicBatching": [
        (1, "preferred_batch_size", "int32", True),
        (2, "max_queue_delay_microseconds", "uint64", False),
    ],
    "ModelInstanceGroup": [
        (1, "name", "string", False),
        (4, "kind", ".inference.Kind", False),
        (2, "count", "int32", False),
        (3, "gpus", "int32", True),
    ],
}
MODEL_CONFIG_ENUMS = {
    "DataType": ["TYPE_INVALID", "TYPE_BOOL", "TYPE_UINT8", "TYPE_UINT16", "TYPE_UINT32", "TYPE_UINT64", "TYPE_INT8"]
    + ["TYPE_INT16", "TYPE_INT32", "TYPE_INT64", "TYPE_FP16", "TYPE_FP32", "TYPE_FP64", "TYPE_STRING", "TYPE_BF16"],
    "Kind": ["KIND_AUTO", "KIND_GPU", "KIND_CPU", "KIND_MODEL"],
}


@functools.cache  # one pool for the session: its message classes live as long as it does
def _model_config_class():
    """A protobuf message class with the `MODEL_CONFIG_FIELDS` of Triton's ModelConfig (proto3, package inference)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    field = descriptor_pb2.FieldDescriptorProto
    scalars = {"string": field.TYPE_STRING, "int32": field.TYPE_INT32, "int64": field.TYPE_INT64}
    scalars["uint64"] = field.TYPE_UINT64
    proto = descriptor_pb2.FileDescriptorProto(name="model_config_subset.proto", package="inference", syntax="proto3")
    for name, values in MODEL_CONFIG_ENUMS.items():
        proto.enum_type.add(name=name).value.extend(
            descriptor_pb2.EnumValueDescriptorProto(name=value, number=i) for i, value in enumerate(values)
        )
    for name, fields in MODEL_CONFIG_FIELDS.items():
        message = proto.message_type.add(name=name)
        for number, field_name, kind, repeated in fields:
            added = message.field.add(name=field_name, number=number)
            added.label = field.LABEL_REPEATED if repeated else field.LABEL_OPTIONAL
            if kind in scalars:
                added.type = scalars[kind]
            else:
                added.type = field.TYPE_ENUM if kind.split(".")[-1] in MODEL_CONFIG_ENUMS else field.TYPE_MESSAGE
                added.type_name = kind
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelConfig"))


def _parse_config(text: str):
    """config.pbtxt's text -> a ModelConfig message; text_format raises on unknown fields, bad values or syntax."""
    from google.protobuf import text_format

    return text_format.Parse(text, _model_config_class()())


def _enum_name(message, field_name: str) -> str:
    """The name of an enum field's value (TYPE_FP32, KIND_GPU)."""
    enum = message.DESCRIPTOR.fields_by_name[field_name].enum_type
    return enum.values_by_number[getattr(message, field_name)].name


def _textures(count, seed):
    from riad_tf.synthetic import woven_texture

    rng = np.random.default_rng(seed)
    return np.stack([woven_texture(SIZE, rng) for _ in range(count)]).astype(np.float32)


def _export(*args):
    """`riad-tf export ARGS --json` -> the JSON it printed (fails the test on a non-zero exit)."""
    result = CliRunner().invoke(main, ["export", *map(str, args), "--json"])
    assert result.exit_code == 0, result.output
    return {key: Path(value) for key, value in json.loads(result.stdout.strip().splitlines()[-1]).items()}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory with a tiny untrained detector and thresholds (what `riad-tf train` leaves, smaller)."""
    import keras

    from riad_tf.config import RiadConfig
    from riad_tf.model import build_unet
    from riad_tf.run import save_model, save_thresholds

    keras.utils.set_random_seed(0)
    config = RiadConfig(image_size=(SIZE, SIZE), widths=(4, 8, 8, 16, 16), ks=(2, 4), smoothing=5, seed=1)
    run = tmp_path_factory.mktemp("run")
    save_model(run, build_unet(config.input_shape, config.widths), config)
    save_thresholds(run, THRESHOLDS)
    return run


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    """One call: the plain ONNX (fixed batch 1) in --out and the Triton repository, max batch 4."""
    out, repository = tmp_path_factory.mktemp("plain"), tmp_path_factory.mktemp("triton")
    return _export(run_dir, "--out", out, "--onnx", "--triton", repository, "--triton-max-batch", 4)


@pytest.fixture(scope="module")
def images():
    return _textures(3, seed=11)


def _onnx_tensors(path):
    """[(name, numpy dtype name, dims with None for a symbolic one)] of the ONNX model's inputs, then its outputs."""
    import onnx
    from onnx import helper

    graph = onnx.load(str(path)).graph
    values = [*graph.input, *graph.output]
    return [
        (
            value.name,
            np.dtype(helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)).name,
            [dim.dim_value if dim.HasField("dim_value") else None for dim in value.type.tensor_type.shape.dim],
        )
        for value in values
    ]


def _check_config_matches_onnx(config, onnx_path):
    """Every config input/output equals the ONNX model's: names in order, data types, dims after the batch."""
    declared = [*config.input, *config.output]
    tensors = _onnx_tensors(onnx_path)
    assert [t.name for t in declared] == [name for name, _, _ in tensors]
    for tensor, (name, dtype, dims) in zip(declared, tensors):
        assert dims[0] is None, f"{name}: the ONNX batch dimension is fixed ({dims})"
        model_dims = list(tensor.reshape.shape) if tensor.HasField("reshape") else list(tensor.dims)
        assert model_dims == dims[1:], name
        assert list(tensor.dims) == (dims[1:] or [1]), name  # a [batch] tensor is [1] to clients
        assert _enum_name(tensor, "data_type") == ONNX_TO_TRITON[dtype], name


def test_repository_layout_and_metadata(exported):
    model = exported["triton_model"]
    model_dir = model.parents[1]
    assert exported["triton_config"] == model_dir / "config.pbtxt"
    assert sorted(p.name for p in model_dir.iterdir()) == ["1", "config.pbtxt", "model.onnx.json"]
    assert [p.name for p in (model_dir / "1").iterdir()] == ["model.onnx"] and model.name == "model.onnx"
    assert model_dir.name == "riad" and [p.name for p in model_dir.parent.iterdir()] == ["riad"]
    metadata = ModelMetadata.from_dict(json.loads(exported["triton_metadata"].read_text()))
    assert exported["triton_metadata"] == model_dir / "model.onnx.json"
    assert metadata.model_file == "1/model.onnx" and metadata.sha256 == file_sha256(model)
    assert (metadata.format, metadata.graph, metadata.precision) == ("onnx", "detector", "fp32")
    assert metadata.input_shape == (None, SIZE, SIZE, 3) and metadata.input_dtype == "float32"
    assert metadata.thresholds == THRESHOLDS and metadata.verification["max_abs_diff_maps"] <= 1e-3


def test_config_parses_as_triton_model_config_and_matches_the_onnx(exported):
    text = exported["triton_config"].read_text()
    print(text)
    config = _parse_config(text)
    assert (config.name, config.platform, config.max_batch_size) == ("riad", "onnxruntime_onnx", 4)
    assert list(config.version_policy.specific.versions) == [1]
    assert list(config.dynamic_batching.preferred_batch_size) == [2, 4]
    assert config.dynamic_batching.max_queue_delay_microseconds > 0
    assert [_enum_name(group, "kind") for group in config.instance_group] == ["KIND_GPU"]
    _check_config_matches_onnx(config, exported["triton_model"])
    # And what the detector's graph is: images (B, H, W, 3) -> maps (B, H, W), scores (B,).
    assert [(t.name, list(t.dims)) for t in [*config.input, *config.output]] == [
        ("images", [SIZE, SIZE, 3]),
        ("maps", [SIZE, SIZE]),
        ("scores", [1]),
    ]
    assert [t.HasField("reshape") for t in config.output] == [False, True]


def test_strict_parser_rejects_what_triton_would(tmp_path):
    from google.protobuf import text_format

    good = 'name: "riad"\nmax_batch_size: 2\ninput [ { name: "images" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
    for bad in (
        good + "max_batch: 4\n",  # no such field
        good.replace("TYPE_FP32", "TYPE_FLOAT32"),  # no such data type
        good + 'instance_group [ { kind: "KIND_GPU" } ]\n',  # an enum is not a string
        good.replace("dims: [ 4 ]", "dims: [ 4.5 ]"),
        good.replace("] } ]", "] }"),  # unclosed list
        good + 'name: "twice"\n',  # a single field given twice
    ):
        with pytest.raises(text_format.ParseError):
            _parse_config(bad)
    assert list(_parse_config(good).input[0].dims) == [4]


def test_repository_model_runs_batches_1_and_3_like_the_plain_onnx(exported, images):
    import onnxruntime as ort

    plain = Runner.open(exported["onnx"])
    assert plain.metadata.batch == 1  # the plain export keeps its fixed batch
    plain_maps, plain_scores = plain(images)
    session = ort.InferenceSession(str(exported["triton_model"]), providers=["CPUExecutionProvider"])
    maps, scores = session.run(["maps", "scores"], {"images": images})
    singles = [session.run(["scores"], {"images": image[None]})[0] for image in images]
    print(f"Triton model vs plain ONNX: max |scores| diff {np.abs(scores - plain_scores).max():.2e}")
    assert maps.shape == (3, SIZE, SIZE) and scores.shape == (3,) and np.ptp(scores) > 0
    np.testing.assert_allclose(scores, plain_scores, rtol=0, atol=1e-5)
    np.testing.assert_allclose(maps, plain_maps, rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.concatenate(singles), plain_scores, rtol=0, atol=1e-5)
    alone = Runner.open(exported["triton_model"])  # no JSON beside it: the metadata inside the model
    assert alone.thresholds == plain.thresholds
    np.testing.assert_allclose(alone(images)[1], plain_scores, rtol=0, atol=1e-5)


def test_rerun_replaces_the_version(exported, run_dir, images, tmp_path):
    import onnxruntime as ort

    repository = tmp_path / "repository"
    shutil.copytree(exported["triton_model"].parents[2], repository)
    model_dir = repository / "riad"
    (model_dir / "1" / "stale.onnx").write_bytes(b"from an older export")
    old_sha = file_sha256(model_dir / "1" / "model.onnx")

    written = _export(
        run_dir, "--triton", repository, "--uint8-input", "--triton-instance", "cpu", "--triton-max-batch", 1
    )
    assert set(written) == {"triton_model", "triton_config", "triton_metadata"}  # no --out: only Triton
    assert written["triton_model"] == model_dir / "1" / "model.onnx"
    assert sorted(p.name for p in model_dir.iterdir()) == ["1", "config.pbtxt", "model.onnx.json"]  # no temporaries
    assert [p.name for p in (model_dir / "1").iterdir()] == ["model.onnx"]
    metadata = ModelMetadata.from_dict(json.loads(written["triton_metadata"].read_text()))
    new_sha = file_sha256(written["triton_model"])
    assert metadata.sha256 == new_sha != old_sha and metadata.input_dtype == "uint8"
    config = _parse_config(written["triton_config"].read_text())
    _check_config_matches_onnx(config, written["triton_model"])
    assert _enum_name(config.input[0], "data_type") == "TYPE_UINT8"
    assert config.max_batch_size == 1 and not config.dynamic_batching.preferred_batch_size
    assert [_enum_name(group, "kind") for group in config.instance_group] == ["KIND_CPU"]
    as_uint8 = np.round(images * 255).astype(np.uint8)
    session = ort.InferenceSession(str(written["triton_model"]), providers=["CPUExecutionProvider"])
    scores = session.run(["scores"], {"images": as_uint8})[0]
    expected = Runner.open(exported["onnx"])(as_uint8.astype(np.float32) / 255)[1]
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "args, exit_code, message",
    [
        (["--triton", "{tmp}/repo", "--bare-unet"], 2, "--bare-unet"),
        (["--triton", "{tmp}/repo", "--precision", "int8"], 2, "--precision"),
        (["--onnx", "--triton", "{tmp}/repo"], 2, "--out"),
        ([], 2, "--triton"),
        (["--triton", "{tmp}/repo", "--triton-name", "../elsewhere"], 4, "model name"),
        (["--triton", "{tmp}/repo", "--triton-max-batch", "0"], 2, "--triton-max-batch"),
    ],
)
def test_bad_triton_arguments_stop_before_any_conversion(run_dir, tmp_path, args, exit_code, message):
    result = CliRunner().invoke(main, ["export", str(run_dir), *(a.format(tmp=tmp_path) for a in args)])
    assert result.exit_code == exit_code and message in result.output, result.output
    assert not list(tmp_path.rglob("*.onnx")) and not list(tmp_path.rglob("config.pbtxt"))


def test_config_refuses_an_onnx_model_with_a_fixed_batch(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from riad_tf.export import ExportError
    from riad_tf.export.triton import model_config

    def identity(batch):
        value = helper.make_tensor_value_info
        graph = helper.make_graph(
            [helper.make_node("Identity", ["x"], ["y"])],
            "g",
            [value("x", TensorProto.FLOAT, [batch, 5])],
            [value("y", TensorProto.FLOAT, [batch, 5])],
        )
        path = tmp_path / f"{batch}.onnx"
        onnx.save(helper.make_model(graph), str(path))
        return path

    config = model_config(identity("batch"), "m", 2, "KIND_CPU", ((2,), 100))
    assert [list(t.dims) for t in _parse_config(config).input] == [[5]]
    with pytest.raises(ExportError, match="not a dynamic batch"):
        model_config(identity(2), "m", 2, "KIND_CPU", ((2,), 100))
