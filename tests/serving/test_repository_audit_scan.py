"""How a model repository's directories become served versions: only canonical version numbers, never a lower
version in place of a broken highest one, and a config.toml that cannot be read fails its model by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from fastml.errors import FastMLError, InvalidInput
from fastml.serving.manager import ModelManager
from fastml.serving.repository import read_config, scan_model_dir, scan_repository, scan_target


def _onnx(path: Path, scale: float) -> None:
    """y = scale * x, x FP32 [-1, 4]: the scale tells which file answered."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])
    c = helper.make_tensor("c", TensorProto.FLOAT, [], [scale])
    graph = helper.make_graph([helper.make_node("Mul", ["x", "c"], ["y"])], "g", [x], [y], [c])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def _file(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not read by a scan")
    return path


def test_latest_is_numeric_order_and_each_source_points_at_its_own_directory(tmp_path):
    for v in ("9", "10", "2"):
        _file(tmp_path / "m" / v / "model.onnx")
    (tmp_path / "m" / "config.toml").write_text('version_policy = "all"\n')
    sources = scan_model_dir(tmp_path / "m")
    assert [s.version for s in sources] == ["2", "9", "10"]
    assert [s.target for s in sources] == [str(tmp_path / "m" / v / "model.onnx") for v in ("2", "9", "10")]
    (tmp_path / "m" / "config.toml").unlink()
    assert [(s.version, s.target) for s in scan_model_dir(tmp_path / "m")] == [
        ("10", str(tmp_path / "m" / "10" / "model.onnx"))
    ]


@pytest.mark.parametrize("name", ["01", "010", "0", "00", "99999999999999999999"])
def test_a_digit_directory_that_is_not_a_version_fails_the_model_naming_it(tmp_path, name):
    # Before: "01" was served as version 1 from <model>/1/model.onnx (a file that is not there), "010" as
    # version 10 ahead of a real version 9, and "0" as a version though versions start at 1.
    _file(tmp_path / "m" / "9" / "model.onnx")
    bad = _file(tmp_path / "m" / name / "model.onnx")
    found, failed = scan_repository(tmp_path)
    assert found == {}
    assert list(failed) == ["m"]
    assert f"version directory {name!r}" in failed["m"] and str(bad) in failed["m"]


def test_one_and_zero_one_are_not_one_version_twice(tmp_path):
    _file(tmp_path / "m" / "1" / "model.onnx")
    _file(tmp_path / "m" / "01" / "model.onnx")
    (tmp_path / "m" / "config.toml").write_text('version_policy = "all"\n')
    with pytest.raises(InvalidInput, match="'01'"):
        scan_model_dir(tmp_path / "m")


@pytest.mark.parametrize("name", ["\u00b2", "\u0669", "1a", "-1", "v2", "warmup"])
def test_names_that_are_not_ascii_digits_are_not_versions(tmp_path, name):
    # Before: "²" stopped the whole scan with a ValueError (a traceback at serve) and "٩" was read as version 9
    # at <model>/9/model.onnx, a file that is not there, ahead of the real version 3.
    _file(tmp_path / "m" / "3" / "model.onnx")
    _file(tmp_path / "m" / name / "model.onnx")
    found, failed = scan_repository(tmp_path)
    assert failed == {}
    assert [(s.version, s.target) for s in found["m"]] == [("3", str(tmp_path / "m" / "3" / "model.onnx"))]


def test_highest_version_without_model_file_is_reported_not_replaced_by_a_lower_one(tmp_path):
    # Before: version 1 was served, without a word, as the "latest" of a repository whose newest is 2.
    _file(tmp_path / "m" / "1" / "model.onnx")
    (tmp_path / "m" / "2").mkdir()
    found, failed = scan_repository(tmp_path)
    assert found == {}
    missing = tmp_path / "m" / "2" / "model.onnx"
    assert failed == {"m": f"version 2: {missing} is not a file (each version holds a model.onnx)"}
    with pytest.raises(InvalidInput, match=r"model 'm': version 2: .*m/2/model\.onnx is not a file"):
        scan_target(str(tmp_path))


def test_model_file_that_is_a_directory_is_reported(tmp_path):
    (tmp_path / "m" / "4" / "model.onnx").mkdir(parents=True)
    found, failed = scan_repository(tmp_path)
    assert found == {} and failed["m"].startswith("version 4: ") and "model.onnx is not a file" in failed["m"]


def test_all_policy_reports_a_lower_version_without_model_file(tmp_path):
    _file(tmp_path / "m" / "2" / "model.onnx")
    (tmp_path / "m" / "1").mkdir()
    (tmp_path / "m" / "config.toml").write_text('version_policy = "all"\n')
    with pytest.raises(InvalidInput, match="version 1: "):
        scan_model_dir(tmp_path / "m")


def test_manager_does_not_serve_the_older_version_when_the_newest_is_incomplete(tmp_path):
    repo = tmp_path / "repo"
    _onnx(repo / "m" / "1" / "model.onnx", 1.0)
    _onnx(repo / "ok" / "1" / "model.onnx", 3.0)
    (repo / "m" / "2").mkdir()
    mgr = ModelManager([str(repo)])
    try:
        failures = mgr.load_all()
        assert [(n, v) for n, v, _ in failures] == [("m", "")]
        assert "version 2" in failures[0][2] and str(repo / "m" / "2" / "model.onnx") in failures[0][2]
        assert "m" not in mgr.models and set(mgr.models) == {"ok"}
        out = mgr.get("ok").model.predict({"x": np.ones((1, 4), np.float32)})
        np.testing.assert_array_equal(out["y"], np.full((1, 4), 3.0, np.float32))
        with pytest.raises(FastMLError, match="version 2"):
            mgr.get("m")
    finally:
        mgr.close()


def test_unreadable_config_fails_its_model_only(tmp_path):
    # Before: a config.toml that is not UTF-8 raised UnicodeDecodeError out of the scan (a traceback that
    # stopped every model), and a config.toml that is a directory was ignored: the model served the defaults.
    _file(tmp_path / "a" / "1" / "model.onnx")
    (tmp_path / "a" / "config.toml").write_bytes(b"max_batch_size = 8\n\xff\xfe\n")
    _file(tmp_path / "b" / "1" / "model.onnx")
    (tmp_path / "b" / "config.toml").mkdir()
    _file(tmp_path / "c" / "1" / "model.onnx")
    found, failed = scan_repository(tmp_path)
    assert list(found) == ["c"]
    assert failed == {
        "a": f"{tmp_path / 'a' / 'config.toml'}: not UTF-8 text "
        "('utf-8' codec can't decode byte 0xff in position 19: invalid start byte)",
        "b": f"{tmp_path / 'b' / 'config.toml'}: not a file",
    }
    with pytest.raises(InvalidInput, match="not UTF-8"):
        read_config(tmp_path / "a")


@pytest.mark.parametrize("name", ["my model", "caf\u00e9", "-lead", "a" * 129])
def test_a_directory_whose_name_is_not_a_model_name_fails_by_that_name(tmp_path, name):
    # Before: served at startup under a name that every load, unload or ready request then refused.
    _onnx(tmp_path / name / "1" / "model.onnx", 2.0)
    _onnx(tmp_path / "good" / "1" / "model.onnx", 3.0)
    found, failed = scan_repository(tmp_path)
    assert list(found) == ["good"]
    assert list(failed) == [name] and "invalid model name" in failed[name]
