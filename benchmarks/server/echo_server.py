"""An HTTP server that does no work: the ceiling a load generator reaches on this machine.

    python benchmarks/server/echo_server.py        # prints "http://127.0.0.1:PORT" once listening

Same stack as `fastml serve`'s HTTP listener (uvloop + httptools, keep-alive), but every request, whatever
its path or body, gets one fixed KServe v2 binary response of the MLP's shape (``probabilities`` FP32
[1, 2]). bench_server.py measures fastml against it with the same client on the same cores, so the ratio
says how much of the bare transport's rate fastml keeps while decoding, batching, running the model and
encoding: a baseline that needs no peer installed.
"""

from __future__ import annotations

import asyncio
import json
import struct
import sys

import httptools
import uvloop


def fixed_response() -> bytes:
    """A 200 with a binary-tensor body: JSON header naming the output, then 8 bytes of two float32."""
    header = json.dumps(
        {
            "model_name": "mlp",
            "model_version": "1",
            "outputs": [
                {"name": "probabilities", "datatype": "FP32", "shape": [1, 2], "parameters": {"binary_data_size": 8}}
            ],
        },
        separators=(",", ":"),
    ).encode()
    body = header + struct.pack("<2f", 0.25, 0.75)
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
        b"Inference-Header-Content-Length: " + str(len(header)).encode() + b"\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


RESPONSE = fixed_response()


class EchoProtocol(asyncio.Protocol):
    """Parses requests with httptools (as a real server must) and answers each with RESPONSE."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()

    def on_message_complete(self) -> None:
        if self.transport is not None:
            self.transport.write(RESPONSE)


async def serve() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(EchoProtocol, "127.0.0.1", 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    print(f"http://127.0.0.1:{port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        uvloop.run(serve())
    except KeyboardInterrupt:
        sys.exit(0)
