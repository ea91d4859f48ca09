"""Retiring one of two servers that share a port (SO_REUSEPORT), in-process: connections the kernel had
already queued on it are answered, each with ``Connection: close``, and the port keeps serving through the
other one."""

from __future__ import annotations

import asyncio
import json
import socket

from serverkit import read_response

from fastml.server.workers import retire


def _identity_repo(root):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (root / "ident" / "1").mkdir(parents=True)
    onnx.save(model, str(root / "ident" / "1" / "model.onnx"))
    return root


BODY = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}).encode()
REQUEST = (
    b"POST /v2/models/ident/infer HTTP/1.1\r\nHost: x\r\nContent-Length: "
    + str(len(BODY)).encode()
    + b"\r\n\r\n"
    + BODY
)


def _ask(sock: socket.socket) -> tuple[int, dict, bytes]:
    sock.sendall(REQUEST)
    return read_response(sock.makefile("rb"))


def _ended(sock: socket.socket) -> bool:
    """Whether the server closed this connection (EOF now) rather than keeping it open."""
    sock.settimeout(0.05)  # a closed one has its EOF waiting already
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False


def test_retiring_answers_what_was_queued_on_it_and_the_port_keeps_serving(tmp_path, fastml_home):
    import uvloop

    from fastml.server.app import Server
    from fastml.serving import ModelManager

    manager = ModelManager([str(_identity_repo(tmp_path / "repo"))])
    manager.load_all()

    async def scenario():
        loop = asyncio.get_running_loop()
        leaving = Server(manager, "127.0.0.1", 0, None, reuse_port=True)
        await leaving.start()
        port = leaving.http_port
        staying = Server(manager, "127.0.0.1", port, None, reuse_port=True)
        await staying.start()
        # Handshakes the kernel completes while neither server has run its accept yet (no await in between):
        # the port's hash spreads them over both sockets' queues.
        queued = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(32)]
        retiring = loop.create_task(retire(leaving, grace_period_s=10, idle_close_s=0.5))
        answers = await asyncio.gather(*(loop.run_in_executor(None, _ask, s) for s in queued))
        assert await retiring is True
        for status, _, body in answers:
            assert status == 200 and json.loads(body)["outputs"][0]["data"] == [1, 2, 3, 4]
        # The retired server ended every connection it answered: at once (Connection: close) when the request
        # came once it was draining, else after the connection sat idle; the other server keeps its own open.
        ended = sum(_ended(s) for s in queued)
        assert leaving.ok_count > 0 and ended == leaving.ok_count and not leaving.connections
        assert staying.ok_count == len(queued) - ended
        # New connections reach only the server that stays.
        before = staying.ok_count
        fresh = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(16)]
        later = await asyncio.gather(*(loop.run_in_executor(None, _ask, s) for s in fresh))
        assert [a[0] for a in later] == [200] * 16 and staying.ok_count == before + 16
        for s in queued + fresh:
            s.close()
        await staying.drain(5)

    try:
        uvloop.run(scenario())
    finally:
        manager.close()


def test_stopping_counts_a_worker_still_starting_as_stopped_cleanly_and_a_serving_one_by_its_exit(tmp_path):
    """SIGTERM while an autoscale step is starting a worker: that worker has not installed its signal handlers
    yet and dies by the signal; it never served, so the supervisor's stop does not count it as failed. A serving
    worker that dies by the signal (it should have drained and exited 0) still is."""
    import subprocess
    import sys

    from fastml.server.workers import SERVING, ServeOptions, _Supervisor, _WorkerProc

    sup = _Supervisor(ServeOptions(targets=[str(tmp_path)]), 0, tmp_path)
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]  # no handler: SIGTERM ends it (-15)
    starting = _WorkerProc(1, subprocess.Popen(sleeper))
    serving = _WorkerProc(2, subprocess.Popen(sleeper), SERVING)
    sup.workers = {1: starting, 2: serving}
    codes = asyncio.run(sup.stop_all(grace_period_s=5.0))
    assert codes == [0, -15]
