"""A tiny KServe v2 infer server for testing the harness: asyncio + httptools on 127.0.0.1, port 0.

Each request gets an action from ``policy(index)`` (index = arrival order, from 0):
``"ok"`` answers 200 with a binary output ``sum`` = FP32 [1, 1] holding the sum of the request's
binary payload read as FP32; ``"busy"`` answers 503 ``{"error": ...}``; ``"hang"`` never answers;
``"close"`` drops the connection without answering; ``"garbage"`` sends bytes that are not HTTP;
``"badbody"`` answers 200 with an infer body whose sizes do not add up.
``GET /v2/models/tiny`` answers model metadata (input ``x`` FP32 [-1, 4]) and is not counted.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable

import httptools
import numpy as np

Policy = Callable[[int], str]


class _Conn(asyncio.Protocol):
    def __init__(self, server: TinyServer) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.body: list[bytes] = []
        self.header_length: int | None = None
        self.url = b""

    def connection_made(self, transport):
        self.transport = transport
        self.server.connections += 1

    def data_received(self, data):
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_message_begin(self):
        self.body = []
        self.header_length = None
        self.url = b""

    def on_url(self, url):
        self.url += url

    def on_header(self, name, value):
        if name.lower() == b"inference-header-content-length":
            self.header_length = int(value)

    def on_body(self, body):
        self.body.append(body)

    def on_message_complete(self):
        if self.parser.get_method() == b"GET":
            if self.url == b"/v2/models/tiny":
                meta = {
                    "name": "tiny",
                    "versions": ["1"],
                    "platform": "test",
                    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
                    "outputs": [{"name": "sum", "datatype": "FP32", "shape": [-1, 1]}],
                }
                self._send(200, json.dumps(meta).encode(), {"Content-Type": "application/json"})
            else:
                self._send(404, b'{"error": "not found"}', {"Content-Type": "application/json"})
            return
        index = self.server.received
        self.server.received += 1
        action = self.server.policy(index)
        self.server.actions[action] = self.server.actions.get(action, 0) + 1
        if action == "ok":
            body = b"".join(self.body)
            payload = np.frombuffer(body[self.header_length :], dtype="<f4")
            out = np.array([[payload.sum()]], dtype="<f4").tobytes()
            header = json.dumps(
                {
                    "model_name": "tiny",
                    "outputs": [
                        {
                            "name": "sum",
                            "datatype": "FP32",
                            "shape": [1, 1],
                            "parameters": {"binary_data_size": len(out)},
                        }
                    ],
                }
            ).encode()
            self._send(
                200,
                header + out,
                {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))},
            )
        elif action == "badbody":
            header = b'{"outputs": [{"name": "sum", "datatype": "FP32", "shape": [1, 1], "parameters": {"binary_data_size": 400}}]}'
            self._send(200, header + b"1234", {"Inference-Header-Content-Length": str(len(header))})
        elif action == "busy":
            self._send(503, b'{"error": "queue full"}', {"Content-Type": "application/json"})
        elif action == "close":
            self.transport.close()
        elif action == "garbage":
            self.transport.write(b"NOT HTTP AT ALL\r\n\r\n")
        elif action != "hang":
            raise ValueError(f"unknown action {action!r}")

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
        head = f"HTTP/1.1 {status} {reason}\r\nContent-Length: {len(body)}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        self.transport.write(head.encode() + body)


class TinyServer:
    """Run on its own event loop in a background thread; ``port`` is set once it listens."""

    def __init__(self, policy: Policy = lambda i: "ok") -> None:
        self.policy = policy
        self.received = 0
        self.connections = 0
        self.actions: dict[str, int] = {}
        self.port: int | None = None
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(self._loop.create_server(lambda: _Conn(self), "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        server.close()
        self._loop.run_until_complete(server.wait_closed())
        self._loop.close()

    def __enter__(self) -> TinyServer:
        self._thread.start()
        self._ready.wait()
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
