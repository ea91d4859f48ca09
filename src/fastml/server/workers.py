"""Server processes: one in-process server, or a supervisor with N workers on one port (SO_REUSEPORT).

With ``workers == 1`` everything runs in this process. With N > 1 the supervisor reserves the HTTP port
(binding it with SO_REUSEPORT, never listening), starts N worker processes that each load the models and
bind the same port (the kernel spreads connections across them), and serves /metrics itself by summing the
snapshots the workers write every 0.2 s. Each worker's statistics endpoint answers with the same sum, so
perf_analyzer sees one consistent, monotone view whichever worker it reaches. A worker that dies is
restarted. The model repository extension (load/unload) is process-local, so it is switched off (and not
advertised) with N > 1.

SIGTERM (or SIGINT): stop accepting, finish in-flight requests within the grace period, exit 0. The
supervisor forwards the signal to its workers and exits 0 when they all did.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SNAPSHOT_INTERVAL_S = 0.2


@dataclasses.dataclass
class ServeOptions:
    """What ``fastml serve`` was asked to do (see fastml.server.cli for each flag)."""

    targets: list[str]
    host: str = "127.0.0.1"
    http_port: int = 8000
    metrics_port: int | None = 8002
    workers: int = 1
    grpc_port: int | None = None
    binary_port: int | None = None  # fastml binary protocol (docs/protocol.md) on TCP
    binary_socket: str | None = None  # ... and/or on a Unix socket (single process only)
    overrides: dict = dataclasses.field(default_factory=dict)
    grace_period_s: float = 30.0
    max_body_bytes: int = 64 * 1024 * 1024
    idle_timeout_s: float = 60.0
    request_timeout_s: float = 30.0
    # Triton's --exit-on-error: exit when any model fails to load. Default: serve the others and list the
    # failed ones UNAVAILABLE with their reason (with no model loaded at all, serve always exits non-zero).
    exit_on_error: bool = False
    max_buffered_bytes: int = 256 * 1024 * 1024  # request bodies being received across connections (503 beyond)
    # TLS (fastml.server.tls) for the HTTP, gRPC and binary listeners; a client CA makes it mutual TLS.
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    # Live monitoring (fastml.serving.live_monitoring.attach keyword arguments: window_rows, window_s,
    # references {model: path}); None: off.
    monitor: dict | None = None


def serve(opts: ServeOptions) -> int:
    """Run the server until SIGTERM/SIGINT; returns the process exit code."""
    import uvloop

    if opts.workers <= 1:
        return uvloop.run(_single(opts))
    return uvloop.run(_supervise(opts))


def _models_line(manager) -> str:
    return ", ".join(f"{e.name}:{e.version}" for e in manager.entries())


def _startup_line(host: str, port: int, models: str, mport, workers: int, tls: bool = False) -> str:
    metrics = f"metrics http://{host}:{mport}/metrics" if mport is not None else "metrics off"
    scheme = "https" if tls else "http"
    return f"fastml serve: {scheme}://{host}:{port} (models: {models}) {metrics} workers {workers}"


def _tls(opts: ServeOptions):
    from fastml.server.tls import TlsConfig

    return TlsConfig.from_options(opts.tls_cert, opts.tls_key, opts.tls_client_ca)


def _limits(opts: ServeOptions):
    from fastml.server.app import Limits

    return Limits(
        max_body_bytes=opts.max_body_bytes,
        idle_timeout_s=opts.idle_timeout_s,
        request_timeout_s=opts.request_timeout_s,
        max_buffered_bytes=opts.max_buffered_bytes,
    )


def _attach_monitor(opts: ServeOptions, manager, server) -> None:
    if opts.monitor is not None:
        from fastml.serving.live_monitoring import attach

        server.plane.monitor = attach(manager, **opts.monitor)


def _close_monitor(server) -> None:
    """Close the open windows (stored as usual) once the last requests were answered."""
    if server.plane.monitor is not None:
        server.plane.monitor.close()


async def _wait_for_signal() -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def _single(opts: ServeOptions) -> int:
    from fastml.server.app import Server
    from fastml.serving import ModelManager

    manager = ModelManager(opts.targets, opts.overrides, drain_timeout_s=opts.grace_period_s)
    manager.load_all(exit_on_error=opts.exit_on_error)
    server = Server(
        manager,
        opts.host,
        opts.http_port,
        opts.metrics_port,
        limits=_limits(opts),
        grpc_port=opts.grpc_port,
        binary_port=opts.binary_port,
        binary_socket=opts.binary_socket,
        tls=_tls(opts),
    )
    _attach_monitor(opts, manager, server)
    await server.start()
    line = _startup_line(
        opts.host, server.http_port, _models_line(manager), server.metrics_port, 1, server.tls is not None
    )
    print(line, flush=True)
    if server.grpc_port is not None:
        print(f"fastml serve: grpc {opts.host}:{server.grpc_port}", flush=True)
    if server.binary_port is not None:
        print(f"fastml serve: binary {opts.host}:{server.binary_port}", flush=True)
    if server.binary_socket is not None:
        print(f"fastml serve: binary unix:{server.binary_socket}", flush=True)
    await _wait_for_signal()
    clean = await server.drain(opts.grace_period_s)
    manager.close()
    _close_monitor(server)
    print(f"fastml serve: stopped ({'drained' if clean else 'grace period expired'})", flush=True)
    return 0


# ----- worker side ---------------------------------------------------------------------------------
async def _worker(opts: ServeOptions, snapshot_dir: Path) -> int:
    from fastml.server.app import Server
    from fastml.server.metrics import merge_snapshots
    from fastml.serving import ModelManager

    manager = ModelManager(opts.targets, opts.overrides, drain_timeout_s=opts.grace_period_s)
    manager.load_all(exit_on_error=opts.exit_on_error)
    server = Server(
        manager,
        opts.host,
        opts.http_port,
        None,
        limits=_limits(opts),
        reuse_port=True,
        grpc_port=opts.grpc_port,
        binary_port=opts.binary_port,
        tls=_tls(opts),
    )
    # Repository load/unload would change one worker only: not offered with several workers.
    server.plane.disable_repository("the server runs with --workers > 1")
    # Statistics are summed over every worker's latest snapshot (monotone whichever worker answers).
    server.plane.snapshot_source = lambda: merge_snapshots(read_snapshots(snapshot_dir))["models"]
    _attach_monitor(opts, manager, server)
    await server.start()
    me = snapshot_dir / f"worker-{os.getpid()}.json"

    async def write_snapshots():
        while True:
            _write_atomic(me, json.dumps(server.snapshot()))
            await asyncio.sleep(SNAPSHOT_INTERVAL_S)

    snap_task = asyncio.get_running_loop().create_task(write_snapshots())
    print(f"READY {os.getpid()} {server.http_port}", flush=True)
    await _wait_for_signal()
    clean = await server.drain(opts.grace_period_s)
    snap_task.cancel()
    manager.close()
    _close_monitor(server)
    _write_atomic(me, json.dumps(server.snapshot()))
    print(
        f"fastml serve worker {os.getpid()}: stopped ({'drained' if clean else 'grace period expired'})",
        file=sys.stderr,
        flush=True,
    )
    return 0


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_snapshots(snapshot_dir: Path) -> list[dict]:
    out = []
    for p in sorted(snapshot_dir.glob("worker-*.json")):
        try:
            out.append(json.loads(p.read_text()))
        except (OSError, ValueError):
            continue  # being replaced right now; the next scrape sees it
    return out


# ----- supervisor side -----------------------------------------------------------------------------
class _Supervisor:
    def __init__(self, opts: ServeOptions, port: int, snapshot_dir: Path):
        self.opts = opts
        self.port = port
        self.snapshot_dir = snapshot_dir
        self.procs: dict[int, subprocess.Popen] = {}
        self.stopping = False

    def spawn(self) -> subprocess.Popen:
        wopts = dataclasses.replace(self.opts, http_port=self.port, metrics_port=None)
        cmd = [
            sys.executable,
            "-m",
            "fastml.server.workers",
            json.dumps(dataclasses.asdict(wopts)),
            str(self.snapshot_dir),
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        line = proc.stdout.readline()
        if not line.startswith("READY"):
            proc.wait(timeout=10)
            raise _startup_error(line, proc.returncode)
        self.procs[proc.pid] = proc
        return proc


async def _supervise(opts: ServeOptions) -> int:
    from fastml.server.app import Server
    from fastml.server.metrics import merge_snapshots
    from fastml.serving.repository import scan_target

    # Reserve the port with SO_REUSEPORT (bound, never listening: it receives no connections).
    fam = socket.AF_INET6 if ":" in opts.host else socket.AF_INET
    reserve = socket.socket(fam, socket.SOCK_STREAM)
    reserve.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        reserve.bind((opts.host, opts.http_port))
    except OSError as exc:
        reserve.close()
        from fastml.errors import Unavailable

        # The same one line as one process gives (fastml.server.app), not a traceback.
        raise Unavailable(f"cannot listen on {opts.host}:{opts.http_port}: {exc.strerror or exc}") from None
    port = reserve.getsockname()[1]
    snapshot_dir = Path(tempfile.mkdtemp(prefix="fastml-serve-"))
    sup = _Supervisor(opts, port, snapshot_dir)
    loop = asyncio.get_running_loop()
    try:
        for _ in range(opts.workers):
            await loop.run_in_executor(None, sup.spawn)
    except BaseException:
        for p in sup.procs.values():
            p.terminate()
        for p in sup.procs.values():
            p.wait()
        reserve.close()
        shutil.rmtree(snapshot_dir, ignore_errors=True)
        raise
    metrics = Server(
        None, opts.host, None, opts.metrics_port, snapshot_fn=lambda: merge_snapshots(read_snapshots(snapshot_dir))
    )
    await metrics.start()
    names = []
    for t in opts.targets:
        for name, sources in scan_target(t).items():
            names += [f"{name}:{s.version}" for s in sources]
    tls_on = opts.tls_cert is not None
    print(_startup_line(opts.host, port, ", ".join(names), metrics.metrics_port, opts.workers, tls_on), flush=True)
    if opts.grpc_port is not None:
        print(f"fastml serve: grpc {opts.host}:{opts.grpc_port}", flush=True)
    if opts.binary_port is not None:
        print(f"fastml serve: binary {opts.host}:{opts.binary_port}", flush=True)

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def watch():
        while not stop.is_set():
            await asyncio.sleep(0.5)
            for pid, proc in list(sup.procs.items()):
                if proc.poll() is not None and not stop.is_set():
                    del sup.procs[pid]
                    print(
                        f"fastml serve: worker {pid} exited with {proc.returncode}; restarting",
                        file=sys.stderr,
                        flush=True,
                    )
                    try:
                        (snapshot_dir / f"worker-{pid}.json").unlink(missing_ok=True)
                        await loop.run_in_executor(None, sup.spawn)
                    except Exception as exc:
                        print(f"fastml serve: restart failed: {exc}", file=sys.stderr, flush=True)

    watcher = loop.create_task(watch())
    await stop.wait()
    watcher.cancel()
    for proc in sup.procs.values():
        proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + opts.grace_period_s + 10
    codes = []
    for proc in sup.procs.values():
        left = max(0.1, deadline - time.monotonic())
        try:
            codes.append(await loop.run_in_executor(None, proc.wait, left))
        except subprocess.TimeoutExpired:
            proc.kill()
            codes.append(proc.wait())
    await metrics.drain(0)
    reserve.close()
    for p in snapshot_dir.iterdir():
        p.unlink(missing_ok=True)
    snapshot_dir.rmdir()
    print(f"fastml serve: stopped (worker exit codes {codes})", flush=True)
    return 0 if all(c == 0 for c in codes) else 1


# A worker that cannot start writes this prefix and its error as JSON on stdout instead of READY; the
# supervisor raises the same error, so `fastml serve --workers N` fails with the one line that
# `fastml serve` prints, not a traceback per process.
_FAILED = "FAILED "


def _startup_error(line: str, returncode: int | None) -> Exception:
    """The error a worker reported on its first stdout line (see ``_FAILED``)."""
    from fastml import errors

    if line.startswith(_FAILED):
        try:
            info = json.loads(line[len(_FAILED) :])
            cls = getattr(errors, info["kind"], None)
            if isinstance(cls, type) and issubclass(cls, errors.FastMLError):
                return cls(info["message"])
        except (ValueError, KeyError, TypeError):
            pass
    return errors.InternalError(f"a server worker failed to start (exit {returncode}); its error is printed above")


def _worker_main(argv: list[str]) -> int:
    import uvloop

    from fastml.errors import FastMLError, InvalidInput, NotFound

    opts = ServeOptions(**json.loads(argv[0]))
    try:
        return uvloop.run(_worker(opts, Path(argv[1])))
    except FastMLError as exc:
        print(_FAILED + json.dumps({"kind": type(exc).__name__, "message": str(exc)}), flush=True)
        return 2 if isinstance(exc, (InvalidInput, NotFound)) else 1


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
