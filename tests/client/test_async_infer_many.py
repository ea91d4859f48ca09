"""AsyncClient.infer_many: one call pipelining many inferences on one connection, refilled from its answers."""

from __future__ import annotations

import asyncio
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from fastml import errors
from fastml.client import AsyncClient, wire

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
from binkit import InProcessServer, make_two_output_model  # noqa: E402
from test_client import FakeServer, echo  # noqa: E402


@pytest.fixture
def fake():
    servers = []

    def make(answer):
        srv = FakeServer(answer)
        servers.append(srv)
        return srv

    yield make
    for srv in servers:
        srv.close()


def _xs(n: int) -> list[dict]:
    return [{"x": np.array([i], np.int64)} for i in range(n)]


def _run(coro):
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    repo = tmp_path_factory.mktemp("manyrepo")
    make_two_output_model(repo / "two" / "1" / "model.onnx")
    srv = InProcessServer(repo)
    yield srv
    srv.close()


def test_results_come_back_in_order_through_a_small_window(served):
    async def main():
        async with AsyncClient(served.address) as client:
            out = await client.infer_many("two", [{"x": np.full((1, 3), i, np.float32)} for i in range(300)], window=7)
            single = await client.infer("two", {"x": np.full((1, 3), 5.0, np.float32)})
            return out, single, client._conns[0].waiting

    out, single, waiting = _run(main())
    assert [float(o["a"][0, 0]) for o in out] == [i + 1.0 for i in range(300)]
    assert [float(o["b"][0, 2]) for o in out] == [2.0 * i for i in range(300)]
    assert np.array_equal(out[5]["b"], single["b"])
    assert waiting == {}  # nothing left in the connection's books


def test_the_window_bounds_requests_in_flight(fake):
    srv = fake(lambda n, item: None)  # never answers: only the first window is ever sent

    async def main():
        async with AsyncClient(srv.address, retries=0) as client:
            return await client.infer_many("m", _xs(50), window=4, timeout_s=0.2, return_exceptions=True)

    out = _run(main())
    assert srv.requests == 4 and all(isinstance(o, errors.DeadlineExceeded) for o in out)


def test_errors_stay_in_their_slots_or_raise_the_first(fake):
    srv = fake(lambda n, item: wire.encode_error(item[1], 400, 1, "odd") if int(item[5]["x"][0]) % 2 else echo(item))

    async def main():
        async with AsyncClient(srv.address) as client:
            out = await client.infer_many("m", _xs(6), return_exceptions=True)
            with pytest.raises(errors.InvalidInput, match="odd"):
                await client.infer_many("m", _xs(6))
            return out

    out = _run(main())
    assert [isinstance(o, errors.InvalidInput) for o in out] == [False, True] * 3
    assert [int(o["x"][0]) for o in out[::2]] == [0, 2, 4]


def test_unavailable_requests_are_retried_and_the_rest_kept(fake):
    # The 2nd and 4th requests sent are refused as Unavailable once; only they are sent again.
    srv = fake(lambda n, item: wire.encode_error(item[1], 503, 7, "loading") if n in (2, 4) else echo(item))

    async def main():
        async with AsyncClient(srv.address, retries=1, retry_backoff_s=0.001) as client:
            return await client.infer_many("m", _xs(8))

    out = _run(main())
    assert [int(o["x"][0]) for o in out] == list(range(8)) and srv.requests == 10


def test_a_dropped_connection_is_retried_on_a_fresh_one(fake):
    srv = fake(lambda n, item: "close" if n == 3 else echo(item))

    async def main():
        async with AsyncClient(srv.address, retries=1, retry_backoff_s=0.001) as client:
            return await client.infer_many("m", _xs(10), window=2)

    out = _run(main())
    assert [int(o["x"][0]) for o in out] == list(range(10)) and srv.connections == 2


def test_no_answer_within_the_timeout_is_deadline_exceeded(fake):
    srv = fake(lambda n, item: echo(item) if n <= 2 else None)

    async def main():
        async with AsyncClient(srv.address, retries=0) as client:
            out = await client.infer_many("m", _xs(5), timeout_s=0.2, return_exceptions=True)
            return out, dict(client._conns[0].waiting)

    out, waiting = _run(main())
    assert [int(o["x"][0]) for o in out[:2]] == [0, 1]
    assert all(isinstance(o, errors.DeadlineExceeded) for o in out[2:])
    assert waiting == {}


def test_a_cancelled_call_leaves_nothing_behind(fake):
    all_received = threading.Event()

    def answer(n, item):
        if n == 5:
            all_received.set()

    srv = fake(answer)

    async def main():
        async with AsyncClient(srv.address) as client:
            task = asyncio.ensure_future(client.infer_many("m", _xs(5)))
            assert await asyncio.get_running_loop().run_in_executor(None, all_received.wait, 10)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return dict(client._conns[0].waiting)

    assert _run(main()) == {}


def test_an_unencodable_request_sends_nothing(fake):
    srv = fake(lambda n, item: echo(item))

    async def main():
        async with AsyncClient(srv.address) as client:
            with pytest.raises(errors.InvalidInput, match="request 1: .*no KServe datatype"):
                await client.infer_many("m", [{"x": np.ones(2)}, {"x": np.ones(2, np.complex64)}])
            with pytest.raises(errors.InvalidInput, match="window"):
                await client.infer_many("m", _xs(2), window=0)
            return await client.infer_many("m", [])

    assert _run(main()) == [] and srv.requests == 0
