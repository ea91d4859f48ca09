"""The example pipelines validate; the rich progress display and summary table render a real run."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

from pipeline_data import cls_config

from fastml.pipeline import load_config, train

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "pipelines"


def test_example_tomls_validate(tmp_path):
    from sklearn.datasets import load_breast_cancer

    for name in ("breast_cancer.toml", "synthetic_10k.toml"):
        shutil.copy(EXAMPLES / name, tmp_path / name)
    load_breast_cancer(as_frame=True).frame.to_csv(tmp_path / "breast_cancer.csv", index=False)
    (tmp_path / "synthetic_10k.csv").write_text("f0,label\n1,0\n")
    bc = load_config(tmp_path / "breast_cancer.toml")
    assert (bc.model.family, bc.metric_name, len(bc.features.derived)) == ("logistic_regression", "roc_auc", 2)
    syn = load_config(tmp_path / "synthetic_10k.toml")
    assert syn.model.family == "hist_gradient_boosting" and syn.tune.n_trials == 8


def test_rich_progress_and_summary_table(cls_csv):
    from rich.console import Console

    from fastml.pipeline.progress import RichProgress, summary_table

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=120)
    result = train(
        cls_config(cls_csv, tune={"n_trials": 3}, register={"enabled": False}), progress=RichProgress(console)
    )
    import re

    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", buf.getvalue())  # drop terminal control codes
    assert f"run {result.run_id}" in text
    for stage in ("ingest", "tune", "export"):
        assert f"completed {stage} (" in text
    assert "trials (best 0." in text
    out = io.StringIO()
    Console(file=out, width=160).print(summary_table(result.state))
    table = out.getvalue()
    assert "completed" in table and "best_value=" in table and "accuracy=" in table
