"""``runtime.manifest.onnx_header``: the metadata and graph inputs/outputs of an ONNX file, read
without onnx (the lean runtime has none), agree with what ``onnx`` itself reads."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.manifest import TensorSpec
from runtime.manifest.onnx_header import read_onnx_header

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def _model(tmp_path, external: bool = False, initializer_as_input: bool = False):
    weight = numpy_helper.from_array(np.arange(4096, dtype=np.float32).reshape(64, 64), "W")
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["N", 64]),
        helper.make_tensor_value_info("mask", TensorProto.UINT8, [1, None, 70, -1]),
    ]
    if initializer_as_input:  # IR < 4 graphs list their initializers as inputs too
        inputs.append(helper.make_tensor_value_info("W", TensorProto.FLOAT, [64, 64]))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "g",
        inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    helper.set_model_props(model, {"omama.direction": '"exo2ego"', "author": "ünïcode"})
    path = tmp_path / "m.onnx"
    onnx.save_model(model, str(path), save_as_external_data=external, location="m.onnx.data",
                    size_threshold=0)  # fmt: skip
    return path


@pytest.mark.parametrize("external", [False, True])
def test_header_matches_onnx(tmp_path, external):
    path = _model(tmp_path, external=external)
    header = read_onnx_header(path)
    loaded = onnx.load(str(path), load_external_data=False)
    assert header.metadata == {p.key: p.value for p in loaded.metadata_props}
    assert header.metadata["author"] == "ünïcode"
    assert header.inputs == (
        TensorSpec("x", ("N", 64), "float16"),
        TensorSpec("mask", (1, None, 70, -1), "uint8"),
    )
    assert header.outputs == (TensorSpec("y", ("N", 64), "float32"),)


def test_initializers_listed_as_inputs_are_left_out(tmp_path):
    header = read_onnx_header(_model(tmp_path, initializer_as_input=True))
    assert [spec.name for spec in header.inputs] == ["x", "mask"]


def test_what_is_not_an_onnx_file_reads_as_none(tmp_path):
    path = _model(tmp_path)
    data = path.read_bytes()
    for name, content in {
        "text.onnx": b"graph-ego" * 100,
        "truncated.onnx": data[: len(data) // 2],
        "empty.onnx": b"",
    }.items():
        (tmp_path / name).write_bytes(content)
        assert read_onnx_header(tmp_path / name) is None, name
    assert read_onnx_header(tmp_path / "absent.onnx") is None
