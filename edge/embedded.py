"""The metadata a model file carries inside itself, so that the file alone is enough to run it.

`riad-tf export` puts a copy of the model's metadata (`edge.metadata`) into the
model file: an ONNX `metadata_props` entry, or a TFLite metadata buffer, both
under the name "riad-edge". The copy leaves out what describes the file itself
and so cannot be inside it (`FILE_FACTS`: its name, its sha256, the
verification measured after it was written). The JSON beside the model stays
the readable copy; `read_metadata` takes either and refuses a pair that
disagrees. TensorRT engines, built on the device, have only the JSON.

This module reads and writes the copy without the ONNX or TensorFlow
libraries, so a device can also recalibrate a model
(`edge.metadata.update_metadata`). The ONNX field is found in the protobuf
wire format (the graph is skipped, not read, and kept byte for byte when the
copy is replaced); the TFLite buffer goes through LiteRT's flatbuffer schema.

Example:

>>> model = embed(model_bytes, "onnx", embedded_payload(metadata))   # doctest: +SKIP
>>> read_embedded("riad.onnx")["config"]["ks"]                       # doctest: +SKIP
[2, 4, 8, 16]
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from pathlib import Path
from typing import Any, Iterator

KEY = "riad-edge"
FILE_FACTS = ("model_file", "sha256", "verification")
EMBEDDED_FORMATS = ("onnx", "tflite")
_ONNX_METADATA_PROPS = 14  # ModelProto.metadata_props (onnx.proto)


def embedded_payload(metadata) -> bytes:
    """The copy of `metadata` (an `edge.metadata.ModelMetadata`) to put inside its model file."""
    return json.dumps(comparable(metadata.to_dict()), sort_keys=True).encode()


def comparable(values: dict[str, Any]) -> dict[str, Any]:
    """Metadata values without the file facts, as JSON gives them back (lists, not tuples)."""
    return json.loads(json.dumps({k: v for k, v in values.items() if k not in FILE_FACTS}))


def embed(model: bytes, model_format: str, payload: bytes) -> bytes:
    """The model's bytes with `payload` (`embedded_payload`) inside, replacing an earlier copy.

    Args:
        model: an ONNX or TFLite model's bytes.
        model_format: "onnx" or "tflite".
        payload: the metadata copy.
    """
    if model_format == "onnx":
        return _onnx_with_prop(model, KEY, payload.decode())
    if model_format == "tflite":
        return _tflite_with_metadata(model, KEY, payload)
    raise ValueError(f"a {model_format} model cannot carry its metadata inside")


def read_embedded(path: str | os.PathLike) -> dict[str, Any] | None:
    """The metadata inside a model file, or None when it has none (or is not a model this reads).

    Raises:
        ValueError: the "riad-edge" entry is there but is not a JSON object.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        raw = _onnx_metadata_props(path).get(KEY)
    elif suffix == ".tflite":
        raw = _tflite_metadata(path).get(KEY)
    else:
        return None
    if raw is None:
        return None
    values = json.loads(raw)
    if not isinstance(values, dict):
        raise ValueError(f"the embedded {KEY} metadata is a JSON {type(values).__name__}, not an object")
    return values


# ----------------------------------------------------------------------------
# ONNX: one field of the protobuf, read in place


def _onnx_metadata_props(path: Path) -> dict[str, str]:
    """`ModelProto.metadata_props` as a dict; empty for a file that is not a readable protobuf."""
    if path.stat().st_size == 0:
        return {}
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        try:
            return {key: value for key, value, _ in _onnx_props(data)}
        except (ValueError, IndexError, UnicodeDecodeError):
            return {}


def _onnx_props(data) -> Iterator[tuple[str, str, tuple[int, int]]]:
    """(key, value, the entry's byte span) of every `metadata_props` entry of an ONNX model."""
    for field, wire, value, first in _protobuf_fields(data, 0, len(data)):
        if field == _ONNX_METADATA_PROPS and wire == 2:
            entry = {f: bytes(data[v[0] : v[1]]).decode() for f, w, v, _ in _protobuf_fields(data, *value) if w == 2}
            yield entry.get(1, ""), entry.get(2, ""), (first, value[1])


def _onnx_with_prop(model: bytes, key: str, value: str) -> bytes:
    """The ONNX model with `key: value` in `metadata_props`: an entry of that key dropped, the new one appended.

    Protobuf takes a message's fields in any order, so the rest of the file is kept byte for byte.
    """
    kept, start = [], 0
    for entry_key, _, (first, end) in _onnx_props(model):
        if entry_key == key:
            kept.append(model[start:first])
            start = end
    entry = _length_delimited(1, key.encode()) + _length_delimited(2, value.encode())
    return b"".join(kept) + model[start:] + _length_delimited(_ONNX_METADATA_PROPS, entry)


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _varint_bytes(field << 3 | 2) + _varint_bytes(len(payload)) + payload


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _protobuf_fields(data, start: int, end: int) -> Iterator[tuple[int, int, Any, int]]:
    """(field number, wire type, value, the field's first byte) of one message's fields in `data[start:end]`.

    Length-delimited values are given as (start, end) offsets, not read.
    """
    position = start
    while position < end:
        first = position
        key, position = _varint(data, position)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, position = _varint(data, position)
        elif wire == 2:
            size, position = _varint(data, position)
            value, position = (position, position + size), position + size
        elif wire in (1, 5):
            value, position = None, position + (8 if wire == 1 else 4)
        else:
            raise ValueError(f"protobuf wire type {wire}")
        if position > end:
            raise ValueError("a field runs past the end of its message")
        yield field, wire, value, first


def _varint(data, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7
        if shift > 63:
            raise ValueError("a varint longer than 10 bytes")


# ----------------------------------------------------------------------------
# TFLite: the model's metadata buffers


def _tflite_metadata(path: Path) -> dict[str, bytes]:
    """The TFLite model's metadata entries (name -> buffer bytes); empty for a file that is not TFLite."""
    from ai_edge_litert import schema_py_generated as schema

    data = path.read_bytes()
    if data[4:8] != b"TFL3":
        return {}
    entries = {}
    try:
        model = schema.Model.GetRootAs(data, 0)
        for index in range(model.MetadataLength()):
            entry = model.Metadata(index)
            values = model.Buffers(entry.Buffer()).DataAsNumpy()  # 0 for an empty buffer
            entries[entry.Name().decode()] = values.tobytes() if hasattr(values, "tobytes") else b""
    except (ValueError, IndexError, TypeError, AttributeError, struct.error, UnicodeDecodeError):
        return {}  # a damaged file: LiteRT names the damage when it loads it
    return entries


def _tflite_with_metadata(model: bytes, key: str, value: bytes) -> bytes:
    """The TFLite model with a metadata entry `key` holding `value` (an entry of that name replaced).

    Through LiteRT's flatbuffer schema (the object API): the model is unpacked and packed again.
    """
    import flatbuffers
    import numpy as np
    from ai_edge_litert import schema_py_generated as schema

    tree = schema.ModelT.InitFromPackedBuf(bytearray(model), 0)
    tree.metadata = tree.metadata or []
    entry = next((m for m in tree.metadata if m.name in (key, key.encode())), None)
    if entry is None:  # a new entry and buffer; a replaced entry keeps its buffer, so the file does not grow
        entry = schema.MetadataT()
        entry.name, entry.buffer = key, len(tree.buffers)
        tree.buffers.append(schema.BufferT())
        tree.metadata.append(entry)
    tree.buffers[entry.buffer].data = np.frombuffer(value, np.uint8)
    builder = flatbuffers.Builder(len(model) + len(value) + 1024)
    builder.Finish(tree.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())
