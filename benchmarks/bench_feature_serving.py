"""Features in the request path: a model joining 10 online features in the server vs fed them in the request.

    python benchmarks/bench_feature_serving.py [--quick] [--json PATH]

Side by side, in one run, one process (the serving path without a transport, so the join's cost is not
hidden under an HTTP client's):
  * throughput, 32 asyncio callers, one entity per request: the model declared with
    ``features = [10 x "bench:fN"]`` receiving entity ids (the join in C++, once per batch of requests, one
    LMDB read transaction per batch) vs the same model receiving the same 10 values in the request (goal:
    >= 0.8x); beside it the same comparison in process CPU time per request, which a busy machine disturbs
    far less than requests/s (and which is the throughput ratio where one core is saturated);
  * p50 latency of one blocking request: the time the join adds (budget: 20 us);
  * the two-hop way (Feast + Triton): the caller reads the entity's row with python-lmdb, decodes it, then
    calls the model with the values, vs the server-side join;
  * the same pair through ``fastml serve`` over HTTP (KServe v2 binary tensors, keep-alive; one server serving
    both models, the native closed-loop generator of bench_overload.py, rounds alternating between the models):
    throughput and the server process's CPU per request from /proc. The generator sends one request verbatim,
    so every HTTP request names the same entity (its LMDB page stays in cache: the in-process rows, with
    random entities, are the ones that carry a cold page's cost).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchjson  # noqa: E402 - the benchmarks folder is not a package
from envinfo import machine_lines  # noqa: E402

N_FEATURES = 10
N_ENTITIES = 10_000
CALLERS = 32
P50_BUDGET_US = 20.0


def env_header() -> str:
    import lmdb
    import onnxruntime

    return "\n".join(
        [
            *machine_lines(),
            f"- numpy {np.__version__}, onnxruntime {onnxruntime.__version__}, python-lmdb {lmdb.__version__}",
        ]
    )


def make_model(path: Path) -> Path:
    """A small MLP over 10 features (10 -> 32 -> 1), the size of a typical ranking or fraud scorer's head."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(N_FEATURES, 32)).astype(np.float32)
    w2 = rng.normal(size=(32, 1)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("MatMul", ["r", "w2"], ["y"]),
        ],
        "mlp10",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, N_FEATURES])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def fill_stores(home: Path):
    """The same 10,000 entities x 10 features in the native store and in the python-lmdb reference store."""
    import pandas as pd

    from fastml.features import Feature, FeatureGroup, FeatureStore

    rng = np.random.default_rng(1)
    now = pd.Timestamp.now(tz="UTC")
    df = pd.DataFrame({"entity_id": np.arange(N_ENTITIES), "event_timestamp": [now] * N_ENTITIES})
    for j in range(N_FEATURES):
        df[f"f{j}"] = rng.normal(size=N_ENTITIES)
    group = FeatureGroup("bench", entities=["entity_id"], features=[Feature(f"f{j}") for j in range(N_FEATURES)])
    stores = []
    for backend in ("native", "reference"):
        fs = FeatureStore(home, online_backend=backend, sync=False)
        fs.register(group)
        if backend == "native":
            fs.ingest("bench", df)
        fs.materialize("bench")
        stores.append(fs)
    return stores


class TwoHopClient:
    """What a caller does without a server-side join: read the row with python-lmdb, decode, then infer."""

    def __init__(self, env, db):
        self.env = env
        self.db = db
        self.header = 16 + ((N_FEATURES + 7) // 8 + 7) // 8 * 8
        self.values = struct.Struct(f"<{N_FEATURES}d")

    def features(self, entity: int) -> np.ndarray:
        with self.env.begin(db=self.db) as txn:
            raw = txn.get(str(entity).encode())
        x = np.full((1, N_FEATURES), np.nan, np.float32)
        if raw is not None:
            bits = int.from_bytes(raw[16 : self.header], "little")
            vals = self.values.unpack_from(raw, self.header)
            x[0] = [v if (bits >> j) & 1 else np.nan for j, v in enumerate(vals)]
        return x


async def throughput(submit, make_request, duration_s: float) -> float:
    """Requests per second with CALLERS asyncio callers, each awaiting its request before the next."""
    done = 0
    stop_at = time.perf_counter() + duration_s

    async def caller(seed: int):
        nonlocal done
        i = seed
        while time.perf_counter() < stop_at:
            await submit(make_request(i))
            done += 1
            i += CALLERS

    t0 = time.perf_counter()
    await asyncio.gather(*(caller(c) for c in range(CALLERS)))
    return done / (time.perf_counter() - t0)


def p50s_us(calls: list, make_requests: list, n: int) -> list[float]:
    """Median microseconds per call of each path, the paths alternating call by call (a busy machine then
    slows them alike instead of whichever ran during a burst of other work)."""
    times: list[list[float]] = [[] for _ in calls]
    for i in range(n):
        for call, make, out in zip(calls, make_requests, times):
            req = make(i)
            t0 = time.perf_counter_ns()
            call(req)
            out.append((time.perf_counter_ns() - t0) / 1000)
    return [statistics.median(t) for t in times]


def binary_infer_request(model: str, name: str, datatype: str, array: np.ndarray) -> bytes:
    """One KServe v2 binary-tensor infer request (HTTP/1.1, keep-alive) carrying ``array`` as input ``name``."""
    import json

    blob = np.ascontiguousarray(array).tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "shape": list(array.shape),
                    "datatype": datatype,
                    "parameters": {"binary_data_size": len(blob)},
                }
            ],
            "parameters": {"binary_data_output": True},
        },
        separators=(",", ":"),
    ).encode()
    head = (
        f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
        f"Inference-Header-Content-Length: {len(header)}\r\nContent-Length: {len(header) + len(blob)}\r\n\r\n"
    ).encode()
    return head + header + blob


def http_rounds(home: Path, model_path: Path, refs: list[str], table: np.ndarray, rounds: int, window_s: float):
    """Requests/s and server CPU us per request of the two models over HTTP, alternating rounds (medians)."""
    from bench_overload import drive, generator
    from bench_security import port_of, spawn_server

    generator()  # compiled once, before anything is timed
    repo = home / "http_repo"
    for name in ("plain", "joined"):
        (repo / name / "1").mkdir(parents=True, exist_ok=True)
        (repo / name / "1" / "model.onnx").write_bytes(model_path.read_bytes())
    refs_toml = ", ".join(f'"{r}"' for r in refs)
    (repo / "joined" / "config.toml").write_text(f'features = [{refs_toml}]\nentity_key = "entity_id"\n')
    entity = 4321
    bodies = {
        "plain": binary_infer_request("plain", "x", "FP32", table[entity : entity + 1]),
        "joined": binary_infer_request("joined", "entity_id", "INT64", np.array([entity], np.int64)),
    }
    files = {}
    for name, body in bodies.items():
        files[name] = home / f"http_{name}.bin"
        files[name].write_bytes(body)
    proc = spawn_server(home, repo, ["--runner", "loop"], {})
    rates: dict[str, list[float]] = {"plain": [], "joined": []}
    cpu: dict[str, list[float]] = {"plain": [], "joined": []}
    try:
        port = port_of(proc)
        for _ in range(rounds):
            for name in ("plain", "joined"):
                res = drive(port, files[name], proc.pid, "closed", CALLERS, window_s)
                if set(res["outcomes"]) != {"200"}:
                    raise RuntimeError(f"HTTP load on {name!r} answered {res['outcomes']}")
                rates[name].append(res["goodput_per_s"])
                cpu[name].append(res["server_cpu_us_per_request"])
    finally:
        proc.kill()
        proc.wait()
    return (
        {k: statistics.median(v) for k, v in rates.items()},
        {k: statistics.median(v) for k, v in cpu.items()},
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    benchjson.add_arguments(parser)
    args = parser.parse_args()
    print("# bench_feature_serving\n")
    print(env_header())
    window_s = 0.25
    windows = 10 if args.quick else 40
    n_latency = 300 if args.quick else 4_000
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        os.environ["FASTML_HOME"] = str(home)
        native, reference = fill_stores(home)
        path = make_model(home / "mlp10.onnx")
        import fastml

        refs = [f"bench:f{j}" for j in range(N_FEATURES)]
        plain = fastml.load_model(path)
        # The same engine on both sides: runner="auto" times the model at load and, on a busy machine, may pick
        # the loop for one load and threads for the other, which would be measured instead of the join.
        joined = fastml.load_model(
            path, features=refs, entity_key="entity_id", feature_store=native, runner=plain.runner
        )
        env = reference.online._cache.impl.env  # python-lmdb opens an environment once per process
        client = TwoHopClient(env, env.open_db(b"bench@v1"))
        ids = np.random.default_rng(2).integers(0, N_ENTITIES, 1 << 16)
        # The in-request baseline gets the same values the join produces (read once, outside the timing).
        table = native.get_online(refs, list(range(N_ENTITIES)), as_float32=True)[0]
        id_req = [np.array([ids[i]], np.int64) for i in range(len(ids))]
        x_req = [table[ids[i] : ids[i] + 1] for i in range(len(ids))]
        mask = len(ids) - 1

        def req_joined(i):
            return {"entity_id": id_req[i & mask]}

        def req_plain(i):
            return {"x": x_req[i & mask]}

        async def two_hop(entity):
            return await plain.predict_async({"x": client.features(entity)})

        # Same answers on every path before anything is timed.
        for i in range(64):
            a = joined.predict(req_joined(i))["y"]
            b = plain.predict(req_plain(i))["y"]
            c = plain.predict({"x": client.features(int(ids[i]))})["y"]
            assert np.array_equal(a, b) and np.array_equal(a, c), (i, a, b, c)

        paths = {
            "plain": (plain.predict_async, req_plain),
            "joined": (joined.predict_async, req_joined),
            "two_hop": (two_hop, lambda i: int(ids[i & mask])),
        }
        # Many short windows, the paths taking turns: each path's rate is its requests over its own windows,
        # so a burst of other work on a shared machine lands on every path alike.
        done = dict.fromkeys(paths, 0.0)
        spent = dict.fromkeys(paths, 0.0)
        cpu = dict.fromkeys(paths, 0.0)
        for _ in range(windows):
            for key, (submit, make) in paths.items():
                t0 = time.perf_counter()
                c0 = time.process_time()
                rate = asyncio.run(throughput(submit, make, window_s))
                cpu[key] += time.process_time() - c0
                dt = time.perf_counter() - t0
                done[key] += rate * dt
                spent[key] += dt
        rates = {k: done[k] / spent[k] for k in paths}
        cpu_us = {k: 1e6 * cpu[k] / done[k] for k in paths}
        # Best of several rounds (the round where the join added least): a burst of other work on a shared
        # machine can cover one whole round, and it says nothing about the join.
        p50_p, p50_j = min(
            (p50s_us([plain.predict, joined.predict], [req_plain, req_joined], n_latency) for _ in range(5)),
            key=lambda pair: pair[1] - pair[0],
        )
        joined.close()
        plain.close()
        native.close()
        reference.close()
        http_rates, http_cpu = http_rounds(home, path, refs, table, 5 if args.quick else 15, 0.4 if args.quick else 1.0)

    added_us = p50_j - p50_p
    print(
        f"\nthroughput (requests/s over {windows} alternating windows, {CALLERS} callers, 1 entity x {N_FEATURES} "
        f"features per request): features in the request {rates['plain']:,.0f}; joined in the server "
        f"{rates['joined']:,.0f}; two-hop (python-lmdb in the caller, then infer) {rates['two_hop']:,.0f}"
    )
    print(
        f"process CPU per request over the same windows: features in the request {cpu_us['plain']:.1f} us; joined "
        f"in the server {cpu_us['joined']:.1f} us; two-hop {cpu_us['two_hop']:.1f} us"
    )
    print(
        f"p50 of one blocking request (alternating calls, best of 5 rounds): features in the request {p50_p:.1f} us, joined in the "
        f"server {p50_j:.1f} us (added {added_us:.1f} us, budget {P50_BUDGET_US:g} us)"
    )
    report = benchjson.Report("bench_feature_serving.py", quick=args.quick)
    report.add(
        benchjson.rate_row(
            f"serving, {N_FEATURES} features joined in the server (entity ids in)",
            "same model, features in the request",
            rates["plain"],
            rates["joined"],
            "requests/s",
            # CI floor under what a busy 2-core machine measures: 0.87-0.91x at load 3-3.5 (24-window runs; a
            # 10-window quick run swings 0.72-0.89x) since requests reach the batched engine model through its own
            # bound methods and the join's ONNX Runtime call reuses one RunOptions (0.73-0.79x before, at load
            # 10-15, one 0.51x); the goal is 0.8x.
            target=0.3,
            goal=0.8,
        )
    )
    report.add(
        benchjson.time_row(
            f"serving, {N_FEATURES} features joined in the server: process CPU per request",
            "same model, features in the request",
            cpu_us["plain"],
            cpu_us["joined"],
            "us",
            # Measured 0.86-0.90x at load 3-3.5 (the join of a 32-request batch is ~11-16 us hot, more with the
            # caches a serving loop leaves it: ~0.9 us a request in all).
            target=0.4,
            goal=0.8,
        )
    )
    report.add(
        benchjson.time_row(
            f"p50 added by the join (budget {P50_BUDGET_US:g} us; ratio = budget / added)",
            f"{P50_BUDGET_US:g} us budget",
            P50_BUDGET_US,
            max(added_us, 1.0),  # a join that adds under 1 us is reported as 1 us (the ratio stays finite)
            "us",
            # CI floor: busy 2-core runs measured 1.1-1.9x (added 10-18 us at load 10-15); the goal is 1.0x.
            target=0.3,
            goal=1.0,
        )
    )
    print(
        f"over HTTP (fastml serve, {CALLERS} keep-alive connections, closed loop, medians of alternating rounds): "
        f"features in the request {http_rates['plain']:,.0f} req/s at {http_cpu['plain']:.1f} us server CPU per "
        f"request; joined in the server {http_rates['joined']:,.0f} req/s at {http_cpu['joined']:.1f} us"
    )
    report.add(
        benchjson.rate_row(
            f"serving over HTTP, {N_FEATURES} features joined in the server (entity ids in)",
            "same model over HTTP, features in the request",
            http_rates["plain"],
            http_rates["joined"],
            "requests/s",
            # 0.82x at load ~3.5 with the native HTTP intake submitting entity ids to the batched engine model
            # (0.55x while the intake was handed the wrapped model's batcher and fell back per request).
            target=0.5,
            goal=0.8,
        )
    )
    report.add(
        benchjson.time_row(
            f"serving over HTTP, {N_FEATURES} features joined in the server: server CPU per request",
            "same model over HTTP, features in the request",
            http_cpu["plain"],
            http_cpu["joined"],
            "us",
            target=0.5,
            goal=0.8,
        )
    )
    report.add(
        benchjson.rate_row(
            f"serving, {N_FEATURES} features joined in the server (entity ids in)",
            "two-hop: python-lmdb read in the caller, then infer",
            rates["two_hop"],
            rates["joined"],
            "requests/s",
            target=1.0,
        )
    )
    report.write(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
