"""Start ``fastml serve`` as a child process for an example and stop it the way an operator would (SIGTERM)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Generic, TypeVar

from fastml.errors import FastMLError

STARTUP_TIMEOUT_S = 120.0


class ServerProcess:
    """A ``fastml serve`` child on 127.0.0.1 with ports chosen by the OS; its output goes to ``log_path``.

    Args:
        targets: what to serve (repository, ``.onnx`` file, registry reference).
        log_path: file that receives the server's stdout and stderr.
        extra: further ``fastml serve`` options.
    """

    def __init__(self, targets: list[str], log_path: str | os.PathLike, *extra: str) -> None:
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "fastml.cli", "serve", *targets, "--http-port", "0", "--metrics-port", "0"]
        self.proc = subprocess.Popen(
            [*cmd, *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ.copy()
        )
        self._log = self.log_path.open("w")
        self.metrics_url: str | None = None  # host:port of the /metrics listener, from the startup line
        self.url = self._wait_ready()
        # Keep draining the server's output into the log so it never blocks on a full pipe.
        self._drain = threading.Thread(target=self._copy_rest, daemon=True)
        self._drain.start()

    def _wait_ready(self) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self._log.write(line)
            match = re.match(r"fastml serve: http://([0-9.]+:[0-9]+)", line)
            if match:
                self._log.flush()
                metrics = re.search(r"metrics http://([0-9.]+:[0-9]+)/metrics", line)
                self.metrics_url = metrics.group(1) if metrics else None
                return match.group(1)
        self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()
        self._log.close()
        tail = self.log_path.read_text()[-2000:]
        raise FastMLError(f"fastml serve did not start (log {self.log_path}):\n{tail}")

    def _copy_rest(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._log.write(line)
            self._log.flush()

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM, wait for the drain, and return the exit code (0 when it drained cleanly)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._drain.join(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()
        return code

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def fastml_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run a ``fastml`` command as a user would, in this process's environment (same FASTML_HOME)."""
    proc = subprocess.run([sys.executable, "-m", "fastml.cli", *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise FastMLError(f"fastml {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()[-1500:]}")
    return proc


SizesT = TypeVar("SizesT")


class ServedExample(Generic[SizesT]):
    """What every example that runs ``fastml serve`` keeps between its steps: where it writes, its sizes, the
    server (started by one of its steps) and a ``tritonclient`` client of it.

    Args:
        out_dir: where reports and data go. sizes: the example's sizes (full or quick).
    """

    def __init__(self, out_dir: Path, sizes: SizesT) -> None:
        self.out = out_dir
        self.sizes = sizes
        self.server: ServerProcess | None = None
        self.client: Any = None

    def _url(self) -> str:
        assert self.server is not None, "the server is not running"
        return self.server.url

    def close(self) -> None:
        """Close the client and stop the server (SIGTERM) if a step left them running."""
        if self.client is not None:
            self.client.close()
        if self.server is not None:
            self.server.stop()


def poll(probe, timeout_s: float = 60.0):
    """``probe()``'s answer once it stops raising, retried every 0.2 s; its last error after ``timeout_s``.

    Servers pick deployment files up within about a second: a request to a new deployment or variant is
    retried until it answers, with a deadline.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return probe()
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
