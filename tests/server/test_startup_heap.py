"""A served process leaves what its start-up made out of the cyclic collector's scans (gc.freeze)."""

from __future__ import annotations

import asyncio
import gc

import uvloop

from fastml.server import workers
from fastml.server.app import Server


def test_serve_freezes_what_start_up_made_and_collects_what_serving_makes(onnx_models, monkeypatch):
    seen: dict = {}
    started = []
    start = Server.start

    async def start_and_keep(self):
        started.append(self)
        return await start(self)

    async def instead_of_a_signal() -> None:
        tracked = {id(o) for o in gc.get_objects()}
        seen["frozen"] = gc.get_freeze_count()
        seen["server_scanned"] = [id(s) in tracked for s in started]
        made_now = [[]]  # a container made while serving: scanned as before
        seen["new_scanned"] = id(made_now) in {id(o) for o in gc.get_objects()}
        await asyncio.sleep(0)

    monkeypatch.setattr(Server, "start", start_and_keep)
    monkeypatch.setattr(workers, "_wait_for_signal", instead_of_a_signal)
    opts = workers.ServeOptions([str(onnx_models["mlp"])], http_port=0, metrics_port=None)
    try:
        assert uvloop.run(workers._single(opts)) == 0
    finally:
        gc.unfreeze()
    assert seen["frozen"] > 10_000  # imports, the model's session wrapper, the server
    assert seen["server_scanned"] == [False]
    assert seen["new_scanned"] is True
