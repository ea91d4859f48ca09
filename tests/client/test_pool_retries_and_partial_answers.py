"""Blocking-client edge cases against scripted servers: pooled connections that a restarted server closed, a
FATAL answer in the middle of a pipelined batch, a batch that times out half answered, and bad settings."""

from __future__ import annotations

import socket
import threading

import numpy as np
import pytest

from fastml import errors
from fastml.client import Client, wire


def _echo(conn, item) -> None:
    conn.sendall(wire.encode_response(item[1], item[2], "1", {k: np.array(v) for k, v in item[5].items()}))


def _x(v: float) -> dict:
    return {"x": np.full((1, 2), v, np.float32)}


def test_pooled_connections_closed_by_a_restarted_server_are_not_reused(server):
    # Three threads fill the pool with three connections; the server then drops every connection (as a
    # restarted server would). The next call used to try the dead pooled connections one per attempt and
    # fail with Unavailable ("closed the connection") although the server was up and retries were left.
    gate = threading.Barrier(3, timeout=10)
    accepted = []

    def answer(conn, item):
        if conn not in accepted:
            accepted.append(conn)
        if item[0] == wire.PING:
            conn.sendall(wire.encode_control(wire.PONG, item[1]))
            return
        if len(accepted) <= 3 and float(item[5]["x"].ravel()[0]) < 100:
            gate.wait()  # three calls in flight at once: three connections
        _echo(conn, item)

    srv = server(answer)
    with Client(srv.address, pool_size=3, retries=2, retry_backoff_s=0.001, timeout_s=10) as client:
        threads = [threading.Thread(target=client.infer, args=("m", _x(k))) for k in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(15)
        assert len(client._idle) == 3 and srv.connections == 3
        for conn in accepted:
            conn.shutdown(socket.SHUT_RDWR)
        for k in range(3):
            srv.eof[k].wait(10)  # each dropped connection's reader has seen its end
        out = client.infer("m", _x(123.0))
        assert client.ping() >= 0.0
    assert out["x"].tolist() == [[123.0, 123.0]]
    assert srv.connections == 4  # one new connection, the dead ones closed and not tried


def test_a_fatal_answer_mid_batch_fails_only_its_request_and_the_rest_are_retried(server):
    # As the server does for a frame over its size limit: a FATAL error for that request, then it closes
    # without answering what came after it. The whole batch used to end in Unavailable ("closed the
    # connection"), the FATAL answer's own error (the 413 message) lost and every request retried.
    def answer(conn, item):
        if float(item[5]["x"].ravel()[0]) < 0:
            conn.sendall(wire.encode_error(item[1], 413, 1, "frame of 9999 bytes exceeds the limit", wire.FLAG_FATAL))
            return False
        _echo(conn, item)
        return True

    srv = server(answer)
    batch = [_x(1.0), _x(-1.0), _x(3.0), _x(4.0)]
    with Client(srv.address, retries=1, retry_backoff_s=0.001, timeout_s=10) as client:
        out = client.infer_many("m", batch, return_exceptions=True)
        with pytest.raises(errors.InvalidInput, match="^frame of 9999 bytes exceeds the limit$"):
            client.infer_many("m", batch)
    assert out[0]["x"].tolist() == [[1.0, 1.0]]
    assert isinstance(out[1], errors.InvalidInput) and str(out[1]) == "frame of 9999 bytes exceeds the limit"
    assert [o["x"].tolist() for o in out[2:]] == [[[3.0, 3.0]], [[4.0, 4.0]]]


def test_a_batch_that_times_out_keeps_its_answers_with_return_exceptions(server):
    # The server answers every request but the second. infer_many(return_exceptions=True) used to raise
    # DeadlineExceeded for the whole call, dropping the answers it had (the asyncio client keeps them).
    def answer(conn, item):
        if float(item[5]["x"].ravel()[0]) != 2.0:
            _echo(conn, item)

    srv = server(answer)
    with Client(srv.address, retries=2, retry_backoff_s=0.001) as client:
        out = client.infer_many("m", [_x(1.0), _x(2.0), _x(3.0)], timeout_s=0.3, return_exceptions=True)
        with pytest.raises(errors.DeadlineExceeded, match=r"within the timeout \(1 of 2 answered\)"):
            client.infer_many("m", [_x(1.0), _x(2.0)], timeout_s=0.3)
        after = client.infer("m", _x(5.0), timeout_s=5)  # the timed-out connection is not reused
    assert out[0]["x"].tolist() == [[1.0, 1.0]] and out[2]["x"].tolist() == [[3.0, 3.0]]
    assert isinstance(out[1], errors.DeadlineExceeded)
    assert after["x"].tolist() == [[5.0, 5.0]]
    assert srv.connections == 3


@pytest.mark.parametrize("window", [0, -1, 2.5, True])
def test_a_window_that_can_send_nothing_is_refused_when_built(window):
    # window=0 sent no request and waited out the whole timeout, then raised DeadlineExceeded.
    with pytest.raises(errors.InvalidInput, match=r"^window must be an int >= 1, got "):
        Client("127.0.0.1:1", window=window)


# ----- the server's Unix-socket listener --------------------------------------------------------------------
async def _listen_unix(path) -> tuple[str | None, Exception | None]:
    from fastml.server.binary import BinaryListener

    listener = BinaryListener(plane=None)
    try:
        return await listener.start_unix(str(path)), None
    except errors.FastMLError as exc:
        return None, exc
    finally:
        listener.close()


@pytest.mark.parametrize("kind", ["file", "directory"])
def test_a_binary_socket_path_that_is_not_a_socket_is_refused_and_kept(tmp_path, kind):
    # `fastml serve --binary-socket models/mlp/1/model.onnx` (a typo) used to delete the file, taking it for
    # a dead server's socket, and listen in its place (a directory gave an uncaught IsADirectoryError).
    import asyncio

    path = tmp_path / "model.onnx"
    if kind == "file":
        path.write_bytes(b"weights")
    else:
        path.mkdir()
    listened, exc = asyncio.run(_listen_unix(path))
    assert listened is None
    assert isinstance(exc, errors.InvalidInput)
    assert str(exc) == f"cannot listen on {path}: it exists and is not a socket"
    assert path.read_bytes() == b"weights" if kind == "file" else path.is_dir()


def test_a_stale_socket_left_by_a_dead_server_is_still_replaced(tmp_path):
    import asyncio

    path = tmp_path / "b.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))  # bound, never listening: nobody answers there
    stale.close()
    assert asyncio.run(_listen_unix(path)) == (str(path), None)


# ----- the asyncio client ------------------------------------------------------------------------------------
def test_async_calls_on_a_connection_lost_while_it_opened_fail_unavailable_at_once(server):
    # A server that accepts and closes at once (draining, restarting, at its connection limit): the connection is
    # lost between its opening and the caller's wake-up. The call wrote its request on the dead connection
    # (dropped unsent) and waited out its whole timeout: DeadlineExceeded, never retried; ping the same.
    import asyncio

    from fastml.client import AsyncClient

    srv = server(lambda conn, item: _echo(conn, item))

    class LostWhileOpening(AsyncClient):
        async def _open(self):
            proto = await super()._open()
            proto.transport.close()
            for _ in range(3):
                await asyncio.sleep(0)  # connection_lost runs before the callers wake up
            return proto

    async def main():
        async with LostWhileOpening(srv.address, retries=1, retry_backoff_s=0.001, timeout_s=3) as client:
            outcomes = await asyncio.gather(
                client.infer("m", _x(1.0)), client.ping(), client.infer_many("m", [_x(2.0)]), return_exceptions=True
            )
        async with AsyncClient(srv.address, retries=0, timeout_s=3) as client:  # a connection that stays: answered
            return outcomes, (await client.infer("m", _x(4.0)))["x"].tolist()

    outcomes, answered = asyncio.run(main())
    assert [type(o) for o in outcomes] == [errors.Unavailable] * 3
    assert all(str(o).startswith(f"connection to {srv.address} lost") for o in outcomes)
    assert answered == [[4.0, 4.0]]


def test_async_deadline_books_stay_bounded_behind_a_call_that_is_never_answered(server):
    # One call left unanswered at the front of a connection's deadline queue kept the entry of every call
    # answered after it until its own deadline (30 s by default): 2,000 calls, 2,000 entries kept.
    import asyncio

    from fastml.client import AsyncClient

    srv = server(lambda conn, item: None if float(item[5]["x"].ravel()[0]) < 0 else _echo(conn, item))

    async def main():
        async with AsyncClient(srv.address, retries=0, timeout_s=30) as client:
            await client.infer("m", _x(0.0))
            slow = asyncio.ensure_future(client.infer("m", _x(-1.0)))  # never answered
            values = []
            for k in range(20):
                outs = await asyncio.gather(*(client.infer("m", _x(k * 100 + i)) for i in range(100)))
                values += [o["x"][0, 0] for o in outs]
            conn = client._conns[0]
            kept = len(conn.deadlines)
            still_waiting = not slow.done() and conn.deadlines[0][1] in conn.waiting
            slow.cancel()
            return values, kept, still_waiting

    values, kept, still_waiting = asyncio.run(main())
    assert values == [float(v) for v in range(2000)]
    assert still_waiting  # the unanswered call keeps its deadline entry, at the front
    assert kept <= 2 * 101 + 64
