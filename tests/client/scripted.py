"""A scripted binary-protocol server for client tests, on a loopback port."""

from __future__ import annotations

import socket
import threading

from fastml.client import wire


class ScriptedServer:
    """Answers each request frame with ``answer(conn, item)``, which sends what it likes on ``conn`` and returns
    False to close the connection. Counts accepted ``connections``; ``eof[i]`` is set once the client closed
    connection ``i`` (a read returned no bytes)."""

    def __init__(self, answer):
        self.answer = answer
        self.connections = 0
        self.eof: list[threading.Event] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            self.eof.append(threading.Event())
            threading.Thread(target=self._serve, args=(conn, self.eof[-1]), daemon=True).start()

    def _serve(self, conn, eof):
        parser, buf = wire.Parser(), wire.FrameBuffer(1 << 16)
        with conn:
            while True:
                try:
                    n = conn.recv_into(buf.get_buffer())
                except OSError:
                    return
                if not n:
                    eof.set()
                    return
                buf.advance(n)
                for item in buf.parse(parser, 1 << 20)[0]:
                    if self.answer(conn, item) is False:
                        return

    def close(self):
        self.sock.close()
