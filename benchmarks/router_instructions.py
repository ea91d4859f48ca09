"""Instructions per request through the HTTP data path: the model alone, two models split 90/10 by the client,
a 100/0 and a 90/10 deployment.

    python benchmarks/router_instructions.py [--requests N]

A count that does not move with the machine's load, beside bench_router.py's HTTP rows, which on a shared
2-core machine move by up to 30 % between runs. The server's HTTP protocol objects, data plane, deployments and
engine run in this process on fake transports (16 connections, closed loop: each answer sends that connection's
next request on the loop's next turn), under valgrind's callgrind, which counts the instructions each phase
executes (``callgrind_control`` zeroes the counters before a phase and dumps them after it). Sockets are left
out: they cost every side the same per request. The deployments are bench_router.py's: two registry versions
of the MLP, split 90/10 and 100/0. Needs valgrind; takes a few minutes (callgrind runs ~50x slower).

The protocol is the server's (the native HTTP intake where it is built). Read the counts as work, not time: the
server pays more per instruction for code that runs once per loop pass after the pass's socket and parsing work
has evicted it from the CPU's caches (a split's second ONNX Runtime call, the deployment's Python per request;
bench_router.py's docstring has the numbers), which a count cannot show.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import envinfo  # noqa: E402 - the benchmarks folder is not a package

CONNECTIONS = 16
# (callgrind dump tag, model or deployment called, label). "pair" sends each request to one of two models served
# side by side, 90/10 by a seeded draw in the client, with no deployment: what any split between two models pays
# (a second ONNX Runtime call per pass, each model's own books) before routing costs anything.
PHASES = (
    ("alone", "mlp", "model alone"),
    ("pair", ("mlp", "mlp2"), "two models, 90/10 by the client"),
    ("single", "one", "100/0 deployment"),
    ("split", "ab", "90/10 deployment"),
)
PAIR_SHARE = 0.9
DEPLOYMENTS = (
    "[deployments.ab]\n"
    '[[deployments.ab.variants]]\nname = "a"\nmodel = "ref:1.0.0"\nweight_bp = 9000\n'
    '[[deployments.ab.variants]]\nname = "b"\nmodel = "ref:2.0.0"\nweight_bp = 1000\n'
    "[deployments.one]\n"
    '[[deployments.one.variants]]\nname = "a"\nmodel = "ref:1.0.0"\nweight_bp = 10000\n'
    '[[deployments.one.variants]]\nname = "b"\nmodel = "ref:2.0.0"\nweight_bp = 0\n'
)


class _Transport:
    """What the protocol writes to: each write is one complete answer (requests are never pipelined here)."""

    def __init__(self, loop, client):
        self.loop = loop
        self.client = client

    def write(self, data) -> None:
        # The next request arrives on a later loop turn, as it would from a socket.
        self.loop.call_soon(self.client.answered)

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, *args, **kwargs):
        return None

    def is_closing(self) -> bool:
        return False


class _Client:
    """One closed-loop connection: sends its request again whenever the previous one was answered."""

    def __init__(self, phase: dict, wire, rng=None):
        self.phase = phase
        self.wire = wire  # one request's bytes, or two (sent PAIR_SHARE / 1 - PAIR_SHARE by ``rng``)
        self.rng = rng
        self.conn = None

    def next_wire(self) -> bytes:
        if self.rng is None:
            return self.wire
        return self.wire[0] if self.rng.random() < PAIR_SHARE else self.wire[1]

    def answered(self) -> None:
        phase = self.phase
        phase["done"] += 1
        if phase["done"] >= phase["target"]:
            if not phase["finished"].done():
                phase["finished"].set_result(None)
            return
        self.conn.data_received(self.next_wire())


def _callgrind(command: str, tag: str | None = None) -> None:
    args = ["callgrind_control", command] + ([tag] if tag else []) + [str(os.getpid())]
    subprocess.run(args, capture_output=True, check=False)


async def _phases(home: Path, requests: int) -> None:
    import models as reference_models
    from fastml.loadtest.protocol import build_infer_request
    from fastml.registry import Registry
    from fastml.server.app import Server
    from fastml.serving.deployments import DeploymentManager
    from fastml.serving.manager import ModelManager

    mlp = Path(reference_models.ensure()["mlp"])
    repo = home / "repo"
    for name in ("mlp", "mlp2"):
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "1" / "model.onnx").write_bytes(mlp.read_bytes())
    with Registry() as reg:
        reg.register("ref", mlp, version="1.0.0")
        reg.register("ref", mlp, version="2.0.0")
    manager = ModelManager([str(repo)], overrides={"runner": "loop"})
    manager.load_all()
    server = Server(manager, http_port=0, metrics_port=None)  # its listeners are never started
    deployments = DeploymentManager(manager, poll_interval_s=3600)
    server.plane.deployments = deployments
    await deployments.apply_text(DEPLOYMENTS)
    loop = asyncio.get_running_loop()
    x = np.random.default_rng(0).random((1, 32), dtype=np.float32)

    async def run(model, n: int, tag: str | None) -> None:
        phase = {"done": 0, "target": n, "finished": loop.create_future()}
        if isinstance(model, tuple):
            wires = tuple(build_infer_request(m, {"input": x}).wire for m in model)
            clients = [_Client(phase, wires, random.Random(i)) for i in range(CONNECTIONS)]
        else:
            wire = build_infer_request(model, {"input": x}).wire
            clients = [_Client(phase, wire) for _ in range(CONNECTIONS)]
        for c in clients:
            c.conn = server.protocol(server)
            c.conn.connection_made(_Transport(loop, c))
        if tag:
            _callgrind("-z")
        for c in clients:
            c.conn.data_received(c.next_wire())
        await phase["finished"]
        if tag:
            _callgrind("-d", tag)
        for c in clients:
            c.conn.connection_lost(None)
        await asyncio.sleep(0.01)  # answers still in flight settle before the next phase

    for _, model, _ in PHASES:  # warm-up: plans cached, batch sizes seen, first-call costs paid
        await run(model, 500, None)
    for tag, model, _ in PHASES:
        await run(model, requests, tag)


def _child(requests: int) -> int:
    import uvloop

    with tempfile.TemporaryDirectory(prefix="router_instructions_") as tmp:
        home = Path(tmp)
        os.environ["FASTML_HOME"] = str(home)
        from fastml.config import reset_settings

        reset_settings()  # the registry and the deployments read FASTML_HOME from the settings
        uvloop.run(_phases(home, requests))
    return 0


def _counts(out_dir: Path) -> dict[str, int]:
    """Instructions per dumped phase, from callgrind's dump files (``desc: Trigger: dump <tag>``)."""
    counts = {}
    for f in out_dir.glob("cg.*.*"):
        text = f.read_text(errors="replace")
        tag = re.search(r"^desc: Trigger: dump (.+)$", text, re.M)
        total = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
        if tag and total:
            counts[tag.group(1).strip()] = int(total.group(1))
    return counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=1500, help="requests counted per phase (default 1500)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return _child(args.requests)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("router_instructions.py needs valgrind (callgrind and callgrind_control)", file=sys.stderr)
        return 2
    print("# router_instructions.py")
    print("\n".join(envinfo.machine_lines()))
    with tempfile.TemporaryDirectory(prefix="router_cg_") as tmp:
        out_dir = Path(tmp)
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_dir}/cg.%p"]
        cmd += [sys.executable, __file__, "--child", "--requests", str(args.requests)]
        t0 = time.monotonic()
        run = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if run.returncode != 0:
            print(run.stderr[-4000:], file=sys.stderr)
            return 1
        counts = _counts(out_dir)
    missing = [label for tag, _, label in PHASES if tag not in counts]
    if missing:
        print(f"no callgrind dump for {missing} (callgrind_control could not reach the process?)", file=sys.stderr)
        return 1
    per_request = {tag: counts[tag] / args.requests for tag, _, _ in PHASES}
    alone = per_request["alone"]
    print(
        f"\ninstructions per request, {args.requests:,} requests a phase, {CONNECTIONS} connections, "
        f"in-process HTTP path (run took {time.monotonic() - t0:.0f} s under callgrind):"
    )
    for tag, _, label in PHASES:
        v = per_request[tag]
        print(f"  {label:<17} {v:10,.0f}   model alone / this: {alone / v:.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
