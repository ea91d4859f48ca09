"""fastml.client against scripted fake servers (retries, timeouts, error classes) and an in-process server."""

from __future__ import annotations

import asyncio
import re
import socket
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from fastml import errors
from fastml.client import AsyncClient, Client, wire

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
from binkit import InProcessServer, make_two_output_model  # noqa: E402
from scripted import ScriptedServer  # noqa: E402


class FakeServer(ScriptedServer):
    """Answers each request frame with ``answer(n, item)`` (bytes or None = silence).

    ``n`` counts requests over every connection; ``answer`` may also return "close" to drop the connection.
    """

    def __init__(self, answer):
        self.requests = 0

        def reply(conn, item):
            self.requests += 1
            out = answer(self.requests, item)
            if isinstance(out, str) and out == "close":
                return False
            if out is not None:
                conn.sendall(out)
            return True

        super().__init__(reply)


def echo(item) -> bytes:
    """The request's inputs sent back as outputs."""
    return wire.encode_response(item[1], item[2], "1", {k: np.array(v) for k, v in item[5].items()})


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


X = {"x": np.arange(6, dtype=np.float32).reshape(2, 3)}


def test_unavailable_is_retried_then_succeeds(fake):
    srv = fake(lambda n, item: wire.encode_error(item[1], 503, 7, "model is loading") if n == 1 else echo(item))
    with Client(srv.address, retries=2, retry_backoff_s=0.001) as client:
        out = client.infer("m", X)
    assert np.array_equal(out["x"], X["x"]) and srv.requests == 2


def test_retries_are_bounded(fake):
    srv = fake(lambda n, item: wire.encode_error(item[1], 503, 7, "model is loading"))
    with (
        Client(srv.address, retries=3, retry_backoff_s=0.001) as client,
        pytest.raises(errors.Unavailable, match="loading"),
    ):
        client.infer("m", X)
    assert srv.requests == 4


def test_overloaded_is_not_retried(fake):
    srv = fake(lambda n, item: wire.encode_error(item[1], 503, 5, "queue full"))
    with (
        Client(srv.address, retries=3, retry_backoff_s=0.001) as client,
        pytest.raises(errors.Overloaded, match="queue full"),
    ):
        client.infer("m", X)
    assert srv.requests == 1


def test_a_dropped_connection_is_retried_on_a_fresh_one(fake):
    srv = fake(lambda n, item: "close" if n == 1 else echo(item))
    with Client(srv.address, retries=1, retry_backoff_s=0.001) as client:
        assert np.array_equal(client.infer("m", X)["x"], X["x"])
    assert srv.connections == 2


def test_connection_refused_is_unavailable():
    s = socket.create_server(("127.0.0.1", 0))
    address = f"127.0.0.1:{s.getsockname()[1]}"
    s.close()
    with (
        Client(address, retries=1, retry_backoff_s=0.001) as client,
        pytest.raises(errors.Unavailable, match="cannot connect"),
    ):
        client.infer("m", X)


def test_timeout_raises_deadline_exceeded_and_sends_it_to_the_server(fake):
    seen = []
    srv = fake(lambda n, item: seen.append(item[4]))  # never answers
    with Client(srv.address) as client, pytest.raises(errors.DeadlineExceeded):
        client.infer("m", X, timeout_s=0.2)
    assert seen == [200_000]  # the server gets the client's deadline as the request timeout (us)


@pytest.mark.parametrize("code, cls", sorted(wire.ERROR_KINDS.items()))
def test_every_error_kind_raises_its_class(fake, code, cls):
    srv = fake(lambda n, item: wire.encode_error(item[1], 400, code, f"kind {code}"))
    with Client(srv.address, retries=0) as client, pytest.raises(cls) as info:
        client.infer("m", X)
    assert type(info.value) is cls and str(info.value) == f"kind {code}"


def test_answers_out_of_order_are_matched_by_request_id(fake):
    held = []

    def answer(n, item):
        held.append(item)
        if len(held) < 5:
            return None
        out = b"".join(echo(i) for i in reversed(held))  # answer all five, newest first
        held.clear()
        return out

    srv = fake(answer)
    batch = [{"x": np.full((1, 2), i, np.int64)} for i in range(20)]
    with Client(srv.address, window=5) as client:
        out = client.infer_many("m", batch)
    assert [int(o["x"][0, 0]) for o in out] == list(range(20))


def test_infer_many_return_exceptions_keeps_every_slot(fake):
    srv = fake(lambda n, item: wire.encode_error(item[1], 400, 1, "bad") if int(item[5]["x"][0]) % 2 else echo(item))
    with Client(srv.address) as client:
        out = client.infer_many("m", [{"x": np.array([i])} for i in range(6)], return_exceptions=True)
    assert [isinstance(o, errors.InvalidInput) for o in out] == [False, True] * 3
    assert [int(o["x"][0]) for o in out[::2]] == [0, 2, 4]


def test_bad_arguments_are_invalid_input():
    with pytest.raises(errors.InvalidInput):
        Client("localhost")
    with pytest.raises(errors.InvalidInput):
        AsyncClient("unix:")
    assert wire.parse_address("[::1]:9") == ("tcp6", ("::1", 9))
    assert wire.parse_address("unix:/tmp/s.sock") == ("unix", "/tmp/s.sock")


def test_unencodable_input_is_invalid_input(fake):
    srv = fake(lambda n, item: echo(item))
    with Client(srv.address) as client, pytest.raises(errors.InvalidInput, match="no KServe datatype"):
        client.infer("m", {"x": np.ones(2, np.complex64)})


# ----- against a real (in-process) server ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("clientrepo")
    make_two_output_model(repo / "two" / "1" / "model.onnx")
    srv = InProcessServer(repo, tmp_path_factory.mktemp("sock") / "b.sock")
    yield srv
    srv.close()


def test_pool_is_shared_by_threads(server):
    client = Client(server.address, pool_size=2)
    failures = []

    def work(k):
        for i in range(30):
            v = float(k * 100 + i)
            out = client.infer("two", {"x": np.full((1, 3), v, np.float32)})
            if out["a"][0, 0] != v + 1:
                failures.append((k, i))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    client.close()
    assert failures == []


def test_async_client_many_concurrent_calls_over_two_connections(server):
    async def main():
        async with AsyncClient(server.unix_address, connections=2) as client:
            outs = await asyncio.gather(
                *(client.infer("two", {"x": np.full((1, 3), i, np.float32)}) for i in range(300))
            )
            with pytest.raises(errors.NotFound):
                await client.infer("missing", {"x": np.zeros((1, 3), np.float32)})
            return outs

    outs = asyncio.run(main())
    assert [o["b"][0, 0] for o in outs] == [2.0 * i for i in range(300)]


def test_async_client_timeout(fake):
    srv = fake(lambda n, item: None)

    async def main():
        async with AsyncClient(srv.address) as client:
            await client.infer("m", X, timeout_s=0.1)

    with pytest.raises(errors.DeadlineExceeded):
        asyncio.run(main())


def test_async_client_deadlines_fire_in_any_order_and_answers_in_time_are_kept(fake):
    # Requests 2 and 4 are never answered; the others are, after request 5 arrives.
    held = []

    def answer(n, item):
        held.append(item)
        if n == 5:
            return b"".join(echo(i) for i in held if i[1] not in (2, 4))
        return None

    srv = fake(answer)

    async def main():
        async with AsyncClient(srv.address, retries=0) as client:
            calls = [
                client.infer("m", X, timeout_s=30),  # answered
                client.infer("m", X, timeout_s=0.3),  # earlier deadline than the last: a timer of its own
                client.infer("m", X, timeout_s=30),
                client.infer("m", X, timeout_s=30.2),  # never answered: must not fail before its deadline
                client.infer("m", X, timeout_s=30),
            ]
            tasks = [asyncio.ensure_future(c) for c in calls]
            _, pending = await asyncio.wait(tasks, timeout=5)
            for t in pending:
                t.cancel()
            return tasks, pending

    tasks, pending = asyncio.run(main())
    assert pending == {tasks[3]}
    assert isinstance(tasks[1].exception(), errors.DeadlineExceeded)
    assert 0.2 < float(re.fullmatch(r"no answer within (\S+) s", str(tasks[1].exception())).group(1)) <= 0.3
    assert all(np.array_equal(tasks[i].result()["x"], X["x"]) for i in (0, 2, 4))


def test_async_client_deadline_timer_expires_calls_in_deadline_order(fake):
    srv = fake(lambda n, item: None)

    async def main():
        async with AsyncClient(srv.address, retries=0) as client:
            outcomes = await asyncio.gather(
                *(client.infer("m", X, timeout_s=0.1 + 0.05 * i) for i in range(4)), return_exceptions=True
            )
            conn = client._conns[0]
            return outcomes, len(conn.deadlines), conn.deadline_timer

    outcomes, queued, timer = asyncio.run(main())
    assert [type(o) for o in outcomes] == [errors.DeadlineExceeded] * 4
    timeouts_s = [float(re.fullmatch(r"no answer within (\S+) s", str(o)).group(1)) for o in outcomes]
    assert timeouts_s == sorted(timeouts_s) and 0.05 < timeouts_s[0] <= 0.1 and 0.2 < timeouts_s[3] <= 0.25
    assert queued == 0 and timer is None  # nothing left behind once every call expired


def test_async_client_retries_unavailable(fake):
    srv = fake(lambda n, item: wire.encode_error(item[1], 503, 7, "not ready") if n < 3 else echo(item))

    async def main():
        async with AsyncClient(srv.address, retries=2, retry_backoff_s=0.001) as client:
            return await client.infer("m", X)

    assert np.array_equal(asyncio.run(main())["x"], X["x"]) and srv.requests == 3


def test_results_stay_valid_while_the_connection_receives_more(server):
    with Client(server.address, pool_size=1, chunk_bytes=4096) as client:
        first = client.infer_many("two", [{"x": np.full((1, 3), i, np.float32)} for i in range(200)])
        for _ in range(3):
            client.infer_many("two", [{"x": np.full((1, 3), -1.0, np.float32)} for _ in range(200)])
    assert [r["a"][0, 0] for r in first] == [i + 1.0 for i in range(200)]
    assert not first[0]["a"].flags.writeable
