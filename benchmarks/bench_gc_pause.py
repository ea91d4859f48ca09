"""A full garbage collection in a started server process, with and without start-up's heap frozen.

    python benchmarks/bench_gc_pause.py [--quick] [--json PATH]

`fastml serve` freezes what its start-up made (``gc.freeze`` after the server started: imports, ONNX Runtime
sessions, the server's objects) so that a full collection while serving walks only what serving made. A full
collection stops the event loop for as long as it takes, and the admission gate cannot tell that pause from a
queue that stopped moving. This script starts the server in this process the way ``fastml serve`` does (the
reference MLP and GBT, HTTP, gRPC and binary listeners on loopback), then times full collections (``gc.collect()``)
on the heap as start-up left it and again after the server's own freeze (``fastml.server.workers``). Medians of
the repeats; the two sides run in the same process, one after the other.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import models  # noqa: E402 - the benchmarks folder is not a package
from benchjson import Report, add_arguments, time_row  # noqa: E402
from envinfo import machine_lines  # noqa: E402


def full_collections_ms(repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        gc.collect()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


async def measure(repeats: int) -> tuple[int, float, float]:
    """(objects the collector tracks once started, full collection ms before the freeze, and after)."""
    from fastml.server import workers
    from fastml.server.app import Server
    from fastml.serving import ModelManager

    paths = models.ensure()
    manager = ModelManager([str(paths["mlp"]), str(paths["gbt"])])
    manager.load_all()
    server = Server(manager, "127.0.0.1", 0, None, grpc_port=0, binary_port=0)
    await server.start()
    try:
        tracked = len(gc.get_objects())
        before_ms = full_collections_ms(repeats)
        workers._freeze_startup_heap()
        after_ms = full_collections_ms(repeats)
    finally:
        gc.unfreeze()
        await server.drain(1.0)
        manager.close()
    return tracked, before_ms, after_ms


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args()
    import uvloop

    repeats = 5 if args.quick else 21
    tracked, before_ms, after_ms = uvloop.run(measure(repeats))
    print("\n".join(machine_lines()))
    print(f"objects tracked by the collector once the server started: {tracked:,}")
    report = Report("bench_gc_pause", quick=args.quick)
    # A pause at least 10x shorter: the frozen heap is most of the process (target 10x; the quick gate fails at 5x).
    report.add(
        time_row("full collection in a started server", "heap not frozen", before_ms, after_ms, "ms", target=10.0)
    )
    report.write(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
