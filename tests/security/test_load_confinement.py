"""Loads are confined: a model name is one validated component from a served repository, never a path; every
override is bounded before anything is built; a failed load releases what it created."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading

import pytest
from served import TOKEN, Served

from fastml.errors import InvalidInput, NotFound
from fastml.serving import ModelManager
from fastml.serving.load_limits import LOAD_BOUNDS, check_override, validate_model_name

TRAVERSALS = [
    "../outside",
    "..",
    "a/../../outside",
    "/tmp/outside",
    "sub/model",
    ".hidden",
    "a..b",
    "x" * 129,
    "",
    "bad name",
    "nul\x00",
]


def _started_since(before: set) -> list[str]:
    """Threads alive now that were not alive at ``before``: a count would also move when a thread left over by an
    earlier test ends meanwhile."""
    return sorted(t.name for t in set(threading.enumerate()) - before)


@pytest.fixture()
def layout(sec_repo, tmp_path):
    """A served repository and, next to it, a model directory outside it that a traversal would reach."""
    repo = tmp_path / "repo"
    shutil.copytree(sec_repo / "mlp", repo / "mlp")
    outside = tmp_path / "outside"
    shutil.copytree(sec_repo / "gbt", outside)
    (tmp_path / "empty_dir").mkdir()
    return repo, outside


def test_names_are_validated():
    for good in ("mlp", "fraud-v2", "a.b_c", "9lives"):
        assert validate_model_name(good) == good
    for bad in TRAVERSALS + [None, 3]:
        with pytest.raises(InvalidInput, match="never a path"):
            validate_model_name(bad)


def test_traversal_loads_nothing(layout):
    repo, outside = layout
    manager = ModelManager([str(repo)])
    manager.load_all()

    async def attempt(name):
        with pytest.raises(InvalidInput):
            await manager.load(name)

    for name in ["../outside", str(outside), "../" * 6 + str(outside).lstrip("/")]:
        asyncio.run(attempt(name))
    assert sorted(manager.models) == ["mlp"]
    assert manager.failed == {}  # a refused name is not even recorded
    manager.close()


def test_not_found_does_not_reveal_paths(layout):
    repo, _ = layout
    (repo / "emptymodel").mkdir()  # exists, but holds no version
    manager = ModelManager([str(repo)])
    manager.load_all()
    messages = []
    for name in ("emptymodel", "nosuchmodel"):
        with pytest.raises(NotFound) as e:
            asyncio.run(manager.load(name))
        messages.append(str(e.value).replace(name, "NAME"))
    assert messages[0] == messages[1]
    assert str(repo) not in messages[0]
    manager.close()


def test_overrides_are_bounded_before_anything_is_built(layout):
    repo, _ = layout
    manager = ModelManager([str(repo)])
    manager.load_all()
    before = manager.latest["mlp"]
    threads_before = set(threading.enumerate())
    bad = [
        ({"max_batch_size": 5_000_000}, "max_batch_size must be between 1 and 4096"),
        ({"instance_group": [{"count": 300}]}, "instances must be between 1 and 64"),
        ({"dynamic_batching": {"max_queue_delay_microseconds": 2**63}}, "max_queue_delay_us must be between"),
        ({"max_batch_size": "many"}, "max_batch_size must be an integer"),
        ({"max_batch_size": 1.5}, "must be an integer"),
        ({"instance_group": [{"count": True}]}, "must be an integer"),
    ]
    for cfg, message in bad:
        with pytest.raises(InvalidInput, match=message):
            asyncio.run(manager.load("mlp", json.dumps(cfg)))
    with pytest.raises(InvalidInput, match="not valid JSON"):
        asyncio.run(manager.load("mlp", "[" * 100_000))
    assert manager.latest["mlp"] is before  # nothing swapped
    assert _started_since(threads_before) == []
    assert check_override("instances", 64) == 64
    assert set(LOAD_BOUNDS) >= {"max_batch_size", "instances", "max_queue_delay_us", "max_queue_size"}
    manager.close()


def test_failed_load_releases_threads_and_a_good_load_follows(layout):
    repo, _ = layout
    # Version 1 loads (with 8 runner threads), version 2 is not a model: the load fails part-way.
    (repo / "mlp" / "config.toml").write_text('version_policy = "all"\ninstances = 8\nrunner = "threads"\n')
    manager = ModelManager([str(repo)])
    manager.load_all()
    good = (repo / "mlp" / "1" / "model.onnx").read_bytes()
    (repo / "mlp" / "2").mkdir()
    (repo / "mlp" / "2" / "model.onnx").write_bytes(b"not an onnx model")
    threads_before = set(threading.enumerate())
    with pytest.raises(Exception):  # noqa: B017 - the engine's load error; what matters is what is left behind
        asyncio.run(manager.load("mlp"))
    assert _started_since(threads_before) == []
    assert sorted(manager.models["mlp"]) == ["1"]  # still serving the old version
    (repo / "mlp" / "2" / "model.onnx").write_bytes(good)
    asyncio.run(manager.load("mlp"))
    assert sorted(manager.models["mlp"]) == ["1", "2"]
    manager.close()


def test_http_load_of_a_path_is_refused(sec_repo, tmp_path):
    srv = Served(
        [str(sec_repo), "--http-port", "0", "--metrics-port", "0"], tmp_path / "home", env={"FASTML_ADMIN_TOKEN": TOKEN}
    )
    try:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        for quoted in ("..%2Fgbt", "%2Ftmp%2Fx", "a%2F..%2F..%2Fetc"):
            status, payload, _ = srv.call("POST", f"/v2/repository/models/{quoted}/load", {}, auth)
            assert status == 400 and "never a path" in payload["error"], (quoted, status, payload)
        status, payload, _ = srv.call(
            "POST",
            "/v2/repository/models/mlp/load",
            {"parameters": {"config": json.dumps({"max_batch_size": 5_000_000})}},
            auth,
        )
        assert status == 400 and "max_batch_size must be between 1 and 4096" in payload["error"]
        index = srv.call("POST", "/v2/repository/index", {})[1]
        assert sorted(m["name"] for m in index) == ["gbt", "mlp"]
    finally:
        assert srv.stop() == 0
