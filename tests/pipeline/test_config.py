"""A bad config fails before any work, with errors naming the field."""

from __future__ import annotations

import pytest
from pipeline_data import cls_config

from fastml.errors import InvalidInput
from fastml.pipeline import PipelineConfig, from_dict, load_config, train
from fastml.pipeline.config import DataConfig, ModelConfig
from fastml.pipeline.run import list_runs


@pytest.mark.parametrize(
    "override, field, words",
    [
        ({"task": "clustering"}, "task", "'clustering' is not one of"),
        ({"model": {"family": "svm"}}, "model.family", "'svm' is not one of"),
        ({"model": {"family": "ridge"}}, "model.family", "does not support task 'classification'"),
        ({"metric": "rmse"}, "metric", "not a classification metric"),
        ({"folds": 1}, "folds", "must be >= 2"),
        ({"tune": {"n_trials": 0}}, "tune.n_trials", "must be >= 1"),
        ({"tune": {"n_trials": "many"}}, "tune.n_trials", "Expected `int`, got `str`"),
        ({"tune": {"sampler": "cmaes"}}, "tune.sampler", "'cmaes' is not one of"),
        ({"tune": {"samplr": "tpe"}}, "tune", "unknown field `samplr`"),
        (
            {"tune": {"sampler": "grid", "search_space": {"C": {"type": "float", "low": 0.1, "high": 1.0}}}},
            "tune.search_space.C",
            "grid sampler needs 'choices' or a 'step'",
        ),
        (
            {"tune": {"search_space": {"C": {"type": "float", "low": 2.0, "high": 1.0}}}},
            "tune.search_space.C",
            "needs low <= high",
        ),
        (
            {"tune": {"search_space": {"gamma": {"type": "float", "low": 0.1, "high": 1.0}}}},
            "tune.search_space",
            "unknown hyperparameters",
        ),
        ({"split": {"holdout_fraction": 1.5}}, "split.holdout_fraction", "between 0 and 1"),
        ({"features": {"scaling": "robust"}}, "features.scaling", "'robust' is not one of"),
        (
            {"features": {"derived": [{"name": "z", "op": "pow", "inputs": ["x0", "x1"]}]}},
            "features.derived[0].op",
            "'pow'",
        ),
        (
            {"features": {"derived": [{"name": "z", "op": "log1p", "inputs": ["x0", "x1"]}]}},
            "features.derived[0].inputs",
            "takes 1 column",
        ),
        ({"model": {"family": "logistic_regression", "ddp_processes": 2}}, "model.ddp_processes", "'torch_mlp' only"),
        ({"register": {"bump": "huge"}}, "register.bump", "'huge' is not one of"),
        (
            {"model": {"family": "random_forest", "params": {"n_trees": 5}}},
            "model.params",
            "unknown hyperparameters for random_forest: ['n_trees']",
        ),
    ],
)
def test_bad_field_named(cls_csv, override, field, words):
    cfg = cls_config(cls_csv, **override)
    with pytest.raises(InvalidInput) as ei:
        train(cfg)
    msg = str(ei.value)
    assert f"{field}:" in msg and words in msg, msg
    assert list_runs() == []  # nothing was started


def test_missing_data_file_and_all_errors_reported_together(tmp_path):
    cfg = {
        "name": "x",
        "task": "classification",
        "folds": 1,
        "data": {"path": str(tmp_path / "nope.csv"), "target": "y"},
        "model": {"family": "random_forest"},
    }
    with pytest.raises(InvalidInput) as ei:
        from_dict(cfg)
    msg = str(ei.value)
    assert "2 error(s)" in msg and "data.path:" in msg and "no such file" in msg and "folds:" in msg


def test_missing_required_field_and_both_sources(cls_csv):
    with pytest.raises(
        InvalidInput, match=r"Object missing required field `target` - at|data: Object missing required field `target`"
    ):
        from_dict(
            {
                "name": "x",
                "task": "classification",
                "data": {"path": str(cls_csv)},
                "model": {"family": "random_forest"},
            }
        )
    with pytest.raises(InvalidInput, match="data: set exactly one of data.path and data.training_set"):
        from_dict(
            {
                "name": "x",
                "task": "classification",
                "model": {"family": "random_forest"},
                "data": {
                    "path": str(cls_csv),
                    "target": "label",
                    "training_set": {"entity_rows": "e.csv", "features": ["g:f"]},
                },
            }
        )


def test_toml_file_and_python_object(tmp_path, cls_csv):
    p = tmp_path / "p.toml"
    p.write_text(f'''
name = "clf"
task = "classification"
folds = 3
[data]
path = "{cls_csv.name}"
target = "label"
[model]
family = "random_forest"
[tune]
n_trials = 5
sampler = "random"
''')
    cfg = load_config(p)
    assert cfg.data_path() == cls_csv  # relative to the TOML file
    assert (cfg.tune.n_trials, cfg.tune.sampler, cfg.metric_name, cfg.direction) == (
        5,
        "random",
        "accuracy",
        "maximize",
    )
    obj = PipelineConfig(
        name="clf",
        task="classification",
        data=DataConfig(target="label", path=cls_csv.name),
        model=ModelConfig(family="random_forest"),
        folds=3,
        tune=cfg.tune,
        base_dir=str(tmp_path),
    )
    assert obj.config_hash() == cfg.config_hash()
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(InvalidInput, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(InvalidInput, match="task:"):
        train(
            PipelineConfig(
                name="x",
                task="ranking",
                data=DataConfig(target="label", path=str(cls_csv)),
                model=ModelConfig(family="random_forest"),
            )
        )


def test_memory_storage_refused_for_workers(cls_csv):
    with pytest.raises(InvalidInput, match="tune.storage: 'memory' cannot be shared"):
        train(cls_config(cls_csv, tune={"storage": "memory"}), workers=2)
    with pytest.raises(InvalidInput, match="workers: must be >= 1"):
        train(cls_config(cls_csv), workers=0)


def test_cli_bad_config_exit_code(tmp_path, capsys):
    from fastml.cli import main

    p = tmp_path / "p.toml"
    p.write_text(
        'name = "x"\ntask = "classification"\n[data]\npath = "missing.csv"\ntarget = "y"\n[model]\nfamily = "svm"\n'
    )
    assert main(["train", str(p)]) == 2
    err = capsys.readouterr().err
    assert "InvalidInput" in err and "model.family:" in err and "data.path:" in err
