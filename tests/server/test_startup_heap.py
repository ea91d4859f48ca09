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

    async def instead_of_a_signal(stop) -> None:
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


def test_a_model_unloaded_after_the_freeze_is_freed(onnx_models, tmp_path):
    """Frozen objects are never collected: a model loaded at start-up must not be kept by a reference cycle once
    it is unloaded, or its ONNX Runtime session would stay in memory for good."""
    import json
    import shutil
    import urllib.request
    import weakref

    import numpy as np

    from fastml.client import AsyncClient
    from fastml.serving import ModelManager

    (tmp_path / "repo" / "mlp" / "1").mkdir(parents=True)
    shutil.copy(onnx_models["mlp"], tmp_path / "repo" / "mlp" / "1" / "model.onnx")
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32", "data": [0.5] * 32}]})

    async def scenario() -> tuple[bool, bool]:
        manager = ModelManager([str(tmp_path / "repo")])
        manager.load_all()
        server = Server(manager, "127.0.0.1", 0, None, binary_port=0)
        await server.start()
        workers._freeze_startup_heap()
        try:
            url = f"http://127.0.0.1:{server.http_port}/v2/models/mlp/infer"

            def http() -> int:
                req = urllib.request.Request(url, data=body.encode(), method="POST")
                with urllib.request.urlopen(req, timeout=30) as r:
                    return r.status

            assert await asyncio.get_running_loop().run_in_executor(None, http) == 200
            async with AsyncClient(f"127.0.0.1:{server.binary_port}") as client:
                out = await client.infer("mlp", {"input": np.full((1, 32), 0.5, np.float32)})
                assert out["probabilities"].shape == (1, 2)
            model = manager.get("mlp").model
            model_ref, session_ref = weakref.ref(model), weakref.ref(model._session)
            del model
            await manager.unload("mlp")
            # An executor thread that ran close() lets go of its work item a moment after the await returns.
            for _ in range(500):
                gc.collect()
                if model_ref() is None and session_ref() is None:
                    break
                await asyncio.sleep(0.01)
            return model_ref() is None, session_ref() is None
        finally:
            gc.unfreeze()
            await server.drain(1.0)
            manager.close()

    assert uvloop.run(scenario()) == (True, True)


def test_a_sigterm_as_soon_as_the_server_started_drains_it(onnx_models, tmp_path):
    """SIGTERM sent the moment the server has started (a caller reading the startup line, then stopping it) drains
    it and exits 0: the handler used to be installed after the startup line, and such a signal killed it (-15)."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        f"""
        import os, signal, sys
        import uvloop
        from fastml.server import workers
        from fastml.server.app import Server

        start = Server.start

        async def start_then_signalled(self):
            await start(self)
            os.kill(os.getpid(), signal.SIGTERM)  # before the startup line is printed

        Server.start = start_then_signalled
        opts = workers.ServeOptions([{str(onnx_models["mlp"])!r}], http_port=0, metrics_port=None)
        sys.exit(uvloop.run(workers._single(opts)))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "fastml serve: stopped (drained)" in proc.stdout
