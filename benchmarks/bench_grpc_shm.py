"""gRPC and system shared memory, measured side by side in one run.

1. gRPC throughput: `fastml serve --grpc-port` against KServe's gRPC endpoint (KServe 0.21 ModelServer with
   an ONNX Runtime model, from the side venv .cache/peers/kserve when it exists) on the reference MLP,
   batch 1, concurrency 1 and 32; fastml's own HTTP endpoint in the same run. Both servers stay up and the
   c=32 rows alternate in rounds (medians reported). Goal: fastml gRPC >= 5x KServe gRPC at c=32. Without
   the KServe venv the gRPC row is compared with fastml HTTP and says why. With perf_analyzer, fastml's
   ``ModelStreamInfer`` (``--streaming``: one stream per concurrent context) joins the rounds, its server CPU
   per inference set against unary ``ModelInfer``'s.
2. Shared memory vs HTTP binary for a 1 MiB FP32 input (a model that sums each row, so the answer is
   small and the input transport is what differs): c=1 latency, p50, same server.

The load generator is perf_analyzer (-i grpc / -i http) when it is installed at .cache/perf_analyzer/pa,
otherwise separate Python processes (grpc.aio with pre-serialized requests; keep-alive http.client
threads). Either way it shares the machine's cores with the server, equally for each server. Server CPU
per inference is read from /proc.

Usage: python benchmarks/bench_grpc_shm.py [--quick] [--json PATH] [--seconds S] [--client auto|perf_analyzer|python]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from envinfo import machine_lines  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
KSERVE_VENV = ROOT / ".cache" / "peers" / "kserve"
PA = ROOT / ".cache" / "perf_analyzer" / "pa"  # scripts/get_perf_analyzer.sh installs it
CLK_TCK = os.sysconf("SC_CLK_TCK")
SHM_WIDTH = 262144  # FP32 elements: 1 MiB per row
CLIENT_PROCS = 4  # load-generator processes at c=32 (c=1 uses one)
ROUNDS = 3  # alternating rounds of the c=32 rows (one in --quick)


# ----------------------------------------------------------------------------- models
def make_models(root: Path) -> Path:
    """<root>/repo/{mlp,rowsum}/1/model.onnx: the reference MLP (32 -> 64 -> 64 -> 2) and rowsum (1 MiB in)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import make_classification
    from sklearn.neural_network import MLPClassifier

    repo = root / "repo"
    X, y = make_classification(n_samples=2000, n_features=32, random_state=0)
    est = MLPClassifier(hidden_layer_sizes=(64, 64), max_iter=50, random_state=0).fit(X.astype(np.float32), y)
    onx = convert_sklearn(
        est,
        initial_types=[("input", FloatTensorType([None, 32]))],
        target_opset=17,
        options={id(est): {"zipmap": False}},
    )
    (repo / "mlp" / "1").mkdir(parents=True)
    (repo / "mlp" / "1" / "model.onnx").write_bytes(onx.SerializeToString())
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x", "axes"], ["s"], keepdims=1)],
        "rowsum",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, SHM_WIDTH])],
        [helper.make_tensor_value_info("s", TensorProto.FLOAT, [None, 1])],
        [numpy_helper.from_array(np.array([1], np.int64), "axes")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (repo / "rowsum" / "1").mkdir(parents=True)
    onnx.save(model, str(repo / "rowsum" / "1" / "model.onnx"))
    return repo


# ----------------------------------------------------------------------------- processes
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_cpu_s(root_pid: int) -> float:
    """utime+stime of ``root_pid`` and its live descendants (plus reaped children), seconds."""
    stats: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        rest = raw[raw.rindex(")") + 2 :].split()
        stats[int(entry)] = (int(rest[1]), sum(int(x) for x in rest[11:15]) / CLK_TCK)
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total, stack = 0.0, [root_pid]
    while stack:
        pid = stack.pop()
        if pid in stats:
            total += stats[pid][1]
        stack.extend(children.get(pid, ()))
    return total


def wait_grpc_ready(port: int, model: str, proc: subprocess.Popen, timeout_s: float = 120) -> None:
    import grpc

    from fastml.server.proto import grpc_service_pb2 as pb
    from fastml.server.proto import grpc_service_pb2_grpc as pb_grpc

    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = pb_grpc.GRPCInferenceServiceStub(ch)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}")
            try:
                if stub.ModelReady(pb.ModelReadyRequest(name=model), timeout=1).ready:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)  # polling a starting process: nothing to wait on but the port
    raise RuntimeError(f"gRPC port {port} not ready within {timeout_s} s")


def start_fastml(repo: Path, home: Path) -> tuple[subprocess.Popen, int, int]:
    http_port, grpc_port = free_port(), free_port()
    env = dict(os.environ, FASTML_HOME=str(home))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fastml.cli",
            "serve",
            str(repo),
            "--http-port",
            str(http_port),
            "--grpc-port",
            str(grpc_port),
            "--metrics-port",
            "0",
            "--max-body-bytes",
            str(8 * 1024 * 1024),
            # Shared-memory registration is an admin call; the server binds loopback only.
            "--allow-unauthenticated-admin",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        text=True,
    )
    wait_grpc_ready(grpc_port, "mlp", proc)
    return proc, http_port, grpc_port


KSERVE_PEER = r"""
import sys
import numpy as np, onnxruntime as ort
from kserve import Model, ModelServer, InferResponse, InferOutput
import kserve.protocol.grpc.server as grpc_server

# KServe binds [::]; keep the benchmark on loopback.
_add = grpc_server.grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server
def _add_lo(servicer, server):
    _add(servicer, server)
    port = server.add_insecure_port
    server.add_insecure_port = lambda addr: port(addr.replace("[::]", "127.0.0.1"))
grpc_server.grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server = _add_lo

class OrtModel(Model):
    def __init__(self, name, path):
        super().__init__(name)
        so = ort.SessionOptions(); so.intra_op_num_threads = 1; so.inter_op_num_threads = 1
        self.sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        self.ready = True
    def get_input_types(self):  # model metadata (perf_analyzer reads it)
        return [{"name": "input", "datatype": "FP32", "shape": [-1, 32]}]
    def get_output_types(self):
        return [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}]
    async def predict(self, payload, headers=None, response_headers=None):
        x = payload.inputs[0].as_numpy()
        y = self.sess.run(["probabilities"], {"input": x.reshape(-1, 32).astype(np.float32, copy=False)})[0]
        out = InferOutput(name="probabilities", shape=list(y.shape), datatype="FP32")
        out.set_data_from_numpy(y, binary_data=True)
        return InferResponse(response_id=payload.id or "", model_name=self.name, infer_outputs=[out])

# perf_analyzer asks for the model configuration, which KServe does not serve: answer it with the bytes
# the benchmark passes (a Triton ModelConfigResponse for this model).
import base64, grpc
_CONFIG = base64.b64decode(sys.argv[4])

async def _model_config(request, context):
    return _CONFIG

_add2 = grpc_server.grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server
def _add_config(servicer, server):
    _add2(servicer, server)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("inference.GRPCInferenceService", {
        "ModelConfig": grpc.unary_unary_rpc_method_handler(_model_config)}),))
grpc_server.grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server = _add_config

if __name__ == "__main__":
    import logging
    server = ModelServer(http_port=int(sys.argv[2]), grpc_port=int(sys.argv[3]), workers=1, enable_latency_logging=False)
    for name in ("kserve.trace", "uvicorn.access", "kserve"):
        logging.getLogger(name).setLevel(logging.WARNING)
    server.start([OrtModel("mlp", sys.argv[1])])
"""


def start_kserve(repo: Path, workdir: Path) -> tuple[subprocess.Popen, int]:
    import base64

    from fastml.server.proto import grpc_service_pb2 as pb

    script = workdir / "kserve_peer.py"
    script.write_text(KSERVE_PEER)
    http_port, grpc_port = free_port(), free_port()
    cfg = pb.ModelConfigResponse()
    cfg.config.name, cfg.config.platform, cfg.config.max_batch_size = "mlp", "onnxruntime_onnx", 0
    cfg.config.input.add(name="input", data_type=11, dims=[-1, 32])  # TYPE_FP32
    cfg.config.output.add(name="probabilities", data_type=11, dims=[-1, 2])
    proc = subprocess.Popen(
        [
            str(KSERVE_VENV / "bin" / "python"),
            str(script),
            str(repo / "mlp" / "1" / "model.onnx"),
            str(http_port),
            str(grpc_port),
            base64.b64encode(cfg.SerializeToString()).decode(),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=workdir,
    )
    wait_grpc_ready(grpc_port, "mlp", proc)
    return proc, grpc_port


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ----------------------------------------------------------------------------- load generator (subprocess)
def _client_main(argv: list[str]) -> None:
    """``--_client grpc|http HOST:PORT C SECONDS``: closed-loop load of batch-1 MLP requests; prints JSON."""
    kind, addr, conc, seconds = argv[0], argv[1], int(argv[2]), float(argv[3])
    x = np.random.default_rng(0).standard_normal((1, 32), dtype=np.float32)
    if kind == "grpc":
        result = asyncio.run(_grpc_load(addr, conc, seconds, x))
    else:
        result = _http_load(addr, conc, seconds, x)
    print(json.dumps(result))


async def _grpc_load(addr: str, conc: int, seconds: float, x: np.ndarray) -> dict:
    import grpc

    from fastml.server.proto import grpc_service_pb2 as pb

    req = pb.ModelInferRequest(model_name="mlp")
    req.inputs.add(name="input", datatype="FP32", shape=[1, 32])
    req.outputs.add(name="probabilities")
    req.raw_input_contents.append(x.tobytes())
    payload = req.SerializeToString()
    lat: list[float] = []
    async with grpc.aio.insecure_channel(addr) as ch:
        call = ch.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer", request_serializer=None, response_deserializer=None
        )
        for _ in range(50):
            await call(payload)
        stop_at = time.perf_counter() + seconds
        pc = time.perf_counter

        async def worker():
            while pc() < stop_at:
                t0 = pc()
                await call(payload)
                lat.append(pc() - t0)

        t0 = pc()
        await asyncio.gather(*[worker() for _ in range(conc)])
        wall = pc() - t0
    return _summary(lat, wall)


def _http_load(addr: str, conc: int, seconds: float, x: np.ndarray) -> dict:
    import http.client
    import threading

    header = json.dumps(
        {
            "inputs": [
                {"name": "input", "shape": [1, 32], "datatype": "FP32", "parameters": {"binary_data_size": 128}}
            ],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
        }
    ).encode()
    body = header + x.tobytes()
    headers = {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"}
    host, port = addr.rsplit(":", 1)
    lat: list[float] = []
    stop_at = time.perf_counter() + seconds
    pc = time.perf_counter

    def worker():
        c = http.client.HTTPConnection(host, int(port))
        while pc() < stop_at:
            t0 = pc()
            c.request("POST", "/v2/models/mlp/infer", body, headers)
            r = c.getresponse()
            r.read()
            if r.status != 200:
                raise RuntimeError(f"HTTP {r.status}")
            lat.append(pc() - t0)
        c.close()

    threads = [threading.Thread(target=worker) for _ in range(conc)]
    t0 = pc()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return _summary(lat, pc() - t0)


def _summary(lat: list[float], wall: float) -> dict:
    a = np.array(lat) * 1e6
    return {
        "n": len(lat),
        "per_s": len(lat) / wall,
        "p50_us": float(np.percentile(a, 50)),
        "p99_us": float(np.percentile(a, 99)),
    }


def load(kind: str, addr: str, conc: int, seconds: float, server_pid: int, procs: int = 1) -> dict:
    """Closed-loop load from ``procs`` client processes sharing ``conc`` in-flight requests (a Python client
    process tops out at a few hundred gRPC calls/s on a busy machine, so one would measure the client)."""
    procs = max(1, min(procs, conc))
    cpu0 = tree_cpu_s(server_pid)
    clients = [
        subprocess.Popen(
            [sys.executable, __file__, "--_client", kind, addr, str(conc // procs + (i < conc % procs)), str(seconds)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(procs)
    ]
    parts = []
    for c in clients:
        out, err = c.communicate(timeout=seconds + 120)
        if c.returncode != 0:
            raise RuntimeError(f"{kind} load generator failed: {err[-1500:]}")
        parts.append(json.loads(out.strip().splitlines()[-1]))
    n = sum(p["n"] for p in parts)
    res = {
        "n": n,
        "per_s": sum(p["per_s"] for p in parts),
        # percentiles of the parts, weighted by their counts (an approximation of the merged distribution)
        "p50_us": sum(p["p50_us"] * p["n"] for p in parts) / max(n, 1),
        "p99_us": max(p["p99_us"] for p in parts),
    }
    res["server_cpu_us_per_infer"] = (tree_cpu_s(server_pid) - cpu0) / max(n, 1) * 1e6
    return res


def pa_load(
    protocol: str, addr: str, conc: int, seconds: float, server_pid: int, workdir: Path, extra: tuple = ()
) -> dict:
    """One perf_analyzer window (C++ client: far cheaper per request than a Python one, so the server is what
    is measured). Server CPU per inference: /proc CPU over the run / (infer/s x the run's wall time), an
    upper bound (perf_analyzer's warm-up requests are in the CPU but not in the count)."""
    import csv

    out = workdir / f"pa_{protocol}_{addr.replace(':', '_')}_{conc}.csv"
    out.unlink(missing_ok=True)
    cmd = [
        str(PA),
        "-m",
        "mlp",
        "-u",
        addr,
        "-i",
        protocol,
        "-b",
        "1",
        "--concurrency-range",
        str(conc),
        "--measurement-mode",
        "time_windows",
        "--measurement-interval",
        str(int(seconds * 1000)),
        "--stability-percentage",
        "999",
        "--max-trials",
        "3",
        "-f",
        str(out),
        *extra,
    ]
    cpu0, t0 = tree_cpu_s(server_pid), time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds * 4 + 120)
    cpu, wall = tree_cpu_s(server_pid) - cpu0, time.monotonic() - t0
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"perf_analyzer failed: {(proc.stdout + proc.stderr)[-1500:]}")
    row = next(csv.DictReader(out.open()))
    per_s = float(row["Inferences/Second"])
    return {
        "n": int(per_s * seconds),
        "per_s": per_s,
        "p50_us": float(row["p50 latency"]),
        "p99_us": float(row["p99 latency"]),
        "server_cpu_us_per_infer": cpu / max(per_s * wall, 1) * 1e6,
    }


# ----------------------------------------------------------------------------- shared memory vs HTTP binary
def shm_vs_http(http_port: int, n: int) -> dict:
    """c=1 latency of a 1 MiB input: HTTP binary body vs a registered shared-memory region (tritonclient)."""
    import tritonclient.http as th
    import tritonclient.utils.shared_memory as tshm

    client = th.InferenceServerClient(f"127.0.0.1:{http_port}")
    x = np.random.default_rng(1).standard_normal((1, SHM_WIDTH), dtype=np.float32)
    want = float(x.sum(dtype=np.float64))
    key = f"/fastml-bench-{uuid.uuid4().hex[:8]}"
    handle = tshm.create_shared_memory_region("bench_in", key, x.nbytes)
    try:
        client.register_system_shared_memory("bench_in", key, x.nbytes)

        def http_once():
            i = th.InferInput("x", [1, SHM_WIDTH], "FP32")
            i.set_data_from_numpy(x, binary_data=True)
            return client.infer("rowsum", [i], outputs=[th.InferRequestedOutput("s", binary_data=True)])

        def shm_once():
            tshm.set_shared_memory_region(handle, [x])  # the client's copy into the region is part of the cost
            i = th.InferInput("x", [1, SHM_WIDTH], "FP32")
            i.set_shared_memory("bench_in", x.nbytes)
            return client.infer("rowsum", [i], outputs=[th.InferRequestedOutput("s", binary_data=True)])

        out = {}
        for name, fn in (("http_binary", http_once), ("shm", shm_once)):
            got = float(fn().as_numpy("s")[0, 0])
            assert abs(got - want) <= 1e-3 * max(1.0, abs(want)), (name, got, want)
        for name, fn in (("http_binary", http_once), ("shm", shm_once)) * 2:  # interleave: drift hits both
            ts = []
            for _ in range(n // 2):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
            out.setdefault(name, []).extend(ts)
        client.unregister_system_shared_memory("bench_in")
    finally:
        tshm.destroy_shared_memory_region(handle)
        client.close()
    return {k: float(np.percentile(np.array(v) * 1e6, 50)) for k, v in out.items()}


# ----------------------------------------------------------------------------- main
def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--_client":
        _client_main(sys.argv[2:])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short windows (CI)")
    ap.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="seconds per load window (default 4; quick 1; perf_analyzer measures 3 windows)",
    )
    ap.add_argument("--json", type=Path, default=None, help="write the result rows here")
    ap.add_argument(
        "--client",
        choices=("auto", "perf_analyzer", "python"),
        default="auto",
        help="load generator: perf_analyzer when installed (auto), or Python processes",
    )
    args = ap.parse_args()
    use_pa = args.client == "perf_analyzer" or (args.client == "auto" and PA.exists())
    if use_pa and not PA.exists():
        ap.error(
            f"perf_analyzer is not installed at {PA} (bash scripts/get_perf_analyzer.sh .cache/perf_analyzer .venv/bin/pip)"
        )
    seconds = args.seconds or (1.0 if args.quick else 4.0)
    shm_n = 30 if args.quick else 400

    print("# gRPC and shared memory benchmark\n")
    print("\n".join(machine_lines()))
    if use_pa:
        print(
            f"- load generator: perf_analyzer ({PA}), {seconds:g} s windows, batch 1, on the same cores as the server\n"
        )
    else:
        print(
            f"- load generator: {CLIENT_PROCS} Python processes at c=32, one at c=1 (grpc.aio / http.client threads), "
            f"{seconds:g} s windows, batch 1, on the same cores as the server (perf_analyzer not installed at {PA})\n"
        )
    rows: list[dict] = []
    rounds = 1 if args.quick else ROUNDS
    with tempfile.TemporaryDirectory(prefix="bench_grpc_") as tmp:
        tmp = Path(tmp)
        repo = make_models(tmp)
        results: dict[tuple[str, int], dict] = {}
        per_round: dict[str, list[dict]] = {}
        servers: dict[str, tuple[subprocess.Popen, str, tuple]] = {}
        kserve_note = None
        proc, http_port, grpc_port = start_fastml(repo, tmp / "home")
        kproc = None
        try:
            servers["fastml grpc"] = (proc, "grpc", (f"127.0.0.1:{grpc_port}", ()))
            if use_pa:  # ModelStreamInfer: one stream per concurrent context, every request a message on it
                servers["fastml grpc stream"] = (proc, "grpc", (f"127.0.0.1:{grpc_port}", ("--streaming",)))
            servers["fastml http"] = (proc, "http", (f"127.0.0.1:{http_port}", ()))
            if (KSERVE_VENV / "bin" / "python").exists():
                try:
                    kproc, kport = start_kserve(repo, tmp)
                except RuntimeError as exc:
                    kserve_note = f"KServe did not start: {exc}"
                else:
                    servers["kserve grpc"] = (kproc, "grpc", (f"127.0.0.1:{kport}", ("--shape", "input:1,32")))
            else:
                kserve_note = (
                    f"KServe is not installed at {KSERVE_VENV} (python -m venv {KSERVE_VENV} && "
                    f"{KSERVE_VENV}/bin/pip install kserve==0.21.0 onnxruntime numpy)"
                )

            def measure(name: str, c: int) -> dict:
                server, proto, (addr, extra) = servers[name]
                if use_pa:
                    return pa_load(proto, addr, c, seconds, server.pid, tmp, extra)
                return load(proto, addr, c, seconds, server.pid, CLIENT_PROCS)

            for name in servers:
                results[(name, 1)] = measure(name, 1)
            # Both servers are up the whole time and the c=32 rows alternate, round by round: the host's
            # speed drifts within minutes, and a ratio of windows taken minutes apart measures the drift.
            for _ in range(rounds):
                for name in servers:
                    per_round.setdefault(name, []).append(measure(name, 32))
            for name, runs in per_round.items():
                results[(name, 32)] = {k: float(np.median([r[k] for r in runs])) for k in runs[0]}
            shm = shm_vs_http(http_port, shm_n)
        finally:
            stop(proc)
            if kproc is not None:
                stop(kproc)

    print("| server | c | infer/s | p50 µs | p99 µs | server CPU µs/infer |")
    print("|---|---:|---:|---:|---:|---:|")
    for (name, c), r in results.items():
        print(
            f"| {name} | {c} | {r['per_s']:,.0f} | {r['p50_us']:,.0f} | {r['p99_us']:,.0f} | {r['server_cpu_us_per_infer']:,.1f} |"
        )
    print()
    f32 = results[("fastml grpc", 32)]
    if ("kserve grpc", 32) in results:
        k32 = results[("kserve grpc", 32)]
        ratio = f32["per_s"] / k32["per_s"]
        each = ", ".join(
            f"{f['per_s'] / k['per_s']:.2f}x" for f, k in zip(per_round["fastml grpc"], per_round["kserve grpc"])
        )
        print(
            f"fastml gRPC / KServe gRPC throughput at c=32: {ratio:.2f}x, medians of {rounds} alternating "
            f"round(s) (each round: {each}); goal >= 5x"
        )
        rows.append(
            {
                "name": "grpc_c32_throughput_vs_kserve",
                "baseline": "KServe 0.21 gRPC",
                "baseline_value": k32["per_s"],
                "fastml_value": f32["per_s"],
                "unit": "infer/s",
                "ratio": ratio,
                # The goal is 5x; the CI gate fails below half this target (a quick run on a busy machine).
                "target": 4.0,
                "higher_is_better": True,
                "goal": 5.0,
            }
        )
    else:
        print(f"No KServe row: {kserve_note}. Comparing with fastml's own HTTP endpoint instead.")
    h32 = results[("fastml http", 32)]
    ratio = f32["per_s"] / h32["per_s"]
    print(
        f"fastml gRPC / fastml HTTP throughput at c=32: {ratio:.2f}x (a regression guard, target 0.5x: with the "
        "native listener a gRPC call costs about what an HTTP request does)"
    )
    rows.append(
        {
            "name": "grpc_c32_throughput_vs_fastml_http",
            "baseline": "fastml HTTP (binary)",
            "baseline_value": h32["per_s"],
            "fastml_value": f32["per_s"],
            "unit": "infer/s",
            "ratio": ratio,
            "target": 0.5,
            "higher_is_better": True,
        }
    )
    if ("fastml grpc stream", 32) in results:
        s32 = results[("fastml grpc stream", 32)]
        ratio = f32["server_cpu_us_per_infer"] / s32["server_cpu_us_per_infer"]
        print(
            f"fastml gRPC ModelStreamInfer / ModelInfer at c=32: server CPU {s32['server_cpu_us_per_infer']:.1f} vs "
            f"{f32['server_cpu_us_per_infer']:.1f} us per inference ({ratio:.2f}x less), throughput "
            f"{s32['per_s']:,.0f} vs {f32['per_s']:,.0f}/s"
        )
        rows.append(
            {
                "name": "grpc_stream_c32_server_cpu_vs_unary",
                "baseline": "fastml gRPC ModelInfer (unary), same rounds",
                "baseline_value": f32["server_cpu_us_per_infer"],
                "fastml_value": s32["server_cpu_us_per_infer"],
                "unit": "us/infer",
                "ratio": ratio,
                # A stream's requests skip a call's headers and trailers: 1.3x less CPU than unary calls measured
                # on the 2-core VM. Through InferenceServicer's stream (a task per request, protobuf's runtime)
                # the row read 0.53x; the gate catches a return to that.
                "target": 0.8,
                "higher_is_better": True,
            }
        )
    shm_ratio = shm["http_binary"] / shm["shm"]
    print(
        f"\n1 MiB FP32 input, c=1 p50: HTTP binary {shm['http_binary']:,.0f} µs, shared memory {shm['shm']:,.0f} µs "
        f"-> shared memory is {shm_ratio:.2f}x faster (client copy into the region included)"
    )
    rows.append(
        {
            "name": "shm_1mib_input_p50_vs_http_binary",
            "baseline": "HTTP binary tensor extension",
            "baseline_value": shm["http_binary"],
            "fastml_value": shm["shm"],
            "unit": "us",
            "ratio": shm_ratio,
            "target": 2.0,
            "higher_is_better": True,
        }
    )
    if args.json:
        args.json.write_text(json.dumps({"benchmark": "bench_grpc_shm", "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
