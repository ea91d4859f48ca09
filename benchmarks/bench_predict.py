"""fastml predict (file in, file out) vs raw ONNX Runtime at its best batch size on arrays in memory.

    python benchmarks/bench_predict.py [--quick] [--json PATH]

A Parquet file of N rows x 16 features (1,000,000 rows; 100,000 with --quick) is scored by ``fastml
predict`` (a subprocess: read in chunks, scored with every core, written to Parquet beside an id column)
and, in the same run, by a bare ``InferenceSession.run`` loop over the same rows already in memory as one
float32 array, at the batch size that is fastest for it (1,024 / 8,192 / 65,536 rows; same intra-op
threads). The baseline does no I/O at all, so the ratio is the share of raw model throughput that the file
pipeline keeps (target >= 0.8x). The predict subprocess's peak RSS is reported (with and without a
--max-memory-mb budget) next to the input's in-memory size.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import benchjson  # noqa: E402 - the benchmarks folder is not a package
import envinfo  # noqa: E402

FEATURES = 16
BATCHES = (1024, 8192, 65536)


def make_model(d: Path) -> Path:
    """A gradient-boosted classifier (60 trees of depth 4), pickled, converted by fastml convert's code."""
    from sklearn.datasets import make_classification
    from sklearn.ensemble import HistGradientBoostingClassifier

    from fastml.convert.frameworks import convert_file

    X, y = make_classification(n_samples=4000, n_features=FEATURES, random_state=0)
    model = HistGradientBoostingClassifier(max_iter=60, max_depth=4, random_state=0).fit(X.astype(np.float32), y)
    (d / "model.pkl").write_bytes(pickle.dumps(model))
    convert_file(d / "model.pkl", d / "model.onnx")
    return d / "model.onnx"


def raw_best(model: Path, x: np.ndarray, repeats: int) -> tuple[int, float]:
    """(best batch size, rows/s) of a plain session.run loop over ``x``."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = os.cpu_count() or 1
    sess = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    best = (0, 0.0)
    for batch in BATCHES:
        sess.run(None, {"input": x[:batch]})  # warm
        for _ in range(repeats):
            t0 = time.perf_counter()
            for s in range(0, len(x), batch):
                sess.run(None, {"input": x[s : s + batch]})
            rate = len(x) / (time.perf_counter() - t0)
            if rate > best[1]:
                best = (batch, rate)
    return best


# The predict command in a child process whose peak RSS is measured from after its imports (Linux: writing 5
# to /proc/self/clear_refs resets VmHWM), so the number is the scoring run's, not the import's.
_CHILD = """
import sys
import fastml.cli, fastml.serving.batch_predict, onnxruntime, pyarrow.parquet
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
code = fastml.cli.main(sys.argv[1:])
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1]
print("peak_rss_kb", hwm, file=sys.stderr)
sys.exit(code)
"""


def fastml_predict(model: Path, src: Path, out: Path, extra: list[str]) -> tuple[float, int]:
    """(rows/s as the command reports it, peak RSS in KiB) of one ``fastml predict`` subprocess."""
    args = [
        "predict",
        str(model),
        "--input",
        str(src),
        "--output",
        str(out),
        "--key-columns",
        "id",
        "--json",
        "--no-progress",
        *extra,
    ]
    proc = subprocess.run([sys.executable, "-c", _CHILD, *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"fastml predict failed: {proc.stderr}")
    peak_kb = int(proc.stderr.strip().splitlines()[-1].split()[1])
    return json.loads(proc.stdout.strip().splitlines()[-1])["rows_per_s"], peak_kb


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    benchjson.add_arguments(ap)
    ap.add_argument("--rows", type=int, default=None, help="rows in the file (default 1,000,000; 100,000 with --quick)")
    args = ap.parse_args(argv)
    print("# bench_predict.py")
    print("\n".join(envinfo.machine_lines()))
    report = benchjson.Report("bench_predict.py", quick=args.quick)
    rows = args.rows or (100_000 if args.quick else 1_000_000)
    repeats = 2 if args.quick else 3
    import pyarrow as pa
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory(prefix="bench_predict_") as tmp:
        d = Path(tmp)
        model = make_model(d)
        x = np.random.default_rng(0).normal(size=(rows, FEATURES)).astype(np.float32)
        table = pa.table({"id": np.arange(rows, dtype=np.int64), **{f"f{i}": x[:, i] for i in range(FEATURES)}})
        pq.write_table(table, d / "in.parquet", row_group_size=65_536)
        data_mb = table.nbytes / 2**20
        del table
        batch, raw_rate = raw_best(model, x, repeats)
        del x
        rates, peaks = [], []
        for _ in range(repeats):
            rate, peak = fastml_predict(model, d / "in.parquet", d / "out.parquet", [])
            rates.append(rate)
            peaks.append(peak)
        _, budget_peak = fastml_predict(model, d / "in.parquet", d / "out_budget.parquet", ["--max-memory-mb", "16"])
    fastml_rate = max(rates)
    print(f"\n{rows:,} rows x {FEATURES} features ({data_mb:.0f} MiB in memory), {os.cpu_count()} cores")
    print(f"  raw ONNX Runtime, arrays in memory, best batch {batch:,}: {raw_rate:,.0f} rows/s")
    print(
        f"  fastml predict, Parquet in and out (best of {repeats}):      {fastml_rate:,.0f} rows/s "
        f"({fastml_rate / raw_rate:.2f}x)"
    )
    print(
        f"  fastml predict peak RSS: {max(peaks) / 1024:.0f} MiB (default chunks), "
        f"{budget_peak / 1024:.0f} MiB with --max-memory-mb 16"
    )
    report.add(
        benchjson.rate_row(
            f"fastml predict {rows:,} rows (Parquet in/out)",
            f"raw ONNX Runtime, best batch {batch}",
            raw_rate,
            fastml_rate,
            "rows/s",
            0.2,  # CI target under today's 0.20x (quiet) to 0.34-0.43x (busy) on a 2-core machine
            goal=0.8,
        )
    )
    report.write(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
