"""register() refuses files that are not what they claim to be, before storing anything."""

from __future__ import annotations

import json
import pickle
import sys

import pytest

from fastml.cli import main
from fastml.errors import InvalidInput

from .onnx_files import onnx_model_bytes


def _nothing_stored(reg, home) -> bool:
    files = [p for p in (home / "artifacts").rglob("*") if p.is_file()] if (home / "artifacts").exists() else []
    return files == [] and reg.list_models() == [] and reg.events() == []


def _contrib_model(path):
    """A model using an ONNX Runtime contrib operator (as ORT-optimized files do): onnx.checker cannot
    judge the com.microsoft domain, ONNX Runtime loads it."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Gelu", ["x"], ["y"], domain="com.microsoft")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize(
    "content, problem",
    [
        (b"hello world!", "does not parse"),  # the 12-byte text file
        (b"\x08\x07" * 32, "no graph with outputs"),  # parses as a protobuf, but is no model
        (b"", "is empty"),
    ],
)
def test_a_file_that_is_not_an_onnx_model_is_refused_naming_it(reg, fastml_home, tmp_path, content, problem):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(content)
    with pytest.raises(InvalidInput, match=problem) as err:
        reg.register("churn", bad, actor="ana")
    assert str(bad) in str(err.value)
    assert _nothing_stored(reg, fastml_home)


def test_a_graph_onnx_runtime_cannot_load_is_refused(reg, fastml_home, tmp_path):
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["missing"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(model.SerializeToString())
    with pytest.raises(InvalidInput, match=r"is not a loadable ONNX model .*'missing'"):
        reg.register("churn", bad, actor="ana")
    assert _nothing_stored(reg, fastml_home)


def test_contrib_operators_that_onnx_runtime_loads_are_accepted(reg, tmp_path):
    mv = reg.register("churn", _contrib_model(tmp_path / "optimized.onnx"), actor="ana")
    assert mv.version == "1.0.0"


def test_without_the_onnx_package_onnx_runtime_decides(reg, tmp_path, monkeypatch):
    good = tmp_path / "good.onnx"
    good.write_bytes(onnx_model_bytes("g"))
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx -> ImportError
    bad = tmp_path / "text.onnx"
    bad.write_text("hello world!")
    with pytest.raises(InvalidInput, match=r"text\.onnx' is not a loadable ONNX model .*ONNX Runtime"):
        reg.register("churn", bad, actor="ana")
    assert reg.register("churn", good, actor="ana").version == "1.0.0"


@pytest.mark.parametrize(
    "name, content, problem",
    [
        ("model.pkl", b"pickled sklearn model", "is not a pickle"),
        ("model.pt", b"torch weights?", "is not a zip archive or a pickle"),
        ("card.json", b"{not json", "is not JSON"),
        ("weights.onnx", b"hello world!", "is not an ONNX model"),
        ("weights.bin", b"", "is empty"),
    ],
)
def test_a_source_artifact_is_checked_by_its_suffix_and_nothing_is_stored(
    reg, fastml_home, artifact, tmp_path, name, content, problem
):
    src = tmp_path / name
    src.write_bytes(content)
    with pytest.raises(InvalidInput, match=problem) as err:
        reg.register("churn", artifact(), source_artifact=src, actor="ana")
    assert str(src) in str(err.value)
    assert _nothing_stored(reg, fastml_home)  # the valid model was not stored either


def test_source_artifacts_that_are_what_they_say_are_accepted(reg, artifact, tmp_path):
    import zipfile

    cases = {
        "model.pkl": pickle.dumps([1, 2], protocol=5),
        "card.json": json.dumps({"a": 1}).encode(),
        "w.bin": b"\x00\x01",
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
    with zipfile.ZipFile(tmp_path / "model.pt", "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"w": 1}))
    for i, name in enumerate([*cases, "model.pt"]):
        mv = reg.register("churn", artifact(str(i)), source_artifact=tmp_path / name, actor="ana")
        assert reg.source_artifact_path(mv.ref).read_bytes() == (tmp_path / name).read_bytes()


def test_cli_refuses_a_text_file_in_one_line(fastml_home, tmp_path, capsys):
    bad = tmp_path / "model.onnx"
    bad.write_text("hello world!")
    assert main(["registry", "register", "churn", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fastml: error: InvalidInput: artifact ") and str(bad) in err
