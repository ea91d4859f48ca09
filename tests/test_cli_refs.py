"""A bare model name is a reference to its highest live version (MLflow's models:/name/latest)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tiny_models import tiny_onnx

from fastml.cli import main


@pytest.fixture
def churn(tmp_path, fastml_home):
    from fastml.registry import Registry

    with Registry() as reg:
        reg.register("churn", tiny_onnx(tmp_path / "a.onnx", 1.0), actor="ana")
        reg.register("churn", tiny_onnx(tmp_path / "b.onnx", 2.0), actor="ana")  # 1.0.1: the latest
    return "churn"


def test_load_model_accepts_a_bare_name_as_the_latest_version(churn):
    from fastml import load_model

    model = load_model(churn)
    try:
        assert (model.name, model.version) == ("churn", "1.0.1")
        out = model.predict({"input": np.ones((2, 4), np.float32)})
        np.testing.assert_allclose(out["y"], np.full((2, 1), 8.0, np.float32))
    finally:
        model.close()


def test_serve_targets_accept_a_bare_name(churn):
    from fastml.serving import parse_target, scan_target

    assert parse_target("churn") == ("ref", "churn")
    sources = scan_target("churn")
    assert [(s.name, s.version) for s in sources["churn"]] == [("churn", "1.0.1")]


def test_registry_cli_accepts_a_bare_name_and_says_what_it_resolved_to(churn, capsys):
    assert main(["registry", "show", "churn", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ref"] == "churn:1.0.1"
    assert main(["registry", "promote", "churn", "staging", "--actor", "ana"]) == 0
    assert "churn:1.0.1 is now in staging" in capsys.readouterr().out
    assert main(["registry", "lineage", "churn"]) == 0
    assert capsys.readouterr().out.startswith("churn:1.0.1 ")


def test_a_bare_name_of_an_unknown_model_names_the_registry(fastml_home, capsys):
    from fastml import load_model
    from fastml.errors import NotFound

    with pytest.raises(NotFound, match=r"model 'nosuch' is not registered in registry .*registry\.db"):
        load_model("nosuch")
