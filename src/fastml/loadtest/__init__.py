"""Load-testing harness for KServe v2 / Triton HTTP servers (binary tensor extension).

asyncio (uvloop when installed) + httptools over raw keep-alive connections. Two load shapes:
closed loop at a fixed concurrency, open loop at a fixed arrival rate; both bounded by a request count
and/or a duration, with a per-request timeout. The result counts every outcome — HTTP status codes
and timeouts, closed connections, connect errors apart — so a test past capacity can tell shed load
(503) from load that was silently dropped (timeouts).

Example:
    >>> from fastml.loadtest import build_infer_request, run, run_closed_loop
    >>> req = build_infer_request("mlp", {"input": x}, outputs=["probabilities"])
    >>> result = run(run_closed_loop("127.0.0.1", 8000, req, concurrency=8, duration_s=5))
    >>> result.throughput_per_s, result.to_dict()["latency_ok_us"]["p99"], result.count(503)
"""

from fastml.loadtest.protocol import InferRequest, build_infer_request, parse_infer_response, random_inputs
from fastml.loadtest.result import ERROR_OUTCOMES, LoadResult, percentiles_us
from fastml.loadtest.runner import run, run_closed_loop, run_open_loop

__all__ = [
    "ERROR_OUTCOMES",
    "InferRequest",
    "LoadResult",
    "build_infer_request",
    "parse_infer_response",
    "percentiles_us",
    "random_inputs",
    "run",
    "run_closed_loop",
    "run_open_loop",
]
