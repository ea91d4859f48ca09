"""Client lifecycle edges against scripted servers: a PING's answer is checked (a PONG is a round trip, an
error frame raises its class), cancelling the call that opens a connection does not cancel the calls waiting
for the same connection, and close() fails pending and opening calls at once without leaving a socket open."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from fastml import errors
from fastml.client import AsyncClient, Client, wire

X = {"x": np.arange(4, dtype=np.float32).reshape(2, 2)}


def _replying(answer):
    """An answer for :class:`scripted.ScriptedServer` from ``answer(item)``: bytes to send, or None for silence."""

    def reply(conn, item):
        out = answer(item)
        if out is not None:
            conn.sendall(out)

    return reply


def _echo_or_pong(item):
    if item[0] == wire.PING:
        return wire.encode_control(wire.PONG, item[1])
    return wire.encode_response(item[1], item[2], "1", {k: np.array(v) for k, v in item[5].items()})


def test_async_ping_returns_the_round_trip_of_a_pong(server):
    srv = server(_replying(_echo_or_pong))

    async def main():
        async with AsyncClient(srv.address, timeout_s=5) as client:
            rtt = await client.ping()
            out = await client.infer("m", X)  # the connection still answers inferences afterwards
            return rtt, out, [len(c.pings) + len(c.waiting) for c in client._conns if c is not None]

    rtt, out, books = asyncio.run(main())
    assert isinstance(rtt, float) and 0 <= rtt < 5
    assert out["x"].tolist() == [[0.0, 1.0], [2.0, 3.0]]
    assert books == [0]


def test_a_ping_answered_with_an_error_frame_raises_its_class(server):
    srv = server(_replying(lambda item: wire.encode_error(item[1], 503, 7, "draining", 0)))
    with Client(srv.address, timeout_s=5) as client:
        with pytest.raises(errors.Unavailable, match="^draining$"):
            client.ping()

    async def main():
        async with AsyncClient(srv.address, timeout_s=5) as client:
            await client.ping()

    with pytest.raises(errors.Unavailable, match="^draining$"):
        asyncio.run(main())


def test_cancelling_the_call_that_opens_the_connection_leaves_the_other_calls_answered(server):
    srv = server(_replying(_echo_or_pong))

    async def main():
        async with AsyncClient(srv.address, retries=0, timeout_s=5) as client:
            opener = asyncio.ensure_future(client.infer("m", X))
            other = asyncio.ensure_future(client.infer("m", {"x": X["x"] + 10}))
            await asyncio.sleep(0)  # both wait on the one connection being opened
            opener.cancel()
            done = await asyncio.gather(opener, other, return_exceptions=True)
            again = await client.infer("m", X)  # the connection opened meanwhile serves the next call
            return done, again

    (cancelled, answer), again = asyncio.run(main())
    assert isinstance(cancelled, asyncio.CancelledError)
    assert answer["x"].tolist() == [[10.0, 11.0], [12.0, 13.0]]
    assert again["x"].tolist() == [[0.0, 1.0], [2.0, 3.0]]
    assert len(srv.eof) == 1


def test_close_while_a_connection_opens_fails_the_call_and_leaves_no_socket_open(server):
    srv = server(_replying(_echo_or_pong))

    async def main():
        client = AsyncClient(srv.address, retries=2, retry_backoff_s=0.001, timeout_s=5)
        call = asyncio.ensure_future(client.infer("m", X))
        await asyncio.sleep(0)  # the call is waiting for its connection to open
        await client.close()
        outcome = (await asyncio.gather(call, return_exceptions=True))[0]
        # the connection the server accepted meanwhile must be closed by the client, not kept in it
        await asyncio.get_running_loop().run_in_executor(None, lambda: srv.eof and srv.eof[0].wait(5))
        return outcome

    outcome = asyncio.run(main())
    assert isinstance(outcome, errors.Unavailable) and str(outcome) == "the client is closed"
    assert len(srv.eof) <= 1 and all(e.is_set() for e in srv.eof)


def test_close_fails_pending_calls_without_retrying_on_the_closed_client(server):
    srv = server(lambda conn, item: None)  # never answers: the calls are pending when the client closes

    async def main():
        client = AsyncClient(srv.address, retries=2, retry_backoff_s=10, timeout_s=60)
        calls = [asyncio.ensure_future(client.infer("m", X)) for _ in range(3)]
        many = asyncio.ensure_future(client.infer_many("m", [X, X]))
        for _ in range(500):  # until every request is on the connection's books (bounded)
            if client._conns[0] is not None and len(client._conns[0].waiting) == 5:
                break
            await asyncio.sleep(0.01)
        await client.close()
        # With a 10 s backoff a retry would still be asleep: the calls must have failed at once.
        done, pending = await asyncio.wait([*calls, many], timeout=5)
        for t in pending:
            t.cancel()
        return [t.exception() for t in [*calls, many] if t in done], len(pending)

    errs, pending = asyncio.run(main())
    assert pending == 0
    assert [type(e) for e in errs] == [errors.Unavailable] * 4
