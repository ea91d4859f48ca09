"""Where fastml keeps its state by default, and errors that say where they looked."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fastml.cli import main
from fastml.config import load_settings
from fastml.errors import NotFound


def test_default_home_is_per_user_not_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings({"HOME": "/home/ana"})
    assert settings.home == Path("/home/ana/.local/share/fastml")
    assert settings.registry_db_url == "sqlite:////home/ana/.local/share/fastml/registry.db"


def test_xdg_data_home_is_honoured_and_a_relative_one_ignored():
    assert load_settings({"HOME": "/home/ana", "XDG_DATA_HOME": "/data/ana"}).home == Path("/data/ana/fastml")
    # The XDG spec: a relative XDG_DATA_HOME is invalid and ignored.
    assert load_settings({"HOME": "/home/ana", "XDG_DATA_HOME": "rel"}).home == Path("/home/ana/.local/share/fastml")


def test_fastml_home_and_config_file_override_the_default(tmp_path):
    env = {"HOME": "/home/ana", "FASTML_HOME": str(tmp_path / "h")}
    assert load_settings(env).home == tmp_path / "h"
    assert load_settings({**env, "FASTML_HOME": ""}).home == Path("/home/ana/.local/share/fastml")  # empty = unset
    cfg = tmp_path / "fastml.toml"
    cfg.write_text(f'home = "{tmp_path / "from-config"}"\n')
    assert load_settings({"HOME": "/home/ana", "FASTML_CONFIG": str(cfg)}).home == tmp_path / "from-config"
    # The environment still wins over the config file.
    assert load_settings({**env, "FASTML_CONFIG": str(cfg)}).home == tmp_path / "h"


def test_registry_not_found_names_the_registry_and_the_model(fastml_home):
    from fastml.registry import Registry

    with Registry() as reg:
        with pytest.raises(NotFound) as err:
            reg.resolve("churn@production")
    text = str(err.value)
    assert "'churn'" in text and str(fastml_home / "registry.db") in text


def test_cli_not_found_is_one_line_naming_the_registry_home(fastml_home, capsys):
    assert main(["registry", "show", "churn"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "model 'churn' is not registered in registry " + str(fastml_home / "registry.db") in err


def test_feature_group_not_found_names_the_metadata_database(fastml_home):
    from fastml.features import FeatureStore

    fs = FeatureStore()
    try:
        with pytest.raises(NotFound) as err:
            fs.get_group("driver")
    finally:
        fs.close()
    assert "'driver'" in str(err.value) and str(fastml_home / "features" / "metadata.db") in str(err.value)


def test_a_missing_serve_target_says_where_it_looked(tmp_path, monkeypatch):
    from fastml.serving import parse_target

    monkeypatch.chdir(tmp_path)
    with pytest.raises(NotFound) as err:
        parse_target("modle.onnx")  # a mistyped path is not taken for a model name
    assert "'modle.onnx'" in str(err.value) and os.fspath(tmp_path) in str(err.value)


def test_a_named_config_file_that_is_missing_or_not_utf8_is_refused_by_name(tmp_path):
    from fastml.config import load_settings
    from fastml.errors import InvalidInput

    with pytest.raises(InvalidInput, match=r"config file .*nope\.toml \(FASTML_CONFIG\): no such file"):
        load_settings({"HOME": str(tmp_path), "FASTML_CONFIG": str(tmp_path / "nope.toml")})  # was: the defaults
    with pytest.raises(InvalidInput, match="no such file"):
        load_settings({"HOME": str(tmp_path), "FASTML_CONFIG": str(tmp_path)})  # a directory
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes('user = "Ren\xe9"\n'.encode("latin-1"))
    with pytest.raises(InvalidInput, match=r"config file .*latin1\.toml: .*utf-8"):  # was: a UnicodeDecodeError
        load_settings({"HOME": str(tmp_path), "FASTML_CONFIG": str(latin1)})
