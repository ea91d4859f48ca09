"""Monitoring benchmark: data drift on 10,000 x 20 columns (reference vs current), side by side in one run.

Contenders, all on the same seeded data:
- fastml ``detect_drift`` (raw reference, and with a prebuilt ReferenceProfile);
- a plain scipy loop computing the same statistics column by column;
- Evidently's ``DataDriftPreset`` (Report.run), run in its own venv (``.cache/evidently-venv``; Evidently
  needs pandas<3) as a subprocess of this run; skipped with a note when that venv is absent.

Scenarios: (1) Evidently's default per-column test (reference > 1,000 rows -> normed Wasserstein),
(2) every statistic per column (KS, normed Wasserstein, PSI, Jensen-Shannon), (3) reference of 1,000 rows
(default -> KS with scipy's exact p-value). Results are checked for equality (1e-6 relative) before any
time is reported. Plus the prediction logger's hot-path cost against a synchronous per-request Arrow write.

Every contender runs with one BLAS/OpenMP thread (set below, inherited by the Evidently subprocess): on
a busy 2-CPU machine OpenBLAS threads spinning inside small dot products otherwise dominate the
scipy loop's time, which would flatter fastml for the wrong reason. Times are reported as wall-clock
and as process CPU time (all threads), medians over repeats; CPU time is the steadier number on a busy
machine.

Run: ``.venv/bin/python benchmarks/bench_monitoring.py [--quick] [--json PATH]`` (``--quick`` skips Evidently,
whose import alone takes seconds).
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchjson  # noqa: E402 - the benchmarks folder is not a package
from envinfo import machine_lines  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EVIDENTLY_PY = ROOT / ".cache" / "evidently-venv" / "bin" / "python"
ROWS, COLS = 10_000, 20


def env_header() -> str:
    import pyarrow
    import scipy

    ev = "not installed"
    if EVIDENTLY_PY.exists():
        r = subprocess.run(
            [
                str(EVIDENTLY_PY),
                "-c",
                "import importlib.metadata as m; print(m.version('evidently'), m.version('pandas'))",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        ev = "evidently {} (pandas {})".format(*r.stdout.split()) if r.returncode == 0 else "broken venv"
    return "\n".join(
        [
            *machine_lines(),
            f"- numpy {np.__version__}; scipy {scipy.__version__}; pyarrow {pyarrow.__version__}; {ev}",
        ]
    )


class Timing:
    """Median wall-clock and process-CPU seconds."""

    def __init__(self, wall: float, cpu: float):
        self.wall, self.cpu = wall, cpu

    def __str__(self) -> str:
        return f"{self.wall * 1e3:.1f} ms ({self.cpu * 1e3:.1f} ms CPU)"


def timeit(fn, repeat: int) -> tuple[Timing, object]:
    walls, cpus, out = [], [], None
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        cpus.append(time.process_time() - c)
        walls.append(time.perf_counter() - w)
    return Timing(statistics.median(walls), statistics.median(cpus)), out


def make_data(rows: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    ref = rng.normal(size=(rows, COLS))
    cur = rng.normal(size=(ROWS, COLS))
    cur[:, : COLS // 2] += np.linspace(0.02, 0.5, COLS // 2)  # half the columns shift by growing amounts
    return ref, cur


# ------------------------------------------------------------------------------------ scipy baseline
def scipy_default(ref: np.ndarray, cur: np.ndarray) -> list[float]:
    """The per-column default test, written the plain way (what Evidently does under the hood)."""
    from scipy import stats

    out = []
    for j in range(ref.shape[1]):
        r, c = ref[:, j], cur[:, j]
        if r.size <= 1000:
            out.append(float(stats.ks_2samp(r, c).pvalue))
        else:
            out.append(float(stats.wasserstein_distance(r, c) / max(np.std(r), 0.001)))
    return out


def scipy_all(ref: np.ndarray, cur: np.ndarray) -> list[dict]:
    from scipy import stats
    from scipy.spatial.distance import jensenshannon

    out = []
    for j in range(ref.shape[1]):
        r, c = ref[:, j], cur[:, j]
        edges = np.histogram_bin_edges(np.concatenate([r, c]), bins="sturges")
        rp, cp = np.histogram(r, edges)[0] / r.size, np.histogram(c, edges)[0] / c.size
        js = jensenshannon(rp, cp)

        def fill(p):
            nz = p[p != 0]
            p = p.copy()
            p[p == 0] = nz.min() / 1e6 if nz.min() <= 0.0001 else 0.0001
            return p

        rf, cf = fill(rp), fill(cp)
        out.append(
            {
                "ks": float(stats.ks_2samp(r, c).pvalue),
                "wasserstein": float(stats.wasserstein_distance(r, c) / max(np.std(r), 0.001)),
                "psi": float(np.sum((rf - cf) * np.log(rf / cf))),
                "jensenshannon": float(js),
            }
        )
    return out


# ----------------------------------------------------------------------------------------- Evidently
EVIDENTLY_SCRIPT = r"""
import json, sys, time, statistics
t0 = time.perf_counter()
import numpy as np, pandas as pd
from evidently import Report
from evidently.presets import DataDriftPreset
import_s = time.perf_counter() - t0
ref = np.load(sys.argv[1]); cur = np.load(sys.argv[2]); repeat = int(sys.argv[3])
cols = [f"f{j}" for j in range(ref.shape[1])]
ref_df, cur_df = pd.DataFrame(ref, columns=cols), pd.DataFrame(cur, columns=cols)
times, cpus = [], []
for _ in range(repeat):
    t, c = time.perf_counter(), time.process_time()
    snap = Report([DataDriftPreset()]).run(cur_df, ref_df)
    cpus.append(time.process_time() - c)
    times.append(time.perf_counter() - t)
values = {}
for m in snap.dict()["metrics"]:
    cfg = m.get("config", {})
    if cfg.get("type", "").endswith("ValueDrift"):
        values[cfg["column"]] = {"method": cfg.get("method"), "value": float(m["value"])}
print(json.dumps({"import_s": import_s, "run_s": statistics.median(times), "cpu_s": statistics.median(cpus),
                  "values": values}))
"""


def run_evidently(ref: np.ndarray, cur: np.ndarray, repeat: int) -> dict | None:
    if not EVIDENTLY_PY.exists():
        return None
    with tempfile.TemporaryDirectory() as d:
        np.save(f"{d}/ref.npy", ref)
        np.save(f"{d}/cur.npy", cur)
        proc = subprocess.run(
            [str(EVIDENTLY_PY), "-c", EVIDENTLY_SCRIPT, f"{d}/ref.npy", f"{d}/cur.npy", str(repeat)],
            capture_output=True,
            text=True,
            timeout=900,
        )
    if proc.returncode != 0:
        print(f"(Evidently failed: {proc.stderr[-500:]})", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check_equal(name: str, ours: list[float], theirs: list[float]) -> None:
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-12, err_msg=name)


def ratio(base: Timing, ours: Timing) -> str:
    return f"{base.wall / ours.wall:.1f}x ({base.cpu / ours.cpu:.1f}x CPU)"


def drift_benchmarks(quick: bool, result: benchjson.Report | None = None) -> list[str]:
    from fastml.monitoring.drift import detect_drift
    from fastml.monitoring.profile import ReferenceProfile

    rep_fast, rep_scipy, rep_ev = (5, 3, 2) if quick else (15, 7, 3)
    lines = [
        "| scenario | Evidently DataDriftPreset | scipy loop | fastml (raw reference) | fastml (profile) | "
        "fastml vs scipy | fastml vs Evidently |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, ref_rows, all_stats in (
        ("default tests, ref 10,000 rows (normed Wasserstein)", ROWS, False),
        ("all statistics (KS, Wasserstein, PSI, JS)", ROWS, True),
        ("default tests, ref 1,000 rows (exact KS)", 1000, False),
    ):
        ref, cur = make_data(ref_rows)
        ref_d = {f"f{j}": ref[:, j] for j in range(COLS)}
        cur_d = {f"f{j}": cur[:, j] for j in range(COLS)}
        t_fast, rep = timeit(lambda: detect_drift(ref_d, cur_d, all_statistics=all_stats), rep_fast)  # noqa: B023
        profile = ReferenceProfile.from_data(ref_d)
        t_prof, rep2 = timeit(lambda: detect_drift(profile, cur_d, all_statistics=all_stats), rep_fast)  # noqa: B023
        if all_stats:
            t_sc, sc = timeit(lambda: scipy_all(ref, cur), rep_scipy)  # noqa: B023 - called before the loop moves on
            for k in ("ks", "wasserstein", "psi", "jensenshannon"):
                check_equal(k, [c.statistics[k] for c in rep.columns], [s[k] for s in sc])
        else:
            t_sc, sc = timeit(lambda: scipy_default(ref, cur), rep_scipy)  # noqa: B023
            check_equal(label, [c.score for c in rep.columns], sc)
        check_equal(label + " (profile)", [c.score for c in rep2.columns], [c.score for c in rep.columns])
        ev = None if all_stats or quick else run_evidently(ref, cur, rep_ev)
        if ev is not None:
            check_equal(
                "evidently " + label,
                [c.score for c in rep.columns],
                [ev["values"][f"f{j}"]["value"] for j in range(COLS)],
            )
        t_ev = Timing(ev["run_s"], ev["cpu_s"]) if ev else None
        ev_cell = (
            str(t_ev)
            if t_ev
            else (
                "not run (all statistics is not a preset)" if all_stats else "not measured (no .cache/evidently-venv)"
            )
        )
        lines.append(
            f"| {label} | {ev_cell} | {t_sc} | {t_fast} | "
            f"{t_prof} | {ratio(t_sc, t_fast)} / {ratio(t_sc, t_prof)} | "
            + (f"{ratio(t_ev, t_fast)} / {ratio(t_ev, t_prof)}" if t_ev else "n/a")
            + " |"
        )
        if ev:
            lines.append(f"| (Evidently import time: {ev['import_s'] * 1e3:.0f} ms, not included above) | | | | | | |")
        if result is not None and ref_rows == ROWS and not all_stats:
            result.add(
                benchjson.time_row(
                    "drift 10,000 x 20 columns, default tests (CPU time)",
                    "scipy loop",
                    t_sc.cpu * 1e3,
                    t_fast.cpu * 1e3,
                    "ms",
                    2.0,
                )
            )
            if t_ev:
                result.add(
                    benchjson.time_row(
                        "drift 10,000 x 20 columns, default tests (CPU time)",
                        "Evidently DataDriftPreset",
                        t_ev.cpu * 1e3,
                        t_fast.cpu * 1e3,
                        "ms",
                        20.0,
                    )
                )
            elif quick:
                result.note("Evidently not run in --quick (its import alone takes seconds)")
            else:
                result.note(
                    f"Evidently not measured: no environment at {EVIDENTLY_PY.parent.parent} "
                    "(scripts/test.sh installs it)"
                )
    lines.append("")
    lines.append(
        f"Current data: {ROWS:,} rows x {COLS} numeric columns; times are medians of {rep_fast} (fastml), "
        f"{rep_scipy} (scipy) and {rep_ev} (Evidently) runs. Every fastml score was checked equal (1e-6 relative) "
        "to the scipy loop's and to Evidently's per-column values in the same run. Ratios: baseline time / fastml time "
        "(raw reference / prebuilt profile); wall-clock with CPU-time ratio in brackets."
    )
    return lines


def logger_benchmark(quick: bool, result: benchjson.Report | None = None) -> list[str]:
    import pyarrow as pa

    from fastml.monitoring import PredictionLogger

    n = 5_000 if quick else 20_000
    x = np.random.default_rng(0).normal(size=(4, 32)).astype(np.float32)
    outs = {"label": np.array([0, 1, 1, 0]), "probabilities": np.full((4, 2), 0.5, np.float32)}
    with tempfile.TemporaryDirectory() as d:
        lg = PredictionLogger(d, capacity=n + 1)
        t = time.perf_counter()
        for i in range(n):
            lg.log(model="m", version=1, inputs={"input": x}, outputs=outs, latency_us=100.0, request_id=str(i))
        t_log = (time.perf_counter() - t) / n
        lg.close()
        assert lg.written == n and lg.dropped == 0
        schema = pa.schema([("request_id", pa.string()), ("input", pa.list_(pa.float32(), 32)), ("label", pa.int64())])
        with pa.OSFile(f"{d}/sync.arrows", "wb") as sink, pa.ipc.new_stream(sink, schema) as w:
            t = time.perf_counter()
            for i in range(n):
                batch = pa.record_batch(
                    [
                        pa.array([str(i)] * 4),
                        pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 32),
                        pa.array(outs["label"]),
                    ],
                    schema=schema,
                )
                w.write_batch(batch)
            t_sync = (time.perf_counter() - t) / n
    if result is not None:
        result.add(
            benchjson.time_row(
                "prediction log, caller-side cost per request",
                "synchronous Arrow write",
                t_sync * 1e6,
                t_log * 1e6,
                "us",
                5.0,
            )
        )
    return [
        "| caller-side cost per request (4 rows x 32 features) | synchronous Arrow write per request | "
        "fastml PredictionLogger.log | ratio |",
        "|---|---|---|---|",
        f"| {n:,} requests | {t_sync * 1e6:.1f} us | {t_log * 1e6:.1f} us | {t_sync / t_log:.1f}x |",
    ]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repetitions, no Evidently")
    benchjson.add_arguments(ap)
    args = ap.parse_args()
    result = benchjson.Report("bench_monitoring.py", quick=args.quick)
    print("## monitoring benchmark\n")
    print(env_header())
    print("\n### Data drift, 10,000 x 20 columns\n")
    print("\n".join(drift_benchmarks(args.quick, result)))
    print("\n### Prediction log hot path\n")
    print("\n".join(logger_benchmark(args.quick, result)))
    result.write(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
