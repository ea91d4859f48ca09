"""Client edge cases against scripted servers: a FATAL answer retires its connection, and the asyncio
client's ping times out with the fastml error class without leaving its request on the books."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from fastml import errors
from fastml.client import AsyncClient, Client, wire


def _fatal_for_negative(conn, item):
    """As the server does for a frame over its size limit: a FATAL error for that request, then close."""
    if float(item[5]["x"].ravel()[0]) < 0:
        conn.sendall(wire.encode_error(item[1], 413, 1, "frame too large", wire.FLAG_FATAL))
        return False
    conn.sendall(wire.encode_response(item[1], item[2], "1", {k: np.array(v) for k, v in item[5].items()}))
    return True


def test_a_fatal_answer_retires_the_connection(server):
    srv = server(_fatal_for_negative)
    with Client(srv.address, retries=0, timeout_s=5) as client:
        with pytest.raises(errors.InvalidInput, match="^frame too large$"):
            client.infer("m", {"x": np.full((1, 2), -1, np.float32)})
        out = client.infer("m", {"x": np.ones((1, 2), np.float32)})  # not the closed connection again
    assert out["x"].tolist() == [[1.0, 1.0]]
    assert srv.connections == 2


def test_an_answer_to_another_request_id_fails_the_call_at_once(server):
    # A server out of step answers an id this connection never sent: the call used to wait out its timeout
    # (DeadlineExceeded) with the stray answer ignored; the stream is broken, so it fails with InternalError.
    def wrong_id(conn, item):
        conn.sendall(wire.encode_response(item[1] + 1000, item[2], "1", {k: np.array(v) for k, v in item[5].items()}))

    srv = server(wrong_id)
    with Client(srv.address, retries=0, timeout_s=2) as client:
        with pytest.raises(errors.InternalError, match=r"answered request id \d+, which is not awaited"):
            client.infer("m", {"x": np.ones((1, 2), np.float32)})


def test_async_ping_timeout_is_deadline_exceeded_and_forgotten(server):
    srv = server(lambda conn, item: True)  # never answers a PING

    async def main():
        client = AsyncClient(srv.address, timeout_s=5)
        try:
            with pytest.raises(errors.DeadlineExceeded, match=r"^no PONG from 127\.0\.0\.1:\d+ within 0\.100 s$"):
                await client.ping(timeout_s=0.1)
            return [len(c.waiting) for c in client._conns if c is not None]
        finally:
            await client.close()

    assert asyncio.run(main()) == [0]


@pytest.mark.parametrize(
    "kwargs, problem",
    [
        ({"timeout_s": None}, "timeout_s must be a finite number of seconds > 0, got None"),
        ({"timeout_s": 0}, "timeout_s must be a finite number of seconds > 0, got 0"),
        ({"connect_timeout_s": float("inf")}, "connect_timeout_s must be a finite number of seconds > 0, got inf"),
        ({"retries": -1}, "retries must be an int >= 0, got -1"),
        ({"retries": 1.5}, "retries must be an int >= 0, got 1.5"),
        ({"retry_backoff_s": float("nan")}, "retry_backoff_s must be a number of seconds >= 0, got nan"),
    ],
)
def test_clients_refuse_bad_settings_when_built(kwargs, problem):
    """A None timeout used to be a TypeError on the first call; both clients now refuse it when built."""
    for cls in (Client, AsyncClient):
        with pytest.raises(errors.InvalidInput) as exc:
            cls("127.0.0.1:1", **kwargs)
        assert str(exc.value) == problem


def test_the_async_client_retires_a_connection_on_its_fatal_answer(server):
    # The server closes a connection after a FATAL answer, but its close can come after the answer has been read:
    # the asyncio client used to send the next call on that connection, which then failed with Unavailable
    # (with retries=0, a failed call). Like the sync client, it now stops using the connection at once.
    import time as _time

    def fatal_then_linger(conn, item):
        if float(item[5]["x"].ravel()[0]) < 0:
            conn.sendall(wire.encode_error(item[1], 413, 1, "frame too large", wire.FLAG_FATAL))
            _time.sleep(0.5)  # reads nothing more, then closes
            return False
        return _fatal_for_negative(conn, item)

    srv = server(fatal_then_linger)

    async def main():
        async with AsyncClient(srv.address, connections=1, retries=0, timeout_s=5) as client:
            with pytest.raises(errors.InvalidInput, match="^frame too large$"):
                await client.infer("m", {"x": np.full((1, 2), -1, np.float32)})
            return await client.infer("m", {"x": np.ones((1, 2), np.float32)})

    assert asyncio.run(main())["x"].tolist() == [[1.0, 1.0]]
    assert srv.connections == 2
