"""Reports (HTML + JSON twin, rendered by headless Chromium) and the ``fastml monitor`` commands."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from fastml.cli import main
from fastml.monitoring.drift import detect_drift
from fastml.monitoring.report import build_report, write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _data(seed=0, n=1500):
    rng = np.random.default_rng(seed)
    ref = {"a": rng.normal(size=n), "b": rng.normal(size=n), "c": rng.choice(np.array(list("xyz")), n)}
    cur = {"a": rng.normal(1.0, 1, size=n), "b": rng.normal(size=n), "c": rng.choice(np.array(list("xyw")), n)}
    return ref, cur


WINDOWS = [
    {
        "start": 1.7e9 + 60 * i,
        "accuracy": 0.9 - 0.01 * i,
        "latency_p50_ms": 1.0 + i,
        "latency_p95_ms": 2.0 + i,
        "latency_p99_ms": 3.0 + i,
    }
    for i in range(4)
]
ALERTS = [
    {
        "rule": "low-acc",
        "status": "firing",
        "severity": "critical",
        "metric": "accuracy",
        "comparison": "<",
        "threshold": 0.88,
        "value": 0.87,
        "at": 1.7e9 + 180,
    }
]


@pytest.mark.parametrize("use_mpl", [True, False], ids=["matplotlib", "plain-svg"])
def test_report_is_self_contained_and_json_twin_matches(use_mpl):
    ref, cur = _data()
    page, data = build_report(
        ref,
        cur,
        windows=WINDOWS,
        alerts=ALERTS,
        health={"score": 75.0, "penalties": {"drift": 0.67}},
        use_matplotlib=use_mpl,
    )
    assert page.count("<svg") >= 4  # 2 drifted histograms + performance + latency
    # nothing fetched from elsewhere: no external src/href, stylesheet links or CSS urls
    assert re.search(r'(src|href)\s*=\s*"(https?:|//|file:)', page) is None
    assert "<link" not in page and "url(http" not in page
    assert "<script" not in page and "low-acc" in page and "75.0 / 100" in page
    want = detect_drift(ref, cur).to_dict()
    assert data["drift"] == json.loads(json.dumps(want))
    assert set(data["histograms"]) == {"a", "c"}  # the drifted columns only
    h = data["histograms"]["a"]
    assert sum(h["reference"]) == pytest.approx(1.0) and len(h["edges"]) == len(h["current"]) + 1
    assert data["histograms"]["c"]["categories"] == ["w", "x", "y", "z"]
    assert data["windows"] == WINDOWS and data["alerts"] == ALERTS


def _non_blank(png_path) -> tuple[float, int]:
    from PIL import Image

    img = np.asarray(Image.open(png_path).convert("RGB")).astype(int)
    non_white = float((img.sum(axis=2) < 720).mean())
    colours = len(np.unique(img.reshape(-1, 3), axis=0))
    return non_white, colours


@pytest.mark.skipif(CHROMIUM is None, reason="chromium binary not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(tmp_path):
    ref, cur = _data(1)
    html_path, json_path = write_report(tmp_path / "rep", ref, cur, windows=WINDOWS, alerts=ALERTS)
    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={shot}",
            "--window-size=1200,1400",
            html_path.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
    non_white, colours = _non_blank(shot)
    assert non_white > 0.02 and colours > 50, (non_white, colours)  # text, tables and coloured plots drawn
    assert json.loads(json_path.read_text())["drift"]["dataset_drift"] is True


def _write_tables(tmp_path):
    ref, cur = _data(2, n=600)
    pq.write_table(pa.table(ref), tmp_path / "ref.parquet")
    pacsv.write_csv(pa.table(cur), tmp_path / "cur.csv")
    return ref, cur


def test_cli_drift_json_and_text(tmp_path, capsys):
    ref, cur = _write_tables(tmp_path)
    assert (
        main(
            [
                "monitor",
                "drift",
                "--reference",
                str(tmp_path / "ref.parquet"),
                "--current",
                str(tmp_path / "cur.csv"),
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    want = detect_drift(ref, cur)
    assert [c["score"] for c in out["columns"]] == pytest.approx([c.score for c in want.columns], rel=1e-12)
    assert out["dataset_drift"] is True and out["columns"][0]["method"] == "ks"
    assert (
        main(
            [
                "monitor",
                "drift",
                "--reference",
                str(tmp_path / "ref.parquet"),
                "--current",
                str(tmp_path / "cur.csv"),
                "--method",
                "psi",
                "--columns",
                "a,b",
                "--fail-on-drift",
            ]
        )
        == 1
    )  # 1 of 2 drifted: share 0.5 -> drift
    text = capsys.readouterr().out
    assert "psi" in text and "dataset drift: yes" in text
    assert (
        main(
            [
                "monitor",
                "drift",
                "--reference",
                str(tmp_path / "ref.parquet"),
                "--current",
                str(tmp_path / "cur.csv"),
                "--columns",
                "a,b",
                "--drift-share",
                "0.9",
                "--fail-on-drift",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "monitor",
                "drift",
                "--reference",
                str(tmp_path / "ref.parquet"),
                "--current",
                str(tmp_path / "cur.csv"),
                "--fail-on-drift",
            ]
        )
        == 1
    )


def test_cli_drift_errors_are_named(tmp_path, capsys):
    _write_tables(tmp_path)
    assert (
        main(
            ["monitor", "drift", "--reference", str(tmp_path / "ref.parquet"), "--current", str(tmp_path / "nope.csv")]
        )
        == 2
    )
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "x.txt").write_text("a\n1\n")
    assert (
        main(["monitor", "drift", "--reference", str(tmp_path / "x.txt"), "--current", str(tmp_path / "cur.csv")]) == 2
    )
    assert "unsupported file type" in capsys.readouterr().err


def test_cli_report_from_files_and_from_prediction_log(tmp_path, capsys, fastml_home):
    ref, cur = _write_tables(tmp_path)
    assert (
        main(
            [
                "monitor",
                "report",
                "--reference",
                str(tmp_path / "ref.parquet"),
                "--current",
                str(tmp_path / "cur.csv"),
                "--out",
                str(tmp_path / "r1"),
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["dataset_drift"] is True and (tmp_path / "r1" / "report.html").is_file()

    from fastml.monitoring import PredictionLogger
    from fastml.monitoring.profile import ReferenceProfile

    rng = np.random.default_rng(3)
    X_ref = rng.normal(size=(800, 3))
    ReferenceProfile.from_data({"u": X_ref[:, 0], "v": X_ref[:, 1], "w": X_ref[:, 2]}).save(tmp_path / "ref.arrow")
    with PredictionLogger() as lg:
        for i in range(40):
            x = rng.normal(size=(10, 3)).astype(np.float32)
            x[:, 0] += 2.0  # u drifts
            lg.log(
                model="clf",
                version=1,
                inputs={"input": x},
                outputs={"label": (x[:, 1] > 0).astype(np.int64)},
                latency_us=500.0 + i,
                request_id=f"r{i}",
            )
    assert main(["monitor", "report", "--reference", str(tmp_path / "ref.arrow"), "--model", "clf", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    data = json.loads(open(out["json"]).read())
    assert out["html"].startswith(str(fastml_home / "reports"))
    drifted = {c["column"]: c["drifted"] for c in data["drift"]["columns"]}
    assert drifted == {"u": True, "v": False, "w": False}
    assert sum(w["requests"] for w in data["windows"]) == 40
    assert main(["monitor", "report", "--reference", str(tmp_path / "ref.arrow"), "--model", "nobody"]) == 2


def test_cli_explain_onnx_file_and_registry_ref(tmp_path, capsys, small_models):
    X = small_models["X"]
    names = [f"x{j}" for j in range(6)]
    pq.write_table(pa.table({n: X[:30, j] for j, n in enumerate(names)}), tmp_path / "rows.parquet")
    assert (
        main(
            [
                "monitor",
                "explain",
                str(small_models["logreg_onnx"]),
                "--rows",
                str(tmp_path / "rows.parquet"),
                "--link",
                "logit",
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    vals = np.asarray(out["values"])
    bg = X[:30].astype(np.float64)
    want = small_models["logreg"].coef_[0] * (bg - bg.mean(0))
    np.testing.assert_allclose(vals, want, atol=1e-4)
    assert list(out["global_importance"]) == [names[j] for j in np.argsort(-np.abs(want).mean(0))]

    from fastml.registry import Registry

    Registry().register("lr", str(small_models["logreg_onnx"]))
    assert (
        main(["monitor", "explain", "lr@latest", "--rows", str(tmp_path / "rows.parquet"), "--lime", "--top", "3"]) == 0
    )
    text = capsys.readouterr().out
    assert "global importance" in text and "LIME, row 0:" in text
