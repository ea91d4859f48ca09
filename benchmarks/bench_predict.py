"""fastml predict (file in, file out) vs raw ONNX Runtime at its best batch size on arrays in memory.

    python benchmarks/bench_predict.py [--quick] [--json PATH]

A Parquet file of N rows x 16 features (1,000,000 rows; 100,000 with --quick) is scored by ``fastml
predict`` (a subprocess: read in chunks, scored with every core, written to Parquet beside an id column)
and, in the same run, by a bare ``InferenceSession.run`` loop over the same rows already in memory as one
float32 array, at the settings that are fastest for it: batch size (1,024 / 8,192 / 65,536 rows; --quick
tries 65,536 only, the fastest in every run on this model) and ONNX
Runtime's pool-thread spinning on or off (the baseline gets whichever is faster), with one intra-op thread per
core. The baseline does no I/O and starts no process, so the ratio is the share of raw model throughput that the
file pipeline keeps (target >= 0.8x). Medians of the repeats; each fastml measurement alternates with a pass of
the baseline at its best settings, and its ratio is against the median of those passes, so both sides of a
ratio saw the same machine (a shared machine's load swings within a minute).

fastml schedules the work differently from the baseline: one scoring thread per core, each running whole
chunks through a one-intra-op-thread session, instead of each run split over the cores. An extra row gives raw
ONNX Runtime on the arrays in memory with that same scheduling (no I/O, no process), so the gain the
scheduling brings is visible apart from the file pipeline's own cost.

Rows:
  * fastml's scoring function (``predict_file``, what the CLI's handler calls: model load, Parquet in, scoring,
    Parquet out) called in this process, in rounds alternating with the raw loop at its best settings, after
    a warm-up of each: the same code path and files as the command, without a process start. This is the
    --quick goal row: at 100,000 rows a process start (~1-2 s of imports) would be most of the wall time,
    and that is not what the goal is about;
  * the whole command as a user runs it, subprocess wall time from start to exit (the full mode's goal row:
    at 1,000,000 rows the start is a small share), in rounds alternating with the raw loop at its best settings;
  * fastml's scoring function vs raw ONNX Runtime with fastml's scheduling (informational);
  * the command's time outside its scoring loop (its wall time minus the loop's seconds it reports: process
    start, imports, model load, exit) vs a bare interpreter importing only what any Python scorer needs (numpy,
    onnxruntime, pyarrow.parquet);
  * (full mode only, informational) the command vs a minimal hand-written Python scorer run as a process the
    same way (pyarrow's ``iter_batches`` at the baseline's best batch size, one ``InferenceSession`` on every
    core with the baseline's spinning setting, a ``pyarrow.parquet.ParquetWriter``), one run after each command
    run: the same job as the command, file in and file out with a process start, so the ratio is what fastml
    adds or saves over what a user would write without it (its numpy columns become Arrow arrays without
    ``pa.array``, whose probe for pandas would import it: ~0.3 s that the command does not pay either). Its output is checked (row count, and a ``label``
    column equal to the command's). The goal row stays the strict one above.
  * (full mode only) the same command with ``--no-native-trees``, ONNX Runtime's tree operator scoring the chunks
    in place of fastml's native tree kernel (``fastml.engine.native_trees``; this model is one tree ensemble, so
    the command uses the kernel by default), one run after each command run, and its ratio to the raw baseline;
  * the native tree kernel against ONNX Runtime's tree operator on the arrays in memory, one thread each, one
    65,536-row slice at a time (rows per core-second; their labels are checked equal).
The command runs as the console script runs it (``from fastml.cli import main``, nothing imported ahead), so
what its start does about its imports is measured. The predict subprocess's peak RSS (VmHWM) is reported (and,
in the full mode, with a --max-memory-mb budget) next to the input's in-memory size and the bare interpreter's.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
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
from fastml.serving.batch_predict import _default_rows, _even_rows  # noqa: E402

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


def raw_best(model: Path, x: np.ndarray, repeats: int, batches=BATCHES) -> tuple[str, float, tuple[str, int]]:
    """(best settings, median rows/s at them, (spinning "1"/"0", batch rows)) of a plain session.run loop
    over ``x``."""
    import onnxruntime as ort

    best = ("", 0.0, ("0", batches[0]))
    for spin in ("1", "0"):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = os.cpu_count() or 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", spin)
        sess = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
        for batch in batches:
            sess.run(None, {"input": x[:batch]})  # warm
            rates = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                for s in range(0, len(x), batch):
                    sess.run(None, {"input": x[s : s + batch]})
                rates.append(len(x) / (time.perf_counter() - t0))
            rate = statistics.median(rates)
            if rate > best[1]:
                best = (f"batch {batch}, spinning {'on' if spin == '1' else 'off'}", rate, (spin, batch))
    return best


def raw_session(model: Path, spin: str):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = os.cpu_count() or 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", spin)
    return ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])


def raw_pass_fn(model: Path, x: np.ndarray, best: tuple[str, int]):
    """A callable returning the rows/s of one pass of the plain ``session.run`` loop over ``x`` at the
    baseline's best settings (its session built and warmed once, as raw_best warms it)."""
    spin, batch = best
    sess = raw_session(model, spin)
    sess.run(None, {"input": x[:batch]})

    def raw_pass() -> float:
        t0 = time.perf_counter()
        for s in range(0, len(x), batch):
            sess.run(None, {"input": x[s : s + batch]})
        return len(x) / (time.perf_counter() - t0)

    return raw_pass


def raw_side_by_side_fn(model: Path, x: np.ndarray, batch: int):
    """A callable returning the rows/s of one pass of raw ONNX Runtime over ``x`` scheduled as fastml predict
    schedules it: a one-intra-op-thread session shared by one thread per core, each running whole
    ``batch``-row slices (``run`` releases the GIL), no I/O."""
    import concurrent.futures

    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    pool = concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1)
    starts = range(0, len(x), batch)
    list(pool.map(lambda s: sess.run(None, {"input": x[s : s + batch]}), starts[:2]))  # warm

    def side_by_side_pass() -> float:
        t0 = time.perf_counter()
        list(pool.map(lambda s: sess.run(None, {"input": x[s : s + batch]}), starts))
        return len(x) / (time.perf_counter() - t0)

    return side_by_side_pass


def kernel_vs_operator(model: Path, x: np.ndarray, repeats: int) -> tuple[float, float]:
    """Median rows/s of (ONNX Runtime's tree operator, fastml's native tree kernel), one thread each, over ``x`` in
    65,536-row slices, alternating passes; raises if their labels differ."""
    import onnxruntime as ort

    from fastml.engine.native_trees import TreeSession, tree_session

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    data = model.read_bytes()
    sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    native = tree_session(sess, data)
    if not isinstance(native, TreeSession):
        raise RuntimeError("the native tree kernel refused the benchmark model")
    slices = [x[s : s + 65_536] for s in range(0, len(x), 65_536)]
    if not np.array_equal(sess.run(None, {"input": slices[0]})[0], native.run(None, {"input": slices[0]})[0]):
        raise RuntimeError("the native tree kernel's labels differ from ONNX Runtime's")

    def one_pass(scorer) -> float:
        t0 = time.perf_counter()
        for part in slices:
            scorer.run(None, {"input": part})
        return len(x) / (time.perf_counter() - t0)

    operator, kernel = [], []
    for _ in range(repeats):
        operator.append(one_pass(sess))
        kernel.append(one_pass(native))
    return statistics.median(operator), statistics.median(kernel)


def in_process_rounds(model: Path, src: Path, out: Path, x: np.ndarray, raw_pass, side_pass, rounds: int):
    """Median rows/s of (raw ONNX Runtime at its best settings, raw ONNX Runtime scheduled as fastml schedules
    it, fastml's scoring function) over ``rounds`` alternating rounds in this process, after one warm-up of
    the function ``fastml predict`` calls (``predict_file``: model load, Parquet in, scoring, Parquet out),
    without a process start. The side-by-side slices are the chunks fastml reads (same row count)."""
    from fastml.serving.batch_predict import predict_file

    def fastml_pass() -> float:
        t0 = time.perf_counter()
        report = predict_file(model, src, out, key_columns=["id"])  # what the CLI's handler calls
        return report.rows / (time.perf_counter() - t0)

    fastml_pass()  # warm: the first call in a process also pays for pyarrow's and ORT's first allocations
    raw_rates, side_rates, fastml_rates = [], [], []
    for _ in range(rounds):
        raw_rates.append(raw_pass())
        side_rates.append(side_pass())
        fastml_rates.append(fastml_pass())
    return statistics.median(raw_rates), statistics.median(side_rates), statistics.median(fastml_rates)


# The predict command in a child process, as the ``fastml`` console script runs it (nothing imported ahead of
# ``fastml.cli``), reporting its peak RSS since its exec (VmHWM) on stderr; the command ends its process with
# os._exit once its output is committed, so the report is made just before that happens.
_CHILD = """
import os, sys
def report():
    hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")][0].split()[1]
    print("peak_rss_kb", hwm, file=sys.stderr, flush=True)
real_exit = os._exit
def exit_after_report(code):
    report()
    real_exit(code)
os._exit = exit_after_report
from fastml.cli import main
sys.argv[0] = "fastml"
code = main()
report()
sys.exit(code)
"""

# The process start a Python scorer cannot avoid: the interpreter and the libraries it scores with.
_BARE = "import numpy, onnxruntime, pyarrow.parquet"
_BARE_CHILD = _CHILD.split("from fastml.cli")[0] + _BARE + "\nreport()\n"


# A minimal Python scorer written without fastml, doing the command's job: the file in batches of the baseline's
# best size, one session with an intra-op thread per core, each batch's predictions written beside its id with
# one ParquetWriter (no dictionary encoding, as fastml writes). argv: model, input, output, batch rows, spinning.
_SCORER = """
import numpy as np, onnxruntime as ort, pyarrow as pa, pyarrow.parquet as pq
model, src, dst, batch, spin = sys.argv[1:6]
opts = ort.SessionOptions()
opts.intra_op_num_threads = os.cpu_count() or 1
opts.add_session_config_entry("session.intra_op.allow_spinning", spin)
sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
reader = pq.ParquetFile(src)
features = [name for name in reader.schema_arrow.names if name != "id"]
writer = None
def column(values):  # numpy -> Arrow without pa.array, whose pandas probe imports pandas (~0.3 s)
    values = np.ascontiguousarray(values)
    return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values), [None, pa.py_buffer(values)])
for b in reader.iter_batches(batch_size=int(batch), columns=["id", *features]):
    x = b.select(features).to_tensor(row_major=True).to_numpy()
    label, proba = sess.run(None, {"input": x})
    out = pa.table(
        {
            "id": b.column("id"),
            "label": column(label),
            "probabilities_0": column(proba[:, 0]),
            "probabilities_1": column(proba[:, 1]),
        }
    )
    if writer is None:
        writer = pq.ParquetWriter(dst, out.schema, use_dictionary=False)
    writer.write_table(out)
writer.close()
"""
_SCORER_CHILD = _CHILD.split("from fastml.cli")[0] + _SCORER + "\nreport()\n"


def _run_child(argv: list[str]) -> tuple[float, int, str]:
    """(wall seconds, peak RSS in KiB, stdout) of a child process that reports its peak as ``_CHILD`` does."""
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    wall_s = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[:3]} failed ({proc.returncode}): {proc.stderr}")
    peak_kb = int(proc.stderr.strip().splitlines()[-1].split()[1])
    return wall_s, peak_kb, proc.stdout


def bare_start() -> tuple[float, int]:
    """(wall seconds, peak RSS in KiB) of a bare interpreter importing numpy, onnxruntime and pyarrow.parquet."""
    wall_s, peak_kb, _ = _run_child([sys.executable, "-c", _BARE_CHILD])
    return wall_s, peak_kb


def fastml_predict(model: Path, src: Path, out: Path, extra: list[str]) -> tuple[float, float, int]:
    """(wall seconds of the subprocess, seconds it spent in the scoring loop, peak RSS in KiB) of one
    ``fastml predict``."""
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
    wall_s, peak_kb, stdout = _run_child([sys.executable, "-c", _CHILD, *args])
    return wall_s, json.loads(stdout.strip().splitlines()[-1])["seconds"], peak_kb


def hand_written(model: Path, src: Path, out: Path, best: tuple[str, int]) -> tuple[float, int]:
    """(wall seconds, peak RSS in KiB) of one run of the hand-written scorer (``_SCORER``) as a process, at the
    baseline's best (spinning, batch rows)."""
    spin, batch = best
    wall_s, peak_kb, _ = _run_child(
        [sys.executable, "-c", _SCORER_CHILD, str(model), str(src), str(out), str(batch), spin]
    )
    return wall_s, peak_kb


def check_hand_written(out: Path, command_out: Path, rows: int) -> None:
    """Raise unless the hand-written scorer wrote ``rows`` rows whose ``label`` column equals the command's."""
    import pyarrow.parquet as pq

    got = pq.ParquetFile(out).metadata.num_rows
    if got != rows:
        raise RuntimeError(f"the hand-written scorer wrote {got} rows, not {rows}")
    mine = pq.read_table(out, columns=["label"]).column("label").to_numpy()
    theirs = pq.read_table(command_out, columns=["label"]).column("label").to_numpy()
    if len(theirs) != rows or not np.array_equal(mine, theirs):
        raise RuntimeError("the hand-written scorer's label column differs from fastml predict's")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    benchjson.add_arguments(ap)
    ap.add_argument("--rows", type=int, default=None, help="rows in the file (default 1,000,000; 100,000 with --quick)")
    args = ap.parse_args(argv)
    print("# bench_predict.py")
    print("\n".join(envinfo.machine_lines()))
    report = benchjson.Report("bench_predict.py", quick=args.quick)
    rows = args.rows or (100_000 if args.quick else 1_000_000)
    repeats = 1 if args.quick else 3
    rounds = 3 if args.quick else 5
    # The command's row sits near its goal and a shared machine's speed swings within a minute: five pairs give
    # a median that one slow pass does not move (each pair is ~3 s).
    command_runs = 1 if args.quick else 5
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
        batch, best_rate, best = raw_best(model, x, repeats, BATCHES[2:] if args.quick else BATCHES)
        raw_pass = raw_pass_fn(model, x, best)
        # The slices fastml's scoring threads get: the chunks it cuts this file into by default.
        chunk_rows = _even_rows(_default_rows(os.cpu_count() or 1), rows, os.cpu_count() or 1)
        side_pass = raw_side_by_side_fn(model, x, chunk_rows)
        raw_alt_rate, side_rate, call_rate = in_process_rounds(
            model, d / "in.parquet", d / "out_inproc.parquet", x, raw_pass, side_pass, rounds
        )
        walls, scoring, peaks, bare, bare_peaks, raw_cmd = [], [], [], [], [], []
        scorer_walls, scorer_peaks = [], []
        operator_walls, raw_operator = [], []
        for _ in range(command_runs):
            raw_cmd.append(raw_pass())  # the baseline beside each command run: both see the same machine
            # With spinning on, the baseline's pool threads keep spinning for a while after its last run (~60 ms of
            # CPU measured on 2 cores): let them park so that they do not take cores from the command's run.
            time.sleep(0.3)
            wall_s, scoring_s, peak = fastml_predict(model, d / "in.parquet", d / "out.parquet", [])
            walls.append(wall_s)
            scoring.append(scoring_s)
            peaks.append(peak)
            if not args.quick:  # the same job written by hand, right after the command: a process start more
                scorer_s, scorer_peak = hand_written(model, d / "in.parquet", d / "out_scorer.parquet", best)
                scorer_walls.append(scorer_s)
                scorer_peaks.append(scorer_peak)
                # the command with ONNX Runtime's tree operator, against a raw pass of its own
                raw_operator.append(raw_pass())
                time.sleep(0.3)
                operator_s, _, _ = fastml_predict(
                    model, d / "in.parquet", d / "out_operator.parquet", ["--no-native-trees"]
                )
                operator_walls.append(operator_s)
            bare_s, bare_peak = bare_start()
            bare.append(bare_s)
            bare_peaks.append(bare_peak)
        operator_rate, kernel_rate = kernel_vs_operator(model, x, 3)
        del x
        if operator_walls:  # both scorers must have written the same predictions
            same = pq.read_table(d / "out_operator.parquet").equals(pq.read_table(d / "out.parquet"))
            if not same:
                raise RuntimeError("fastml predict wrote other predictions with --no-native-trees")
        if scorer_walls:  # a baseline that wrote a wrong file would make its row meaningless
            check_hand_written(d / "out_scorer.parquet", d / "out.parquet", rows)
        base = statistics.median(bare_peaks)
        budget_note = ""
        if not args.quick:  # a third process start: the quick mode stays within its CI time
            budget_extra = ["--max-memory-mb", "16"]
            *_, budget_peak = fastml_predict(model, d / "in.parquet", d / "out_budget.parquet", budget_extra)
            budget_note = (
                f", {budget_peak / 1024:.0f} MiB with --max-memory-mb 16 ({(budget_peak - base) / 1024:.0f} MiB above)"
            )
    wall_s = statistics.median(walls)
    start_s = statistics.median(w - c for w, c in zip(walls, scoring))
    bare_s = statistics.median(bare)
    fastml_rate = rows / wall_s
    raw_rate = statistics.median(raw_cmd)
    pairs = ", ".join(f"{rows / w / raw:.2f}x" for raw, w in zip(raw_cmd, walls))
    print(f"\n{rows:,} rows x {FEATURES} features ({data_mb:.0f} MiB in memory), {os.cpu_count()} cores")
    print(f"  raw ONNX Runtime, arrays in memory, best settings {batch} (median of {repeats}): {best_rate:,.0f} rows/s")
    print(
        f"  fastml's scoring function in process (predict_file: model load, Parquet in, scoring, Parquet out), "
        f"{rounds} rounds alternating with raw ONNX Runtime at {batch}: {call_rate:,.0f} vs {raw_alt_rate:,.0f} rows/s "
        f"({call_rate / raw_alt_rate:.2f}x)"
    )
    print(
        f"  raw ONNX Runtime scheduled as fastml schedules it (one-thread session, {os.cpu_count()} threads side by "
        f"side on {chunk_rows:,}-row slices), in the same rounds: {side_rate:,.0f} rows/s ({side_rate / raw_alt_rate:.2f}x "
        f"the baseline; fastml's scoring function keeps {call_rate / side_rate:.2f}x of it)"
    )
    print(
        f"  fastml predict subprocess, as a user runs it (median of {command_runs}, each after a pass of raw ONNX Runtime "
        f"at {batch}: {raw_rate:,.0f} rows/s): {fastml_rate:,.0f} rows/s ({fastml_rate / raw_rate:.2f}x; "
        f"{wall_s:.2f} s wall, of which the scoring loop {statistics.median(scoring):.2f} s and {start_s:.2f} s "
        f"({start_s / wall_s:.0%}) process start, imports, model load and exit; a bare interpreter importing numpy, "
        f"onnxruntime and pyarrow takes {bare_s:.2f} s)"
    )
    print(f"  each command run against the raw pass before it: {pairs}")
    print(
        f"  fastml predict peak RSS: {max(peaks) / 1024:.0f} MiB (default chunks; "
        f"{(max(peaks) - base) / 1024:.0f} MiB above the {base / 1024:.0f} MiB of a bare interpreter holding numpy, "
        f"onnxruntime and pyarrow){budget_note}"
    )
    print(
        f"  native tree kernel vs ONNX Runtime's tree operator, one thread, 65,536-row slices in memory (median of 3 "
        f"alternating passes): {kernel_rate:,.0f} vs {operator_rate:,.0f} rows/s ({kernel_rate / operator_rate:.2f}x)"
    )
    if operator_walls:
        operator_cmd_rate = rows / statistics.median(operator_walls)
        operator_pairs = ", ".join(f"{rows / w / raw:.2f}x" for raw, w in zip(raw_operator, operator_walls))
        print(
            f"  fastml predict --no-native-trees (ONNX Runtime's tree operator; median of {len(operator_walls)}, each "
            f"after a raw pass: {statistics.median(raw_operator):,.0f} rows/s): {operator_cmd_rate:,.0f} rows/s "
            f"({operator_cmd_rate / statistics.median(raw_operator):.2f}x; pairs {operator_pairs}); same output"
        )
    if scorer_walls:
        scorer_rate = rows / statistics.median(scorer_walls)
        print(
            f"  a hand-written Python scorer as a process (pyarrow read, ONNX Runtime at {batch}, pyarrow write; "
            f"median of {len(scorer_walls)}): {scorer_rate:,.0f} rows/s; fastml predict is "
            f"{fastml_rate / scorer_rate:.2f}x of it (its peak RSS {max(scorer_peaks) / 1024:.0f} MiB)"
        )
    in_process = benchjson.rate_row(
        f"fastml predict's scoring function, {rows:,} rows in process (Parquet in/out, model load included)",
        f"raw ONNX Runtime, {batch} (alternating rounds)",
        raw_alt_rate,
        call_rate,
        "rows/s",
        # CI floor under what a shared 2-core machine measures at 100,000 rows (see the commit log); the goal
        # is the 0.8x, which the full size's command (below) is held to.
        0.2,
        goal=0.8 if args.quick else None,
    )
    command = benchjson.rate_row(
        f"fastml predict {rows:,} rows (Parquet in/out)",
        f"raw ONNX Runtime, {batch} (alternating rounds)",
        raw_rate,
        fastml_rate,
        "rows/s",
        # CI floors under what a shared 2-core machine measures: 1,000,000 rows 0.98x (load ~8); at 100,000
        # rows the process start is half the wall time (0.21x; 0.04x seen under load ~20), informative only.
        0.4 if not args.quick else 0.02,
        goal=None if args.quick else 0.8,
    )
    report.add(in_process if args.quick else command)
    report.add(command if args.quick else in_process)
    report.add(
        benchjson.rate_row(
            f"fastml predict's scoring function, {rows:,} rows in process (Parquet in/out, model load included)",
            f"raw ONNX Runtime with fastml's scheduling ({os.cpu_count()} one-thread runs side by side), no I/O",
            side_rate,
            call_rate,
            "rows/s",
            # Informational: what the file pipeline keeps of raw ONNX Runtime scheduled the same way (0.95x at
            # 1,000,000 rows, 0.4-0.8x at 100,000 on a 2-core machine under load 3-5); the floor only catches a
            # collapse.
            0.2,
        )
    )
    report.add(
        benchjson.time_row(
            "fastml predict outside its scoring loop (process start, imports, model load, exit)",
            "bare interpreter importing numpy, onnxruntime, pyarrow.parquet",
            bare_s,
            start_s,
            "s",
            0.1,
        )
    )
    if scorer_walls:
        report.add(
            benchjson.rate_row(
                f"fastml predict {rows:,} rows (Parquet in/out)",
                f"hand-written Python scorer as a process (pyarrow read, ONNX Runtime at {batch}, pyarrow write)",
                scorer_rate,
                fastml_rate,
                "rows/s",
                # Informational: the same job as the command, so the ratio is what fastml adds or saves over a
                # minimal scorer; the floor only catches a collapse.
                0.3,
            )
        )
    report.add(
        benchjson.rate_row(
            "native tree kernel, one thread, arrays in memory",
            "ONNX Runtime's tree operator, one thread (alternating passes)",
            operator_rate,
            kernel_rate,
            "rows/s",
            # Informational beside the goal rows: 2.0-2.3x measured on the 2-core development VM; the floor only
            # catches a kernel that lost its lock-step walk.
            0.8,
        )
    )
    if operator_walls:
        report.add(
            benchjson.rate_row(
                f"fastml predict --no-native-trees {rows:,} rows (ONNX Runtime's tree operator)",
                f"raw ONNX Runtime, {batch} (alternating rounds)",
                statistics.median(raw_operator),
                operator_cmd_rate,
                "rows/s",
                # Informational: the command as it was before the native kernel (0.73-0.83x on the 2-core VM).
                0.3,
            )
        )
    report.write(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
