"""The command line's contract: ``--json`` prints exactly one strict JSON document (no NaN or Infinity), and bad
input ends in one ``fastml: error: <Kind>: <message>`` line with a non-zero exit, never a traceback."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
from tiny_models import tiny_onnx

from fastml.cli import main


def _strict(text: str):
    """json.loads that refuses NaN and Infinity (which Python's json writes, but which are not JSON)."""

    def refuse(constant: str):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def churn(tmp_path):
    from fastml.registry import Registry

    with Registry() as reg:
        reg.register("churn", tiny_onnx(tmp_path / "a.onnx"), actor="ana")
    return "churn:1.0.0"


# --------------------------------------------------------------------------------------- NaN and Infinity


def test_monitor_drift_json_prints_null_for_an_infinite_statistic(tmp_path, capsys):
    # A chi-square statistic over a reference bin that is empty is infinite; the p-value beside it is 0.
    (tmp_path / "ref.csv").write_text("b\n" + "0\n" * 100)
    (tmp_path / "cur.csv").write_text("b\n" + "1\n" * 50)
    code, out, err = _run(
        capsys,
        "monitor",
        "drift",
        "--reference",
        str(tmp_path / "ref.csv"),
        "--current",
        str(tmp_path / "cur.csv"),
        "--method",
        "chisquare",
        "--json",
    )
    assert (code, err) == (0, "")
    column = _strict(out)["columns"][0]
    assert (column["column"], column["score"], column["statistic"], column["drifted"]) == ("b", 0.0, None, True)


def test_monitor_status_json_prints_null_for_stored_nan_and_infinity(capsys):
    from fastml.monitoring.store import FeatureDrift, MonitoringStore, WindowResult

    now = time.time()
    with MonitoringStore() as store:
        store.add_window(
            WindowResult(
                model="churn",
                version="1.0.0",
                start_ts=now - 60,
                end_ts=now - 1,
                n_rows=5,
                reference_rows=100,
                drift=[FeatureDrift("f0", "psi", math.inf, 0.1, True)],
                drift_share=1.0,
                health_score=math.nan,
            )
        )
    code, out, err = _run(capsys, "monitor", "status", "--json")
    assert (code, err) == (0, "")
    _strict(out)
    assert '"health_score": null' in out
    assert '"score": null' in out


def test_runs_show_json_prints_null_for_a_nan_metric(fastml_home, capsys):
    run_dir = fastml_home / "runs" / "r1"
    run_dir.mkdir(parents=True)
    state = {"run_id": "r1", "name": "tiny", "status": "completed", "stages": [], "summary": {"cv_roc_auc": math.nan}}
    (run_dir / "run.json").write_text(json.dumps(state))  # Python's json writes NaN
    code, out, err = _run(capsys, "runs", "show", "r1", "--json")
    assert (code, err) == (0, "")
    assert _strict(out)["summary"] == {"cv_roc_auc": None}


# ------------------------------------------------------------------------------------ --json on read commands


def test_deploy_show_json(tmp_path, churn, capsys):
    (tmp_path / "d.toml").write_text(
        '[deployments.rec]\n[[deployments.rec.variants]]\nname = "a"\nmodel = "churn:1.0.0"\nweight_bp = 10000\n'
    )
    assert _run(capsys, "deploy", "apply", str(tmp_path / "d.toml"))[0] == 0
    code, out, err = _run(capsys, "deploy", "show", "--json")
    assert (code, err) == (0, "")
    variants = _strict(out)["deployments"]["rec"]["variants"]
    assert [(v["name"], v["model"], v["weight_bp"]) for v in variants] == [("a", "churn:1.0.0", 10000)]


def test_deploy_show_without_deployments_is_a_clean_error(capsys):
    code, out, err = _run(capsys, "deploy", "show", "--json")
    assert (code, out) == (2, "")
    assert err == "fastml: error: NotFound: no deployments (fastml deploy apply FILE)\n"


def test_example_list_json(capsys):
    from fastml.examples import EXAMPLES

    code, out, err = _run(capsys, "example", "list", "--json")
    assert (code, err) == (0, "")
    assert _strict(out) == [{"name": name, "description": what} for name, (_, what) in EXAMPLES.items()]


# ------------------------------------------------------------------------------ bad input: one clean line


def test_monitor_explain_rows_that_do_not_fit_the_model(tmp_path, capsys):
    model = tiny_onnx(tmp_path / "m.onnx")
    (tmp_path / "rows.csv").write_text("a,b\n1,2\n3,4\n")
    code, out, err = _run(capsys, "monitor", "explain", str(model), "--rows", str(tmp_path / "rows.csv"))
    assert (code, out) == (2, "")
    rows = tmp_path / "rows.csv"
    assert (
        err
        == f"fastml: error: InvalidInput: {model}: --rows {rows}: background has 2 features but the model's input takes 4\n"
    )


def test_monitor_explain_a_file_that_is_not_onnx(tmp_path, capsys):
    (tmp_path / "rows.csv").write_text("a,b,c,d\n1,2,3,4\n")
    (tmp_path / "m.onnx").write_bytes(b"\xc9 not a model")
    code, out, err = _run(capsys, "monitor", "explain", str(tmp_path / "m.onnx"), "--rows", str(tmp_path / "rows.csv"))
    assert (code, out) == (2, "")
    assert err.startswith(
        f"fastml: error: InvalidInput: {tmp_path / 'm.onnx'}: [ONNXRuntimeError] : 7 : INVALID_PROTOBUF"
    )
    assert err.count("\n") == 1


def test_monitor_explain_background_without_the_rows_columns(tmp_path, capsys):
    model = tiny_onnx(tmp_path / "m.onnx")
    (tmp_path / "rows.csv").write_text("a,b,c,d\n1,2,3,4\n")
    (tmp_path / "bg.csv").write_text("a,x\n1,2\n")
    code, out, err = _run(
        capsys,
        "monitor",
        "explain",
        str(model),
        "--rows",
        str(tmp_path / "rows.csv"),
        "--background",
        str(tmp_path / "bg.csv"),
    )
    assert (code, out) == (2, "")
    assert err == (
        f"fastml: error: InvalidInput: --background {tmp_path / 'bg.csv'}: no column(s) ['b', 'c', 'd'] "
        f"of --rows {tmp_path / 'rows.csv'}\n"
    )


CARD = Path(__file__).resolve().parents[1] / "examples" / "credit_scoring" / "model_card.toml"


def test_governance_check_with_a_missing_schema(tmp_path, capsys):
    missing = tmp_path / "nope.json"
    code, out, err = _run(capsys, "governance", "check", str(CARD), "--schema", str(missing))
    assert (code, out) == (2, "")
    assert err == f"fastml: error: InvalidInput: schema file {missing} does not exist\n"


def test_governance_check_with_a_schema_that_is_not_json(tmp_path, capsys):
    (tmp_path / "s.json").write_text("{bad")
    code, out, err = _run(capsys, "governance", "check", str(CARD), "--schema", str(tmp_path / "s.json"))
    assert (code, out) == (2, "")
    assert err == (
        f"fastml: error: InvalidInput: schema file {tmp_path / 's.json'}: not valid JSON: "
        "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)\n"
    )


def test_governance_gate_with_an_unknown_stage(churn, capsys):
    code, out, err = _run(capsys, "governance", "gate", churn, "--stage", "prodution", "--json")
    assert (code, out) == (2, "")
    assert err == (
        "fastml: error: InvalidInput: unknown stage 'prodution'; "
        "stages: ['development', 'staging', 'production', 'archived']\n"
    )


def test_governance_gate_with_a_policy_that_is_not_text(tmp_path, churn, capsys):
    (tmp_path / "p.toml").write_bytes(b"\xc9\xff")
    code, out, err = _run(capsys, "governance", "gate", churn, "--policy", str(tmp_path / "p.toml"))
    assert (code, out) == (2, "")
    assert err == (
        f"fastml: error: InvalidInput: policy file {tmp_path / 'p.toml'}: not UTF-8 text: "
        "'utf-8' codec can't decode byte 0xc9 in position 0: invalid continuation byte\n"
    )


def test_deploy_apply_remote_with_a_missing_token_file(tmp_path, capsys):
    (tmp_path / "d.toml").write_text(
        '[deployments.rec]\n[[deployments.rec.variants]]\nname = "a"\nmodel = "m"\nweight_bp = 10000\n'
    )
    missing = tmp_path / "admin.token"
    code, out, err = _run(
        capsys,
        "deploy",
        "apply",
        str(tmp_path / "d.toml"),
        "--server",
        "http://127.0.0.1:1",
        "--token-file",
        str(missing),
    )
    assert (code, out) == (2, "")
    assert err == (
        f"fastml: error: InvalidInput: --token-file {missing}: cannot read the token: "
        f"[Errno 2] No such file or directory: '{missing}'\n"
    )


def test_train_with_a_config_that_is_not_text(tmp_path, capsys):
    (tmp_path / "p.toml").write_bytes(b"name = \xc9\n")
    code, out, err = _run(capsys, "train", str(tmp_path / "p.toml"), "--no-progress")
    assert (code, out) == (2, "")
    assert err == (
        f"fastml: error: InvalidInput: pipeline config {tmp_path / 'p.toml'}: not UTF-8 text: "
        "'utf-8' codec can't decode byte 0xc9 in position 7: invalid continuation byte\n"
    )


def test_features_get_json_prints_null_for_a_stored_infinity(fastml_home, capsys):
    """Ingest takes an inf as a value; `features get --json` printed it as Infinity, which is not JSON."""
    import pandas as pd

    from fastml.features import Feature, FeatureGroup, FeatureStore

    fs = FeatureStore()
    fs.register(
        FeatureGroup("driver", entities=["driver_id"], features=[Feature("x", "float64"), Feature("y", "float64")])
    )
    t0 = pd.Timestamp("2026-01-20 08:00", tz="UTC")
    fs.ingest("driver", pd.DataFrame({"driver_id": [1], "event_timestamp": [t0], "x": [math.inf], "y": [2.5]}))
    fs.materialize("driver")
    code, out, err = _run(capsys, "features", "get", "driver:x,driver:y", "--key", "1", "--json")
    assert (code, err) == (0, "")
    assert _strict(out) == {"driver_id": ["1"], "x": [None], "y": [2.5]}


def test_ray_status_at_an_address_nothing_listens_on_fails_at_once(capsys):
    """ray.init retried such an address for minutes: the command looked hung."""
    import socket

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    code, out, err = _run(capsys, "ray", "status", "--address", f"127.0.0.1:{port}", "--json")
    assert time.monotonic() - t0 < 30
    assert (code, out) == (2, "")
    assert err.startswith(f"fastml: error: NotFound: no Ray cluster at '127.0.0.1:{port}': cannot connect: ")


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["audit", "verify", "--dir", "{missing}"],
            "NotFound: no audit log at {missing}: the directory does not exist",
        ),
        (["audit", "log", "--dir", "{missing}"], "NotFound: no audit log at {missing}: the directory does not exist"),
        (["audit", "head", "--dir", "{missing}"], "NotFound: no audit log at {missing}: the directory does not exist"),
        (["monitor", "status", "--db", "{missing}"], "NotFound: no monitoring store at {missing}"),
        (["monitor", "alerts", "--db", "{missing}"], "NotFound: no monitoring store at {missing}"),
    ],
)
def test_a_mistyped_store_path_is_not_an_empty_store(tmp_path, capsys, argv, message):
    """'audit verify --dir /typo' said 'audit log OK: 0 entries' (and created the directory)."""
    missing = str(tmp_path / "typo")
    code, out, err = _run(capsys, *(a.format(missing=missing) for a in argv))
    assert (code, out, err.strip()) == (2, "", "fastml: error: " + message.format(missing=missing))
    assert not (tmp_path / "typo").exists()


@pytest.mark.parametrize("argv", [["audit", "log", "--tail", "-3"], ["registry", "events", "--limit", "-1"]])
def test_negative_counts_are_refused(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "must be >= 0, got -" in capsys.readouterr().err
