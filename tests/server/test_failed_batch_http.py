"""Over HTTP, a request the model cannot run fails alone: its batch mates get their answers (JSON and the
binary tensor extension, which the native intake hands to the batcher), and the server keeps serving."""

from __future__ import annotations

import re

import numpy as np
import pytest
from serverkit import ServerProcess
from tiny_models import lookup_onnx


@pytest.fixture(scope="module")
def lookup_server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("lookup_repo")
    lookup_onnx(repo / "lookup" / "1" / "model.onnx")
    # Three one-row requests fill a batch; the long queue delay holds the first ones until the third has come.
    (repo / "lookup" / "config.toml").write_text(
        'max_batch_size = 3\nmax_queue_delay_us = 2000000\nrunner = "threads"\n'
    )
    srv = ServerProcess([str(repo), "--http-port", "0", "--metrics-port", "0"], tmp_path_factory.mktemp("home"))
    # The batcher waits for company only once it has seen arrivals (its very first request goes at once): one
    # request first, so that each test's three share a batch.
    body = {"inputs": [{"name": "X", "shape": [1, 1], "datatype": "FP32", "data": [0.0]}]}
    assert srv.post("/v2/models/lookup/infer", body)[0] == 200
    yield srv
    assert srv.stop() == 0


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_one_bad_request_fails_alone_and_its_batch_mates_are_answered(lookup_server, binary):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(lookup_server.url, concurrency=3)

    def request(value: float):
        x = httpclient.InferInput("X", [1, 1], "FP32")
        x.set_data_from_numpy(np.array([[value]], np.float32), binary_data=binary)
        return client.async_infer("lookup", [x], outputs=[httpclient.InferRequestedOutput("Y", binary_data=binary)])

    def answer(pending):
        try:
            return pending.get_result().as_numpy("Y").tolist()
        except InferenceServerException as exc:
            return exc

    first, bad, third = [answer(p) for p in [request(v) for v in (1.0, 100.0, 2.0)]]  # three in flight at once
    assert first == [[10.0]] and third == [[20.0]]
    assert isinstance(bad, InferenceServerException), bad
    # Run alone, the bad request's error names its own batch of one row and ONNX Runtime's reason, and it is a
    # 400: ONNX Runtime refused the request's data (InvalidArgument), as Triton answers it.
    assert "failed on a batch of 1 rows" in bad.message() and "idx=100" in bad.message(), bad.message()
    assert bad.status() == "400", bad.status()
    stats = client.get_inference_statistics("lookup")["model_stats"][0]["inference_stats"]
    assert stats["fail"]["count"] >= 1
    # Operators see it: each request of the failed batch counted once as run again alone.
    reruns = re.search(
        r'fastml_inference_rerun_alone_total\{model="lookup",version="1"\} (\S+)', lookup_server.metrics()
    )
    assert reruns is not None and float(reruns.group(1)) >= 3
    # And the server keeps serving: the next full batch is answered whole.
    assert [answer(p) for p in [request(v) for v in (3.0, 4.0, 5.0)]] == [[[30.0]], [[40.0]], [[50.0]]]
    client.close()
