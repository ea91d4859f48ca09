"""Bad data gives a validation report listing each failed check, and the run stops at stage 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pipeline_data import cls_config, make_classification_frame

from fastml.errors import InvalidInput, NotFound
from fastml.pipeline import train
from fastml.pipeline.run import list_runs


def test_report_lists_each_failed_check(tmp_path):
    df = make_classification_frame(n=200)
    df.loc[:120, "x2"] = np.nan  # 60% null
    df.loc[5, "x4"] = 99.0  # out of range
    df.loc[:193, "label"] = 0  # 3% of rows in class 1
    df.loc[194:, "label"] = 1
    p = tmp_path / "bad.csv"
    df.to_csv(p, index=False)
    cfg = cls_config(
        p,
        validate={
            "ranges": {"x4": [-10, 10]},
            "min_class_fraction": 0.1,
            "columns": {"colour": "number", "age": "number"},
        },
    )
    with pytest.raises(InvalidInput) as ei:
        train(cfg)
    msg = str(ei.value)
    assert msg.startswith("data validation failed: 5 of")
    assert "nulls [x2]: 60.5% null (maximum 50.0%)" in msg
    assert "range [x4]: 1 value(s) outside [-10, 10]" in msg
    assert "class_balance [label]: smallest class 1 has 3.00% of rows (minimum 10.00%)" in msg
    assert "schema [colour]: expected number, found dtype" in msg
    assert "schema [age]: expected column (number) is missing" in msg
    run = list_runs()[0]
    assert run["status"] == "failed"
    assert [s["status"] for s in run["stages"][:3]] == ["completed", "failed", "pending"]
    from fastml.config import get_settings

    report = json.loads((get_settings().home / "runs" / run["run_id"] / "02_validate/report.json").read_text())
    failed = [(c["check"], c["column"]) for c in report["checks"] if not c["passed"]]
    assert sorted(failed, key=str) == sorted(
        [("schema", "colour"), ("schema", "age"), ("nulls", "x2"), ("range", "x4"), ("class_balance", "label")], key=str
    )


def test_null_target_and_too_few_rows(tmp_path):
    df = make_classification_frame(n=30)
    df.loc[3, "label"] = np.nan
    p = tmp_path / "few.parquet"
    df.to_parquet(p)
    with pytest.raises(InvalidInput) as ei:
        train(cls_config(p, validate={"min_rows": 50}))
    msg = str(ei.value)
    assert "rows: 30 rows (minimum 50)" in msg and "nulls [label]: 3.3% null (maximum 0.0%)" in msg


def test_unreadable_data_and_missing_feature_column(tmp_path):
    p = tmp_path / "junk.parquet"
    p.write_bytes(b"not parquet at all")
    with pytest.raises(InvalidInput, match="data.path: cannot read"):
        train(cls_config(p))
    good = tmp_path / "ok.csv"
    make_classification_frame(n=100).to_csv(good, index=False)
    with pytest.raises(InvalidInput, match=r"features: columns \['nope'\] are not in the data"):
        train(cls_config(good, features={"numeric": ["x0", "nope"]}))


def test_runs_show_unknown_run():
    from fastml.pipeline import open_run

    with pytest.raises(NotFound, match="run 'nope' not found"):
        open_run("nope")


@pytest.mark.parametrize("run_id", ["../x", "..", "a/b", "/tmp/x", ""])
def test_a_run_id_that_is_not_one_folder_name_is_refused(run_id, tmp_path, monkeypatch):
    # fastml runs show / fastml train --resume ../x read (and resumed) a run directory outside the runs root.
    from fastml.pipeline import open_run
    from fastml.pipeline.run import runs_root

    outside = runs_root().parent / "x"  # what "../x" names: a run directory outside the runs root
    outside.mkdir(parents=True, exist_ok=True)
    (outside / "run.json").write_text('{"run_id": "x", "status": "failed"}')
    with pytest.raises(InvalidInput, match=r"run id .*: use letters, digits, '-' and '_' only"):
        open_run(run_id)
