"""Server processes: one in-process server, or a supervisor with N workers on one port (SO_REUSEPORT).

With ``workers == 1`` everything runs in this process. With N > 1 the supervisor reserves the HTTP port
(binding it with SO_REUSEPORT, never listening), starts N worker processes that each load the models and
bind the same port (the kernel spreads connections across them), and serves /metrics itself by summing the
snapshots the workers write every 0.2 s. Each worker's statistics endpoint answers with the same sum, so
perf_analyzer sees one consistent, monotone view whichever worker it reaches. A worker that dies is
replaced. The model repository extension (load/unload) is process-local, so it is switched off (and not
advertised) with N > 1.

``--workers auto`` runs the same supervisor between ``--min-workers`` and ``--max-workers``: every
``interval_s`` it measures the serving workers from their snapshots (CPU seconds per wall second, batcher
queue time per request) and asks :class:`fastml.server.autoscale.AutoscalePolicy` how many it wants; it
starts or retires workers to match, logs every decision and exports ``fastml_workers{state}`` and
``fastml_autoscale_decisions_total{direction}``.

Retiring a worker (SIGUSR1) loses no request: it shrinks its listen backlog so no new handshake queues on
it, accepts what already queued, closes its listening socket (the kernel then gives new connections to the
other workers), answers every request it still receives with ``Connection: close``, closes a keep-alive
connection only once it has been idle for a second, and exits. Its counters are folded into
``retired.json`` so the summed metrics stay monotone as workers come and go.

SIGTERM (or SIGINT): stop accepting, finish in-flight requests within the grace period, exit 0. The
supervisor forwards the signal to its workers and exits 0 when they all did.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
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

from fastml.server.autoscale import DOWN, HOLD, UP, AutoscaleConfig, AutoscalePolicy, LoadSample

SNAPSHOT_INTERVAL_S = 0.2
FIXED_INTERVAL_S = 0.5  # how often a fixed-size supervisor checks for dead workers
RETIRE_SIGNAL = signal.SIGUSR1  # supervisor -> worker: stop accepting, drain, exit (scale-down)
RETIRE_SETTLE_S = 0.05  # after shrinking the backlog: handshakes under way complete and are accepted
RETIRE_IDLE_CLOSE_S = 1.0  # a retiring worker closes a keep-alive connection idle this long
RETIRED = "retired.json"  # the folded counters of workers that exited
MAX_SPAWN_BACKOFF_S = 30.0


@dataclasses.dataclass
class ServeOptions:
    """What ``fastml serve`` was asked to do (see fastml.server.cli for each flag)."""

    targets: list[str]
    host: str = "127.0.0.1"
    http_port: int = 8000
    metrics_port: int | None = 8002
    workers: int = 1
    # --workers auto: bounds, targets and timings of the autoscaler; None runs exactly `workers` processes.
    autoscale: AutoscaleConfig | None = None
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

    if opts.workers <= 1 and opts.autoscale is None:
        return uvloop.run(_single(opts))
    return uvloop.run(_supervise(opts))


def _models_line(manager) -> str:
    return ", ".join(f"{e.name}:{e.version}" for e in manager.entries())


def _startup_line(host: str, port: int, models: str, mport, workers: int | str, tls: bool = False) -> str:
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


def _freeze_startup_heap() -> None:
    """Take what start-up made (imports, loaded models, the server's own objects) out of the cyclic collector's
    scans. It lives as long as the process, and every full collection while serving would walk it again: a pause
    of the event loop (8 ms with the two reference models loaded: benchmarks/bench_gc_pause.py) that the
    admission gate cannot tell from a queue that stopped moving. ``gc.freeze`` moves it to the permanent
    generation; what serving makes is collected as before (reference counting frees an unloaded model)."""
    gc.collect()
    gc.freeze()


def _stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT, installed on the running loop. Installed before the startup line is
    printed: a caller that signals the server as soon as it reads the line (a test, a supervisor) found the
    default action still in place and killed it (exit -15) instead of draining it."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _wait_for_signal(stop: asyncio.Event) -> None:
    await stop.wait()


async def _single(opts: ServeOptions) -> int:
    from fastml.server.app import Server
    from fastml.serving import ModelManager

    stop = _stop_on_signals()  # a SIGTERM while loading or starting stops the server once it has started
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
    _freeze_startup_heap()
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
    await _wait_for_signal(stop)
    clean = await server.drain(opts.grace_period_s)
    manager.close()
    _close_monitor(server)
    print(f"fastml serve: stopped ({'drained' if clean else 'grace period expired'})", flush=True)
    return 0


# ----- worker side ---------------------------------------------------------------------------------
async def _worker(opts: ServeOptions, snapshot_dir: Path, wid: int) -> int:
    from fastml.server.app import Server
    from fastml.server.metrics import merge_snapshots
    from fastml.serving import ModelManager

    supervisor = os.getppid()  # this process's parent changes if the supervisor dies (see write_snapshots)
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
    _attach_monitor(opts, manager, server)
    # Repository load/unload would change one worker only: not offered with several workers.
    server.plane.disable_repository("the server runs with --workers > 1")
    # Statistics are summed over every worker's latest snapshot (monotone whichever worker answers).
    server.plane.snapshot_source = lambda: merge_snapshots(read_snapshots(snapshot_dir))["models"]
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    retiring = []  # set by the retire signal: the supervisor is scaling down

    def on_retire() -> None:
        retiring.append(True)
        stop.set()

    # Installed before READY: the supervisor signals only workers that reported READY.
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(RETIRE_SIGNAL, on_retire)
    await server.start()
    _freeze_startup_heap()
    me = snapshot_dir / f"worker-{wid}.json"

    def snapshot() -> dict:
        # CPU seconds against the monotonic clock (one clock for every process): the autoscaler's utilisation.
        process = {"cpu_s": time.process_time(), "at_s": time.monotonic(), "pid": os.getpid()}
        return {"wid": wid, "process": process, **server.snapshot()}

    async def write_snapshots():
        while True:
            _write_atomic(me, json.dumps(snapshot()))
            await asyncio.sleep(SNAPSHOT_INTERVAL_S)
            if os.getppid() != supervisor and not stop.is_set():
                # The supervisor is gone (killed: it had no chance to stop us). Stop as on SIGTERM rather than
                # serve on, orphaned, on a port that a new supervisor may bind again (SO_REUSEPORT would then
                # spread its connections over these old workers too).
                print(f"fastml serve worker {os.getpid()}: supervisor exited; stopping", file=sys.stderr, flush=True)
                stop.set()

    snap_task = loop.create_task(write_snapshots())
    print(f"READY {os.getpid()} {server.http_port}", flush=True)
    await stop.wait()
    if retiring:
        clean = await retire(server, opts.grace_period_s)
    else:
        clean = await server.drain(opts.grace_period_s)
    snap_task.cancel()
    _close_monitor(server)  # its last window is closed and counted before the final snapshot
    # The final snapshot, before the models close (a closed manager lists none): the supervisor folds it into
    # the retired counters once this process has exited.
    _write_atomic(me, json.dumps(snapshot()))
    manager.close()
    what = "retired" if retiring else "stopped"
    print(
        f"fastml serve worker {os.getpid()}: {what} ({'drained' if clean else 'grace period expired'})",
        file=sys.stderr,
        flush=True,
    )
    return 0


async def retire(server, grace_period_s: float, idle_close_s: float = RETIRE_IDLE_CLOSE_S) -> bool:
    """Take one worker out of a SO_REUSEPORT group without failing a request, then drain it.

    Closing a listening socket resets the connections still waiting in its accept queue, and closing a
    keep-alive connection the moment it is idle races with the client's next request. So: shrink the
    backlog to 0 (a new SYN is answered with a syncookie the group's other sockets accept, or dropped and
    retransmitted to them), let the handshakes under way land and be accepted, accept whatever is still
    queued by hand, close the socket, and only then mark the server draining: every later answer carries
    ``Connection: close``. A keep-alive connection that stays idle for ``idle_close_s`` is closed (the race
    of any idle timeout); finally :meth:`fastml.server.app.Server.drain` finishes in-flight requests and
    the other transports.

    Returns:
        True when every in-flight request was answered within the grace period.
    """
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + grace_period_s
    # The worker runs no metrics listener: every asyncio server it holds is the HTTP port.
    listeners = list(server._servers)
    for srv in listeners:
        for tsock in srv.sockets:
            with socket.socket(fileno=os.dup(tsock.fileno())) as dup:
                dup.listen(0)  # listen() on a listening socket only changes its backlog
    await asyncio.sleep(RETIRE_SETTLE_S)
    queued: list[socket.socket] = []
    for srv in listeners:
        for tsock in srv.sockets:
            with socket.socket(fileno=os.dup(tsock.fileno())) as dup:
                dup.setblocking(False)
                while True:
                    try:
                        queued.append(dup.accept()[0])
                    except (BlockingIOError, InterruptedError):
                        break
        srv.close()  # no yield to the loop since the last accept: a window of microseconds, not a loop turn
    ssl_ctx = server.tls.server_context() if server.tls is not None else None
    # Awaited (TLS: through the handshake) so each connection is registered before draining starts; one
    # that fails its handshake is that client's failure alone.
    await asyncio.gather(
        *(loop.connect_accepted_socket(lambda: server.protocol(server), sock, ssl=ssl_ctx) for sock in queued),
        return_exceptions=True,
    )
    server.plane.draining = True  # from here on every answer ends its connection
    idle_since: dict = {}
    while server.connections and time.monotonic() < deadline:
        now = time.monotonic()
        for conn in list(server.connections):
            if conn.closed or conn.transport is None or conn.pending or conn.msg_tick >= 0 or conn.lingering:
                idle_since.pop(conn, None)  # busy, or already ending after a Connection: close answer
                continue
            if now - idle_since.setdefault(conn, now) >= idle_close_s:
                conn.closed = True
                conn.transport.close()
        await asyncio.sleep(0.05)
    return await server.drain(max(0.0, deadline - time.monotonic()))


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # absent, or being replaced right now; the next read sees it


def _live_and_retired(snapshot_dir: Path) -> tuple[dict[int, dict], dict | None]:
    """The latest snapshot of every worker not yet folded, by worker id, and the one ``retired.json`` read
    that decided it (summing a later read of it would count a worker folded in between twice)."""
    out = {}
    # Workers first, then the retired file: a worker folded in between is found in the retired list and
    # dropped here, so it is counted exactly once whichever way the race goes.
    for p in sorted(snapshot_dir.glob("worker-*.json")):
        snap = _read_json(p)
        if snap is not None:
            out[int(snap.get("wid", p.stem[len("worker-") :]))] = snap
    retired = _read_json(snapshot_dir / RETIRED)
    for wid in retired["folded"] if retired else ():
        out.pop(wid, None)
    return out, retired


def live_snapshots(snapshot_dir: Path) -> dict[int, dict]:
    """The latest snapshot of every worker not yet folded into ``retired.json``, by worker id."""
    return _live_and_retired(snapshot_dir)[0]


def read_snapshots(snapshot_dir: Path) -> list[dict]:
    """Every snapshot to sum: the live workers' and the counters of those that exited (one consistent read)."""
    live, retired = _live_and_retired(snapshot_dir)
    return list(live.values()) + ([retired] if retired else [])


def fold_retired(snapshot_dir: Path, wid: int) -> None:
    """Add an exited worker's last counters to ``retired.json`` and remove its snapshot (supervisor only).

    Gauges (in flight, pending, connections, alert states) are zeroed: the process is gone, so a rule that
    fired there when it exited must not stay firing once the live workers resolved it. The new retired file
    lists the worker before its snapshot is removed (see :func:`live_snapshots`)."""
    from fastml.server.metrics import merge_snapshots

    path = snapshot_dir / f"worker-{wid}.json"
    last = _read_json(path)
    retired = _read_json(snapshot_dir / RETIRED) or {"folded": [], "models": [], "server": {}, "deployments": []}
    if last is not None:
        last["server"] = {"responses": last.get("server", {}).get("responses", {})}
        for m in last.get("models", []):
            m["inflight"] = 0
            m["stats"]["pending"] = 0
        for r in (last.get("monitoring") or {}).get("alerts", []):
            r["firing"] = 0.0
        merged = merge_snapshots([retired, last])
    else:
        merged = dict(retired)  # it exited before its first snapshot: nothing to add
    merged["folded"] = [*retired["folded"], wid]
    _write_atomic(snapshot_dir / RETIRED, json.dumps(merged))
    path.unlink(missing_ok=True)


# ----- supervisor side -----------------------------------------------------------------------------
STARTING, SERVING, RETIRING = "starting", "serving", "retiring"


@dataclasses.dataclass
class _WorkerProc:
    wid: int
    proc: subprocess.Popen
    state: str = STARTING


class _Meter:
    """Per-interval load of the serving workers from the cumulative counters in their snapshots."""

    def __init__(self):
        self.prev: dict[int, tuple[float, float, float, float]] = {}  # wid -> (at_s, cpu_s, queue_ns, requests)

    def sample(self, snapshots: dict[int, dict], serving: set[int]) -> LoadSample | None:
        utils, queue_ns, requests = [], 0.0, 0.0
        current = {}
        for wid in serving:
            snap = snapshots.get(wid)
            if snap is None or "process" not in snap:
                continue
            proc = snap["process"]
            q = sum(m["stats"].get("queue_ns", 0) for m in snap.get("models", []))
            r = sum(m["stats"].get("requests", 0) for m in snap.get("models", []))
            current[wid] = (proc["at_s"], proc["cpu_s"], q, r)
            before = self.prev.get(wid)
            if before is None or proc["at_s"] <= before[0]:
                continue  # first sight of this worker, or no new snapshot since: not measured this time
            utils.append((proc["cpu_s"] - before[1]) / (proc["at_s"] - before[0]))
            queue_ns += q - before[2]
            requests += r - before[3]
        self.prev = current
        if not utils:
            return None
        queue_us = queue_ns / requests / 1e3 if requests > 0 else 0.0
        return LoadSample(workers=len(utils), utilization=sum(utils) / len(utils), queue_us=queue_us)


class _Supervisor:
    def __init__(self, opts: ServeOptions, port: int, snapshot_dir: Path):
        self.opts = opts
        self.port = port
        self.snapshot_dir = snapshot_dir
        self.workers: dict[int, _WorkerProc] = {}
        self.next_wid = 1
        self.policy = AutoscalePolicy(opts.autoscale, now_s=time.monotonic()) if opts.autoscale else None
        self.desired = self.policy.desired if self.policy else opts.workers
        self.decisions = {UP: 0, DOWN: 0}
        self.meter = _Meter()
        self.unmeasured = True  # the last interval had no measurement (logged once; none yet at start)
        self.spawning: asyncio.Task | None = None
        self.next_spawn_s = 0.0
        self.spawn_backoff_s = 1.0

    def count(self, *states: str) -> int:
        return sum(1 for w in self.workers.values() if w.state in states)

    async def start_worker(self) -> _WorkerProc:
        """Start one worker and wait for its READY line (its error, raised, when it cannot start)."""
        wid = self.next_wid
        self.next_wid += 1
        wopts = dataclasses.replace(self.opts, http_port=self.port, metrics_port=None, autoscale=None)
        cmd = [
            sys.executable,
            "-m",
            "fastml.server.workers",
            json.dumps(dataclasses.asdict(wopts)),
            str(self.snapshot_dir),
            str(wid),
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        worker = self.workers[wid] = _WorkerProc(wid, proc)
        loop = asyncio.get_running_loop()
        line = await loop.run_in_executor(None, proc.stdout.readline)
        if not line.startswith("READY"):
            del self.workers[wid]
            try:
                await loop.run_in_executor(None, proc.wait, 10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            (self.snapshot_dir / f"worker-{wid}.json").unlink(missing_ok=True)
            raise _startup_error(line, proc.returncode)
        worker.state = SERVING
        return worker

    def snapshot(self) -> dict:
        """What the supervisor's /metrics reports: the sum over workers plus the worker counts."""
        from fastml.server.metrics import merge_snapshots

        live, retired = _live_and_retired(self.snapshot_dir)
        snap = merge_snapshots(list(live.values()) + ([retired] if retired else []))
        snap["server"]["workers"] = len(live)
        snap["workers"] = {"desired": self.desired, "current": self.count(SERVING), "decisions": dict(self.decisions)}
        return snap

    def reap(self) -> None:
        """Forget workers that exited (folding their counters); a serving one that died gets replaced by
        :meth:`reconcile` since fewer are serving than desired."""
        for wid, w in list(self.workers.items()):
            if w.state == STARTING or w.proc.poll() is None:
                continue  # a starting worker's exit is reported by start_worker
            del self.workers[wid]
            self.meter.prev.pop(wid, None)
            fold_retired(self.snapshot_dir, wid)
            if w.state == RETIRING:
                _log(f"worker {w.proc.pid} retired (exit {w.proc.returncode})")
            else:
                _log(f"worker {w.proc.pid} exited with {w.proc.returncode}; replacing it")

    def measure(self) -> None:
        """One autoscaler step: measure the serving workers, ask the policy, log and count a change."""
        serving = {wid for wid, w in self.workers.items() if w.state == SERVING}
        sample = self.meter.sample(live_snapshots(self.snapshot_dir), serving)
        decision = self.policy.observe(time.monotonic(), sample)
        if decision.direction != HOLD:
            self.decisions[decision.direction] += 1
            _log(f"autoscale {decision.direction} {decision.reason}")
        elif sample is None and not self.unmeasured:  # said once when measurements stop, not every interval
            _log(f"autoscale hold: {decision.reason}")
        self.unmeasured = sample is None
        self.desired = decision.desired

    def reconcile(self) -> None:
        """Start or retire workers until as many serve as desired (one start at a time)."""
        loop = asyncio.get_running_loop()
        active = self.count(STARTING, SERVING)
        if active < self.desired:
            if self.spawning is None and time.monotonic() >= self.next_spawn_s:
                self.spawning = loop.create_task(self._spawn_one())
        elif active > self.desired and self.count(STARTING) == 0:
            victim = self._pick_victim()
            if victim is not None:
                victim.state = RETIRING
                _log(f"retiring worker {victim.proc.pid} ({self.count(SERVING)} serving, {self.desired} desired)")
                victim.proc.send_signal(RETIRE_SIGNAL)

    def _pick_victim(self) -> _WorkerProc | None:
        """The serving worker with the fewest open connections: the cheapest to drain."""
        serving = [w for w in self.workers.values() if w.state == SERVING]
        if not serving:
            return None
        snaps = live_snapshots(self.snapshot_dir)
        return min(serving, key=lambda w: (snaps.get(w.wid, {}).get("server", {}).get("connections", 0), -w.wid))

    async def _spawn_one(self) -> None:
        try:
            w = await self.start_worker()
        except Exception as exc:  # a worker that cannot start now: retry later, backing off
            self.next_spawn_s = time.monotonic() + self.spawn_backoff_s
            _log(f"starting a worker failed: {exc}; retrying in {self.spawn_backoff_s:g} s")
            self.spawn_backoff_s = min(self.spawn_backoff_s * 2, MAX_SPAWN_BACKOFF_S)
        else:
            self.spawn_backoff_s = 1.0
            _log(f"worker {w.proc.pid} serving ({self.count(SERVING)} serving, {self.desired} desired)")
        finally:
            self.spawning = None

    async def control(self, stop: asyncio.Event) -> None:
        interval_s = self.opts.autoscale.interval_s if self.opts.autoscale else FIXED_INTERVAL_S
        while not stop.is_set():
            await asyncio.sleep(interval_s)
            if stop.is_set():
                return
            self.reap()
            # One change at a time: while a worker starts or drains, the measurements describe neither the
            # old count nor the new one (HPA likewise leaves unready pods out of its decisions).
            if self.policy is not None and self.spawning is None and self.count(STARTING, RETIRING) == 0:
                self.measure()
            self.reconcile()

    async def stop_all(self, grace_period_s: float) -> list[int]:
        if self.spawning is not None:
            self.spawning.cancel()
        loop = asyncio.get_running_loop()
        for w in self.workers.values():
            if w.proc.poll() is None:
                w.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_period_s + 10
        codes = []
        for w in list(self.workers.values()):
            left = max(0.1, deadline - time.monotonic())
            try:
                code = await loop.run_in_executor(None, w.proc.wait, left)
            except subprocess.TimeoutExpired:
                w.proc.kill()
                code = w.proc.wait()
            if w.state == STARTING and code == -signal.SIGTERM:
                # A worker still starting (an autoscale step in progress) had not installed its signal handlers
                # and ends by this SIGTERM: it never served, so it had nothing to drain. Not a failed stop.
                code = 0
            codes.append(code)
        return codes


def _log(message: str) -> None:
    print(f"fastml serve: {message}", file=sys.stderr, flush=True)


async def _supervise(opts: ServeOptions) -> int:
    from fastml.server.app import Server
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
    # Before the first worker starts: a SIGTERM while they load must stop them too (the default action would
    # end this process alone and leave a worker that already serves running, orphaned, on the port).
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        # All at once: each worker's start is mostly its own model loading, on its own core.
        starting = asyncio.gather(*(sup.start_worker() for _ in range(sup.desired)), return_exceptions=True)
        stopping = loop.create_task(stop.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not starting.done():  # stopped while starting: the workers stop as they would once serving
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)  # the starts still waiting end here
            codes = await sup.stop_all(opts.grace_period_s)
            reserve.close()
            shutil.rmtree(snapshot_dir, ignore_errors=True)
            print(f"fastml serve: stopped while starting (worker exit codes {codes})", flush=True)
            return 0 if all(c == 0 for c in codes) else 1
        failed = [r for r in starting.result() if isinstance(r, BaseException)]
        if failed:
            raise failed[0]
    except BaseException:
        for w in sup.workers.values():
            w.proc.terminate()
        for w in sup.workers.values():
            w.proc.wait()
        reserve.close()
        shutil.rmtree(snapshot_dir, ignore_errors=True)
        raise
    metrics = Server(None, opts.host, None, opts.metrics_port, snapshot_fn=sup.snapshot)
    await metrics.start()
    names = []
    for t in opts.targets:
        for name, sources in scan_target(t).items():
            names += [f"{name}:{s.version}" for s in sources]
    a = opts.autoscale
    workers = f"{sup.desired} (auto {a.min_workers}-{a.max_workers})" if a else opts.workers
    line = _startup_line(opts.host, port, ", ".join(names), metrics.metrics_port, workers, opts.tls_cert is not None)
    print(line, flush=True)
    if opts.grpc_port is not None:
        print(f"fastml serve: grpc {opts.host}:{opts.grpc_port}", flush=True)
    if opts.binary_port is not None:
        print(f"fastml serve: binary {opts.host}:{opts.binary_port}", flush=True)

    controller = loop.create_task(sup.control(stop))
    await stop.wait()
    controller.cancel()
    codes = await sup.stop_all(opts.grace_period_s)
    await metrics.drain(0)
    reserve.close()
    shutil.rmtree(snapshot_dir, ignore_errors=True)
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
        return uvloop.run(_worker(opts, Path(argv[1]), int(argv[2])))
    except FastMLError as exc:
        print(_FAILED + json.dumps({"kind": type(exc).__name__, "message": str(exc)}), flush=True)
        return 2 if isinstance(exc, (InvalidInput, NotFound)) else 1


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
