"""fastml loadtest refuses a bad number (-b, -n, -c, --rate, --duration-s) before it asks the server for model
metadata: the caller's mistake is named whether or not the server answers, and the server sees no connection."""

from __future__ import annotations

import socket
import threading

import pytest

from fastml.loadtest.cli import main


@pytest.fixture
def listener():
    """A loopback socket that counts the connections made to it (nothing is answered)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.settimeout(0.2)
    seen = []
    stop = threading.Event()

    def accept():
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            seen.append(conn)

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield sock.getsockname()[1], seen
    stop.set()
    t.join(timeout=2)
    for c in seen:
        c.close()
    sock.close()


@pytest.mark.parametrize(
    "extra, words",
    [
        (["-b", "0"], "-b/--batch-size must be >= 1, got 0"),
        (["-n", "0"], "max_requests must be >= 1, got 0"),
        (["-c", "0"], "concurrency must be >= 1, got 0"),
        (["--duration-s", "nan"], "duration_s must be a finite number"),
        (["--timeout-s", "0"], "timeout_s must be > 0"),
        (["--mode", "open", "--rate", "0"], "rate_per_s must be a finite number > 0"),
        (["--mode", "open", "--rate", "5", "--max-connections", "0"], "max_connections must be >= 1"),
    ],
)
def test_bad_numbers_are_refused_without_contacting_the_server(listener, capsys, extra, words):
    port, seen = listener
    code = main([f"http://127.0.0.1:{port}", "-m", "model", "--timeout-s", "1", *extra])
    assert code == 2
    assert words in capsys.readouterr().err
    assert seen == []


def test_the_binary_protocol_checks_them_before_reading_metadata(listener, capsys):
    port, seen = listener
    code = main(["tcp://127.0.0.1:1", "-m", "model", "-n", "-3", "--metadata-url", f"http://127.0.0.1:{port}"])
    assert code == 2
    assert "max_requests must be >= 1, got -3" in capsys.readouterr().err
    assert seen == []
