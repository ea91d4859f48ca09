"""fastml runs list shows a run whose run.json lacks fields (an older fastml's, or edited by hand) with those
fields empty, and passes over a run.json that is not a run, instead of failing with a KeyError."""

from __future__ import annotations

import json

from fastml.cli import main


def test_runs_list_with_incomplete_and_foreign_run_files(fastml_home, capsys):
    runs = fastml_home / "runs"
    (runs / "old").mkdir(parents=True)
    (runs / "old" / "run.json").write_text(json.dumps({"run_id": "old", "name": "churn", "status": "completed"}))
    (runs / "partial").mkdir()
    (runs / "partial" / "run.json").write_text(
        json.dumps(
            {
                "run_id": "partial",
                "created_at": "2026-12-07T10:00:00.000+00:00",
                "stages": [{"name": "ingest", "status": "completed"}, "not a stage", {"status": "completed"}],
            }
        )
    )
    (runs / "list").mkdir()
    (runs / "list" / "run.json").write_text("[1, 2, 3]")
    (runs / "binary").mkdir()
    (runs / "binary" / "run.json").write_bytes(b"\xff\xfe{")

    assert main(["runs", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["run_id"] for r in rows] == ["partial", "old"]  # newest first; one without a date last
    assert rows[0]["last_stage"] is None and rows[0]["name"] is None
    assert rows[1] == {
        "run_id": "old",
        "name": "churn",
        "status": "completed",
        "family": None,
        "created_at": None,
        "last_stage": None,
        "model_ref": None,
    }
    assert main(["runs", "list"]) == 0
    table = capsys.readouterr().out
    assert "partial" in table and "churn" in table
