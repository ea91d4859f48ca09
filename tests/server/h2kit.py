"""A raw HTTP/2 client (the h2 package) for sending gRPC streams no well-behaved client sends."""

from __future__ import annotations

import socket
import struct

import h2.config
import h2.connection
import h2.events

from fastml.server.proto import grpc_service_pb2 as pb

INFER_PATH = "/inference.GRPCInferenceService/ModelInfer"


def grpc_frame(message: bytes, compressed: bool = False) -> bytes:
    """One gRPC message on the wire: compressed flag, 4-byte big-endian length, the bytes."""
    return struct.pack(">BI", 1 if compressed else 0, len(message)) + message


def infer_request(model: str, name: str, datatype: str, shape, raw: bytes, request_id: str = "") -> bytes:
    msg = pb.ModelInferRequest(model_name=model, id=request_id)
    msg.inputs.add(name=name, datatype=datatype, shape=list(shape))
    msg.raw_input_contents.append(raw)
    return msg.SerializeToString()


def headers(path: str = INFER_PATH, content_type: str = "application/grpc", extra=()) -> list[tuple[str, str]]:
    return [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "localhost"),
        ("content-type", content_type),
        ("te", "trailers"),
        *extra,
    ]


class Answer:
    """What came back on one stream: response headers, DATA bytes, trailers, and a reset code if reset."""

    def __init__(self):
        self.headers: dict[str, str] = {}
        self.data = b""
        self.trailers: dict[str, str] = {}
        self.reset: int | None = None
        self.ended = False

    @property
    def grpc_status(self) -> int | None:
        value = self.trailers.get("grpc-status", self.headers.get("grpc-status"))
        return None if value is None else int(value)

    @property
    def grpc_message(self) -> str:
        from urllib.parse import unquote

        return unquote(self.trailers.get("grpc-message", self.headers.get("grpc-message", "")))

    def messages(self) -> list[bytes]:
        out, data = [], self.data
        while data:
            n = struct.unpack(">I", data[1:5])[0]
            out.append(data[5 : 5 + n])
            data = data[5 + n :]
        return out


class RawH2:
    """One HTTP/2 connection to 127.0.0.1:port; streams are driven by hand."""

    def __init__(self, port: int, timeout: float = 10.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.initiate_connection()
        self.answers: dict[int, Answer] = {}
        self.goaway: int | None = None
        self.closed = False
        self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def open(self, hdrs=None, end_stream: bool = False) -> int:
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, hdrs or headers(), end_stream=end_stream)
        self.answers[sid] = Answer()
        self.flush()
        return sid

    def send(self, sid: int, data: bytes, end_stream: bool = False) -> None:
        """Send ``data`` on a stream in frames the server's window and frame size allow (reading its
        WINDOW_UPDATEs while the window is closed)."""
        while True:
            n = min(len(data), self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            if n == 0 and data:
                self._read_once()
                continue
            self.conn.send_data(sid, data[:n], end_stream=end_stream and n == len(data))
            self.flush()
            data = data[n:]
            if not data:
                return

    def reset(self, sid: int, code: int = 8) -> None:
        self.conn.reset_stream(sid, code)
        self.flush()

    def pump(self, until) -> None:
        """Read and handle frames until ``until()`` is true or the server closes (socket timeout raises)."""
        while not until() and not self.closed:
            self._read_once()

    def _read_once(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            self.closed = True
            raise ConnectionError("the server closed the connection")
        for ev in self.conn.receive_data(data):
            a = self.answers.get(getattr(ev, "stream_id", None))
            if isinstance(ev, h2.events.ResponseReceived):
                a.headers = dict(ev.headers)
            elif isinstance(ev, h2.events.TrailersReceived):
                a.trailers = dict(ev.headers)
            elif isinstance(ev, h2.events.DataReceived):
                a.data += ev.data
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                a.ended = True
            elif isinstance(ev, h2.events.StreamReset):
                if a is not None:
                    a.reset = ev.error_code
                    a.ended = True
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.goaway = ev.error_code
        self.flush()

    def wait(self, *sids: int) -> list[Answer]:
        self.pump(lambda: all(self.answers[s].ended for s in sids))
        return [self.answers[s] for s in sids]

    def close(self) -> None:
        self.sock.close()
