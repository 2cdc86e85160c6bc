"""What an ONNX file says about itself, read without loading it: its ``metadata_props`` and
the names, shapes and dtypes of its graph inputs and outputs.

The runtime cross-checks ``manifest.json`` against these on every run
(:mod:`runtime.manifest.facts`), so reading them must stay cheap and torch-free (the
lean runtime has no ``onnx`` package). An ONNX file is one protobuf ``ModelProto``; this
module walks its wire format (varint keys, length-delimited fields) and *seeks past*
everything it does not need (nodes, initializer bytes), so a 350 MB backbone costs a few
thousand small reads, not a parse of its weights. Field numbers are those of ``onnx.proto``
(stable since IR version 3); the export tests compare this reader with ``onnx.load``.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from runtime.manifest.records import TensorSpec

# onnx.proto field numbers (ModelProto, GraphProto, ValueInfoProto, TypeProto, ...).
_MODEL_GRAPH, _MODEL_METADATA = 7, 14
_GRAPH_INITIALIZER, _GRAPH_INPUT, _GRAPH_OUTPUT = 5, 11, 12
_TENSOR_NAME = 8
_ENTRY_KEY, _ENTRY_VALUE = 1, 2
_VALUE_NAME, _VALUE_TYPE = 1, 2
_TYPE_TENSOR = 1
_TENSOR_ELEM_TYPE, _TENSOR_SHAPE = 1, 2
_SHAPE_DIM = 1
_DIM_VALUE, _DIM_PARAM = 1, 2
_VARINT, _FIXED64, _LEN, _FIXED32 = 0, 1, 2, 5

# TensorProto.DataType -> numpy dtype name (the manifest's TensorSpec.dtype).
ELEM_TYPES = {
    1: "float32",
    2: "uint8",
    3: "int8",
    4: "uint16",
    5: "int16",
    6: "int32",
    7: "int64",
    8: "str",
    9: "bool",
    10: "float16",
    11: "float64",
    12: "uint32",
    13: "uint64",
    16: "bfloat16",
}


class _Malformed(Exception):
    """Not a protobuf (or truncated): the file is not an ONNX model."""


@dataclass(frozen=True)
class OnnxHeader:
    """``metadata``: the model's ``metadata_props``; ``inputs`` / ``outputs``: the graph's
    (inputs that are initializers left out), as manifest :class:`TensorSpec`."""

    metadata: dict[str, str]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


def read_onnx_header(path: str | os.PathLike) -> OnnxHeader | None:
    """The header of the ONNX file at ``path``; None when it is not a readable ONNX model."""
    try:
        with open(path, "rb") as fh:
            return _read_model(fh, os.fstat(fh.fileno()).st_size)
    except (_Malformed, UnicodeDecodeError, OSError):
        return None


def _read_model(fh: BinaryIO, end: int) -> OnnxHeader:
    metadata: dict[str, str] = {}
    inputs: list[TensorSpec] = []
    outputs: list[TensorSpec] = []
    initializers: set[str] = set()
    for number, wire, value in _fields(fh, end):
        if number == _MODEL_METADATA and wire == _LEN:
            entry = dict(_strings(_read(fh, value)))
            metadata[entry.get(_ENTRY_KEY, "")] = entry.get(_ENTRY_VALUE, "")
        elif number == _MODEL_GRAPH and wire == _LEN:
            _read_graph(fh, value, inputs, outputs, initializers)
    if not inputs and not outputs and not metadata:
        raise _Malformed
    kept = tuple(spec for spec in inputs if spec.name not in initializers)
    return OnnxHeader(metadata, kept, tuple(outputs))


def _read_graph(fh: BinaryIO, span, inputs: list, outputs: list, initializers: set) -> None:
    start, length = span
    for number, wire, value in _fields(fh, start + length):
        if wire != _LEN:
            continue
        if number == _GRAPH_INPUT:
            inputs.append(_value_info(_read(fh, value)))
        elif number == _GRAPH_OUTPUT:
            outputs.append(_value_info(_read(fh, value)))
        elif number == _GRAPH_INITIALIZER:
            # Only its name: the tensor's bytes are skipped, not read.
            for field, kind, item in _fields(fh, value[0] + value[1]):
                if field == _TENSOR_NAME and kind == _LEN:
                    initializers.add(_read(fh, item).decode())


def _value_info(data: bytes) -> TensorSpec:
    fields = _message(data)
    name = next((v.decode() for n, v in fields if n == _VALUE_NAME), "")
    dtype, shape = "", []
    for number, value in fields:
        if number != _VALUE_TYPE:
            continue
        for kind, tensor in _message(value):
            if kind != _TYPE_TENSOR:
                continue
            for field, item in _message(tensor):
                if field == _TENSOR_ELEM_TYPE:
                    dtype = ELEM_TYPES.get(item, f"elem_type {item}")
                elif field == _TENSOR_SHAPE:
                    shape = [_dim(dim) for n, dim in _message(item) if n == _SHAPE_DIM]
    return TensorSpec(name, tuple(shape), dtype)


def _dim(data: bytes) -> int | str | None:
    """A ``TensorShapeProto.Dimension``: its name when it has one (as ``io_specs`` reads it),
    else its value, else None."""
    value: int | str | None = None
    for number, item in _message(data):
        if number == _DIM_PARAM and item:
            return item.decode()
        if number == _DIM_VALUE:
            value = item - (1 << 64) if item >= 1 << 63 else item  # int64, two's complement
    return value


# ------------------------------------------------------------------------ wire format


def _varint(fh: BinaryIO) -> int:
    result = shift = 0
    while True:
        byte = fh.read(1)
        if not byte or shift > 63:
            raise _Malformed
        result |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return result
        shift += 7


def _fields(fh: BinaryIO, end: int) -> Iterator[tuple[int, int, object]]:
    """``(field number, wire type, value)`` of the message that ends at offset ``end``:
    an int for varints, ``(offset, length)`` for length-delimited fields (the caller may
    read them; the walk continues after them either way), None for fixed-size fields."""
    while fh.tell() < end:
        key = _varint(fh)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _Malformed
        if wire == _VARINT:
            yield number, wire, _varint(fh)
        elif wire in (_FIXED64, _FIXED32):
            fh.seek(8 if wire == _FIXED64 else 4, io.SEEK_CUR)
            yield number, wire, None
        elif wire == _LEN:
            length = _varint(fh)
            start = fh.tell()
            if start + length > end:
                raise _Malformed
            yield number, wire, (start, length)
            fh.seek(start + length)
        else:
            raise _Malformed
    if fh.tell() != end:
        raise _Malformed


def _read(fh: BinaryIO, span) -> bytes:
    start, length = span
    fh.seek(start)
    return fh.read(length)


def _message(data: bytes) -> list[tuple[int, object]]:
    """The fields of a small message held in memory: ``(number, int | bytes)``."""
    fh = io.BytesIO(data)
    return [
        (number, _read(fh, value) if wire == _LEN else value)
        for number, wire, value in _fields(fh, len(data))
    ]


def _strings(data: bytes) -> Iterator[tuple[int, str]]:
    for number, value in _message(data):
        if isinstance(value, bytes):
            yield number, value.decode()
