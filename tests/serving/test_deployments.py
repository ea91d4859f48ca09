"""Deployments in process: the data plane routes a deployment's requests through the native router."""

from __future__ import annotations

import asyncio
import gc
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from fastml.errors import Conflict, InvalidInput, NotFound
from fastml.serving import deployment_config as dconf
from fastml.serving.dataplane import DataPlane, InferRequest
from fastml.serving.deployments import DeploymentManager, read_status
from fastml.serving.manager import ModelManager
from fastml.serving.router_reference import ReferenceRouter

AB = """
[deployments.fraud]
[[deployments.fraud.variants]]
name = "incumbent"
model = "fraud:1.0.0"
weight_bp = 9000
[[deployments.fraud.variants]]
name = "candidate"
model = "fraud:2.0.0"
weight_bp = 1000
"""

SHADOW = """
[deployments.shadowed]
[[deployments.shadowed.variants]]
name = "main"
model = "fraud:1.0.0"
weight_bp = 10000
[[deployments.shadowed.shadows]]
name = "mirror"
model = "fraud:2.0.0"
share_bp = 10000
"""


def make_odd_model(path: Path) -> None:
    """A model with another signature (input ``x`` FP32 [-1, 4])."""
    import onnx
    from onnx import TensorProto as T
    from onnx import helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "odd",
        [helper.make_tensor_value_info("x", T.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", T.FLOAT, [None, 4])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


@pytest.fixture
def registry(onnx_models, tmp_path):
    from fastml.registry import Registry

    reg = Registry()
    reg.register("fraud", onnx_models["mlp"], version="1.0.0")
    reg.register("fraud", onnx_models["gbt"], version="2.0.0")
    make_odd_model(tmp_path / "odd.onnx")
    reg.register("odd", tmp_path / "odd.onnx", version="1.0.0")
    reg.set_alias("fraud", "champion", "1.0.0")
    yield reg
    reg.close()


@pytest.fixture
def x(onnx_models):
    return np.load(onnx_models["data"])[:3]


@pytest.fixture
def direct(onnx_models, x):
    """Each model's own answer, for comparing with what a deployment returned."""
    import onnxruntime as ort

    out = {}
    for key, version in (("mlp", "1.0.0"), ("gbt", "2.0.0")):
        sess = ort.InferenceSession(str(onnx_models[key]), providers=["CPUExecutionProvider"])
        out[version] = sess.run(["probabilities"], {"input": x})[0]
    return out


def run(coro_fn, *args):
    """Run ``coro_fn(plane, dm, *args)`` with a DataPlane + DeploymentManager on a fresh event loop."""

    async def main():
        manager = ModelManager([])
        plane = DataPlane(manager)
        dm = DeploymentManager(manager, poll_interval_s=3600)
        plane.deployments = dm
        try:
            return await coro_fn(plane, dm, *args)
        finally:
            await dm.stop()

    return asyncio.run(main())


def req(name, x, **params):
    return InferRequest(name, {"input": x}, outputs=["probabilities"], parameters=params)


# ----- the file ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,match",
    [
        (AB.replace("9000", "8999"), r"deployments\.fraud\.variants: weight_bp values sum to 9999, not 10000"),
        (AB.replace("weight_bp = 1000", "weight_bp = -5"), r"variants\[1\]\.weight_bp: -5 is outside"),
        (AB.replace('name = "candidate"', 'name = "incumbent"'), r"variants\[1\]\.name: 'incumbent' is used twice"),
        (AB + "[deployments.fraud.extra]\n", r"deployments\.fraud.*extra"),
        (AB.replace("weight_bp = 1000", 'weight_bp = "lots"'), r"weight_bp"),
        ("[deployments.fraud\nname=", r"not valid TOML"),
        (
            SHADOW.replace('model = "fraud:2.0.0"', 'model = "fraud:1.0.0"'),
            r"shadows\[0\]\.model: .*mirror a variant onto itself",
        ),
        (
            AB.replace("[deployments.fraud]", "[deployments.fraud]\nvariants = []").split("[[")[0],
            r"variants: at least one",
        ),
    ],
)
def test_bad_files_are_refused_naming_the_field(text, match):
    with pytest.raises(InvalidInput, match=match):
        dconf.parse(text, "d.toml")


def test_dump_reads_back():
    specs = dconf.parse(AB + SHADOW)
    assert dconf.parse(dconf.dump(specs)) == specs


# ----- routing through the data plane -----------------------------------------------------------------


def test_sticky_90_10_split_answers_from_the_routed_variant(registry, x, direct):
    async def scenario(plane, dm):
        await dm.apply_text(AB)
        reference = ReferenceRouter(["incumbent", "candidate"], [9000, 1000])
        seen = {}
        for i in range(300):
            key = f"user-{i}"
            resp = await plane.infer(req("fraud", x, routing_key=key))
            variant = resp.parameters["variant"]
            assert variant == reference.variants[reference.route(key)[0]]
            assert resp.model_name == "fraud"
            assert resp.model_version == ("1.0.0" if variant == "incumbent" else "2.0.0")
            np.testing.assert_allclose(resp.outputs["probabilities"], direct[resp.model_version], rtol=1e-5)
            seen[key] = variant
        # Sticky: the same users come back to the same variants.
        for key, variant in list(seen.items())[:100]:
            assert (await plane.infer(req("fraud", x, routing_key=key))).parameters["variant"] == variant
        stats = dm.variant_stats("fraud")
        assert stats["incumbent"]["routed"] + stats["candidate"]["routed"] == 400
        assert stats["candidate"]["requests"] == stats["candidate"]["routed"] > 0
        assert stats["incumbent"]["latency"]["p99_us"] > 0
        return seen

    seen = run(scenario)
    assert 0.8 < sum(v == "incumbent" for v in seen.values()) / len(seen) < 0.97


def test_integer_routing_keys_hash_their_decimal_text(registry, x):
    async def scenario(plane, dm):
        await dm.apply_text(AB)
        a = (await plane.infer(req("fraud", x, routing_key=12345))).parameters["variant"]
        b = (await plane.infer(req("fraud", x, routing_key="12345"))).parameters["variant"]
        assert a == b
        with pytest.raises(InvalidInput, match="routing_key"):
            plane.submit(req("fraud", x, routing_key=[1]))

    run(scenario)


def test_variant_parameter_pins_one(registry, x, direct):
    async def scenario(plane, dm):
        await dm.apply_text(AB)
        for _ in range(5):
            resp = await plane.infer(req("fraud", x, variant="candidate"))
            assert resp.parameters["variant"] == "candidate" and resp.model_version == "2.0.0"
            np.testing.assert_allclose(resp.outputs["probabilities"], direct["2.0.0"], rtol=1e-5)
        with pytest.raises(InvalidInput, match="'nope' is not a variant of deployment 'fraud'"):
            plane.submit(req("fraud", x, variant="nope"))
        assert dm.variant_stats("fraud")["candidate"]["pinned"] == 5

    run(scenario)


def test_a_version_asked_of_a_deployment_is_not_found(registry, x):
    # Answers name the variant's version; a version in the URL picked nothing and was ignored (200 from whichever
    # variant the router chose, also for a version no variant has).
    async def scenario(plane, dm):
        await dm.apply_text(AB)
        for version in ("7", "1.0.0", "2.0.0"):
            asked = InferRequest("fraud", {"input": x}, model_version=version, outputs=["probabilities"])
            with pytest.raises(
                NotFound, match=rf"^Request for unknown model: 'fraud' version {version} is not found: "
            ):
                plane.submit(asked)
            with pytest.raises(NotFound, match=r"'fraud' is a deployment, which has no versions of its own"):
                plane.resolve("fraud", version, route=False)
        assert dm.variant_stats("fraud")["incumbent"]["routed"] == 0  # nothing was routed or counted
        resp = await plane.infer(req("fraud", x, variant="candidate"))  # the way to ask for one variant
        assert resp.model_version == "2.0.0"
        assert plane.resolve("fraud", "", route=False) is not None  # no version: the deployment itself

    run(scenario)


def test_set_weights_is_atomic_and_validated(registry, x):
    async def scenario(plane, dm):
        await dm.apply_text(AB)
        dm.set_weights("fraud", {"incumbent": 0, "candidate": 10000})
        for i in range(20):
            assert (await plane.infer(req("fraud", x, routing_key=f"u{i}"))).parameters["variant"] == "candidate"
        with pytest.raises(InvalidInput, match="sum to 9000"):
            dm.set_weights("fraud", {"incumbent": 0, "candidate": 9000})
        with pytest.raises(InvalidInput, match="no weight for variants"):
            dm.set_weights("fraud", {"candidate": 10000})
        with pytest.raises(NotFound):
            dm.set_weights("nope", {})
        # Fractions are refused, not truncated: -0.5 used to pass as 0 and 10000.5 as 10000.
        with pytest.raises(InvalidInput, match=r"weights_bp\['incumbent'\]: basis points must be a whole number"):
            dm.set_weights("fraud", {"incumbent": -0.5, "candidate": 10000.5})
        with pytest.raises(InvalidInput, match="whole number, got True"):
            dm.set_weights("fraud", {"incumbent": True, "candidate": 9999})
        assert dm.variant_stats("fraud")["candidate"]["weight_bp"] == 10000
        dm.set_weights("fraud", {"incumbent": 2500.0, "candidate": np.int64(7500)})  # whole numbers of any type
        assert dm.variant_stats("fraud")["candidate"]["weight_bp"] == 7500

    run(scenario)


def test_shadow_never_changes_the_response_and_is_counted(registry, x, direct):
    async def scenario(plane, dm):
        await dm.apply_text(SHADOW)
        for i in range(10):
            resp = await plane.infer(req("shadowed", x, routing_key=f"u{i}"))
            assert resp.parameters["variant"] == "main" and resp.model_version == "1.0.0"
            np.testing.assert_allclose(resp.outputs["probabilities"], direct["1.0.0"], rtol=1e-5)
        assert dm.shadows.wait_idle(30.0)  # the copies run on the shadow runner's thread
        s = dm.variant_stats("shadowed")["mirror"]
        assert s["mirrored"] == 10 and s["requests"] + s["shed"] == 10 and s["errors"] == 0
        assert s["requests"] > 0

    run(scenario)


def test_shadow_is_shed_first_under_load(registry, x, direct):
    async def scenario(plane, dm):
        dm.manager.overrides = {"max_queue_size": 64}
        await dm.apply_text(SHADOW)
        # 40 requests enqueued in one go: the primary's queue passes a quarter full, so later copies are shed.
        # The collector stays off meanwhile: in a test process that has imported TensorFlow and torch, a full
        # collection pauses this loop for half a second, and the admission gate would rightly refuse requests
        # queued behind a pause that long (tests/security/test_overload.py tests that rule).
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            futs = [plane.submit(req("shadowed", x)) for _ in range(40)]
        finally:
            if was_enabled:
                gc.enable()
        answers = await asyncio.gather(*futs)
        for resp in answers:
            np.testing.assert_allclose(resp.outputs["probabilities"], direct["1.0.0"], rtol=1e-5)
        assert dm.shadows.wait_idle(30.0)
        s = dm.variant_stats("shadowed")
        assert s["main"]["requests"] == 40 and s["main"]["errors"] == 0
        assert s["mirror"]["shed"] >= 24
        assert s["mirror"]["mirrored"] == 40
        assert s["mirror"]["requests"] + s["mirror"]["shed"] == 40

    run(scenario)


def test_shadow_answers_reach_the_prediction_log_in_groups(registry, x, direct, tmp_path):
    """With a PredictionLogger (which has log_many), the runner logs a group's answers in one call: each copy's
    rows, request id, variant and the shadow model's own outputs."""
    from fastml.monitoring import PredictionLogger
    from fastml.monitoring.log import read_log

    async def scenario(plane, dm):
        await dm.apply_text(SHADOW)
        shadow_model = dm.table["shadowed"].shadows[0].current(dm.manager).model
        logger = PredictionLogger(tmp_path / "log")
        shadow_model.prediction_logger = logger
        try:
            futs = [plane.submit(InferRequest("shadowed", {"input": x}, id=f"req-{i}")) for i in range(5)]
            await asyncio.gather(*futs)
            assert dm.shadows.wait_idle(30.0)
            assert logger.flush()
        finally:
            shadow_model.prediction_logger = None
            logger.close()
        return dm.variant_stats("shadowed")["mirror"]

    stats = run(scenario)
    t = read_log(tmp_path / "log")
    assert t.num_rows == 5 * len(x) == stats["requests"] * len(x)
    assert sorted(set(t["request_id"].to_pylist())) == [f"req-{i}" for i in range(5)]
    assert set(t["variant"].to_pylist()) == {"mirror"} and set(t["version"].to_pylist()) == {"2.0.0"}
    probs = np.array(t["output.probabilities"].to_pylist(), dtype=np.float32)
    np.testing.assert_allclose(probs, np.tile(direct["2.0.0"], (5, 1)), rtol=1e-5)


def test_a_stuck_shadow_never_holds_up_primary_answers(registry, x, direct):
    """Shadow copies never enter the primary's path: with the shadow runner blocked inside a copy, every
    primary request is still answered; copies past the lane's room are shed (counted), and the ones queued
    meanwhile run once it is released."""

    async def scenario(plane, dm):
        await dm.apply_text(SHADOW)
        dm.shadows.lane_max = 5
        dm.shadows.max_wait_ns = 600 * 10**9  # however slow this machine is, queued copies are not shed as stale
        model = dm.table["shadowed"].shadows[0].current(dm.manager).model
        entered, release = threading.Event(), threading.Event()
        run_batch = model.run_batch

        def stuck(arrays):
            entered.set()
            release.wait(30.0)
            return run_batch(arrays)

        model.run_batch = stuck
        try:
            first = await plane.infer(req("shadowed", x, routing_key="first"))
            assert first.parameters["variant"] == "main"
            assert await asyncio.get_running_loop().run_in_executor(None, entered.wait, 30.0)
            for i in range(20):  # the runner is stuck in the first copy; primary answers keep coming
                resp = await plane.infer(req("shadowed", x, routing_key=f"u{i}"))
                np.testing.assert_allclose(resp.outputs["probabilities"], direct["1.0.0"], rtol=1e-5)
            assert dm.shadows.waiting == 5
        finally:
            release.set()
        assert dm.shadows.wait_idle(30.0)
        s = dm.variant_stats("shadowed")["mirror"]
        assert s["mirrored"] == 21 and s["shed"] == 15 and s["requests"] == 6 and s["errors"] == 0

    run(scenario)


class _Recorder:
    """A prediction logger that keeps what it is given."""

    def __init__(self):
        self.calls = []

    def log(self, **kw):
        self.calls.append(kw)


def _policy_of_this_thread() -> tuple[int, int, int]:
    """(native thread id, sched_getscheduler, the policy field of /proc/self/task/<tid>/stat) for this thread."""
    tid = threading.get_native_id()
    # Field 41 of the stat line is the scheduling policy (0 = SCHED_OTHER); fields after ")" start at field 3.
    fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    return tid, os.sched_getscheduler(0), int(fields[41 - 3])


def test_shadow_copies_run_on_the_runner_thread_in_the_normal_class_and_are_logged_not_returned(registry, x, direct):
    """The runner computes in the normal scheduling class (fastml.serving.shadow says why: an idle-class thread
    waiting for the GIL made the event loop wait for it), on its own thread, never the event loop's."""

    async def scenario(plane, dm):
        await dm.apply_text(SHADOW)
        shadow_model = dm.table["shadowed"].shadows[0].current(dm.manager).model
        recorder = _Recorder()
        shadow_model.prediction_logger = recorder
        seen = []
        run_batch = shadow_model.run_batch

        def observed(arrays):  # what the kernel says about the thread running the shadow's inference
            seen.append(_policy_of_this_thread())
            return run_batch(arrays)

        shadow_model.run_batch = observed
        try:
            for i in range(3):
                resp = await plane.infer(InferRequest("shadowed", {"input": x}, id=f"req-{i}"))
                assert resp.parameters["variant"] == "main" and resp.id == f"req-{i}"
                np.testing.assert_allclose(resp.outputs["probabilities"], direct["1.0.0"], rtol=1e-5)
            assert dm.shadows.wait_idle(30.0)
        finally:
            shadow_model.prediction_logger = None
            del shadow_model.run_batch
        assert seen and all(got == (dm.shadows.thread_id, os.SCHED_OTHER, 0) for got in seen), seen
        assert dm.shadows.thread_id != threading.get_native_id()
        assert sorted(c["request_id"] for c in recorder.calls) == ["req-0", "req-1", "req-2"]
        for c in recorder.calls:
            assert c["variant"] == "mirror" and c["model"] == "fraud" and c["version"] == "2.0.0"
            np.testing.assert_allclose(c["outputs"]["probabilities"], direct["2.0.0"], rtol=1e-5)
            np.testing.assert_array_equal(c["inputs"]["input"], x)

    run(scenario)


CANARIES = """
[deployments.fraud]
[[deployments.fraud.variants]]
name = "incumbent"
model = "fraud:1.0.0"
weight_bp = 10000
[[deployments.fraud.variants]]
name = "candidate"
model = "fraud:2.0.0"
weight_bp = 0
[deployments.fraud.canary]
baseline = "incumbent"
candidate = "candidate"
steps_pct = [50, 100]
interval_s = 0.0
interval_requests = 5
min_requests = 5
check_interval_s = 0.005
max_p99_ratio = 1000.0
min_slowdown_ratio = 1000.0

[deployments.risky]
[[deployments.risky.variants]]
name = "incumbent"
model = "fraud:1.0.0"
weight_bp = 10000
[[deployments.risky.variants]]
name = "candidate"
model = "fraud:2.0.0"
weight_bp = 0
[deployments.risky.canary]
baseline = "incumbent"
candidate = "candidate"
steps_pct = [50, 100]
interval_s = 0.0
min_requests = 5
check_interval_s = 0.005
max_p99_ratio = 0.000001
failures_to_rollback = 1
"""


def test_a_canary_table_in_the_file_is_run_by_the_server(registry, x):
    from fastml.server.deployment_metrics import families

    async def scenario(plane, dm):
        await dm.apply_text(CANARIES)
        assert dm.variant_stats("fraud")["candidate"]["weight_bp"] == 5000  # the first step, at once
        for i in range(4000):
            if all(dm.canaries[n].state not in ("running", "pending") for n in ("fraud", "risky")):
                break
            await plane.infer(req("fraud" if i % 2 else "risky", x, routing_key=f"u{i}"))
            await asyncio.sleep(0)
        ok, bad = dm.canaries["fraud"], dm.canaries["risky"]
        assert ok.state == "promoted" and dm.variant_stats("fraud")["candidate"]["weight_bp"] == 10000
        # A candidate slower than a p99 ratio of 1e-6 allows breaches at once: back to the last good split (0).
        assert bad.state == "rolled_back" and "p99" in bad.reason
        assert dm.variant_stats("risky")["candidate"]["weight_bp"] == 0
        text = {}
        for fam in families(dm.metric_rows()):
            for sample in fam.samples:
                text[(sample.name, sample.labels.get("deployment"))] = sample.value
        assert text[("fastml_canary_weight_bp", "fraud")] == 10000
        assert text[("fastml_canary_rollbacks_total", "risky")] == 1
        assert text[("fastml_canary_rollbacks_total", "fraud")] == 0
        assert dm.status()["risky"]["canary"]["state"] == "rolled_back"
        # The persisted form reads back with its canary; a re-apply of the same file keeps the ended canaries.
        assert dconf.parse(dconf.dump(dconf.parse(CANARIES)))["fraud"].canary.steps_pct == [50.0, 100.0]
        await dm.apply_text(CANARIES)
        assert dm.canaries["fraud"] is ok and dm.variant_stats("fraud")["candidate"]["weight_bp"] == 10000

    run(scenario)


def test_a_bad_canary_table_names_the_field():
    with pytest.raises(InvalidInput, match=r"deployments\.fraud\.canary\.candidate: 'ghost' is not a variant"):
        dconf.parse(CANARIES.replace('candidate = "candidate"', 'candidate = "ghost"', 1))
    with pytest.raises(InvalidInput, match=r"deployments\.fraud\.canary\.steps_pct: increasing percentages"):
        dconf.parse(CANARIES.replace("steps_pct = [50, 100]", "steps_pct = [100, 50]", 1))


def test_bad_apply_leaves_the_running_deployment_as_it_was(registry, x):
    async def scenario(plane, dm):
        await dm.apply_text(AB)
        before = dm.table["fraud"]
        with pytest.raises(NotFound, match=r"deployments\.fraud\.variants\[1\]\.model"):
            await dm.apply_text(AB.replace("fraud:2.0.0", "fraud:9.9.9"))
        with pytest.raises(InvalidInput, match=r"variants\[1\]\.model: 'odd:1.0.0' has a different signature"):
            await dm.apply_text(AB.replace("fraud:2.0.0", "odd:1.0.0"))
        with pytest.raises(InvalidInput, match="resolves to the model of variant 'main'"):
            await dm.apply_text(SHADOW.replace('model = "fraud:2.0.0"', 'model = "fraud@champion"'))
        assert dm.table["fraud"] is before
        resp = await plane.infer(req("fraud", x, routing_key="u1"))
        assert resp.parameters["variant"] in ("incumbent", "candidate")
        # Only the two models of the running deployment stay loaded.
        assert sorted(dm._entries) == [("fraud", "1.0.0"), ("fraud", "2.0.0")]

    run(scenario)


def test_a_deployment_cannot_take_a_served_models_name(registry, onnx_models):
    async def scenario(plane, dm, path):
        dm.manager = ModelManager([str(path)])
        dm.manager.load_all()
        plane.manager = dm.manager
        with pytest.raises(Conflict, match="already the name of a served model"):
            await dm.apply_text(AB.replace("deployments.fraud", "deployments.mlp"))
        # A served model can be a variant, by its name.
        await dm.apply_text(AB.replace('"fraud:2.0.0"', '"mlp"'))
        assert dm.variant_stats("fraud")["candidate"]["serving"] == "mlp:1"
        dm.manager.close()

    run(scenario, onnx_models["mlp"])


def test_deployment_follows_its_alias_without_failing_requests(registry, x, direct):
    text = AB.replace("fraud:1.0.0", "fraud@champion").replace("weight_bp = 9000", "weight_bp = 10000")
    text = text.split('[[deployments.fraud.variants]]\nname = "candidate"')[0]

    async def scenario(plane, dm):
        await dm.apply_text(text)
        assert (await plane.infer(req("fraud", x))).model_version == "1.0.0"
        inflight = plane.submit(req("fraud", x))  # submitted before the swap: answered by 1.0.0
        registry.set_alias("fraud", "champion", "2.0.0")
        assert await dm.follow_aliases() == 1
        old = await inflight
        np.testing.assert_allclose(old.outputs["probabilities"], direct["1.0.0"], rtol=1e-5)
        resp = await plane.infer(req("fraud", x))
        assert resp.model_version == "2.0.0"
        np.testing.assert_allclose(resp.outputs["probabilities"], direct["2.0.0"], rtol=1e-5)
        assert await dm.follow_aliases() == 0
        assert sorted(dm._entries) == [("fraud", "2.0.0")]  # the old version was drained and closed

    run(scenario)


def test_a_version_left_by_its_alias_is_freed_though_loaded_before_the_heap_freeze(registry, x):
    """`fastml serve` freezes its start-up heap (gc.freeze), and frozen objects are never collected: the version an
    alias leaves must be freed by reference counting alone, its ONNX Runtime session with it."""
    import weakref

    text = AB.replace("fraud:1.0.0", "fraud@champion").replace("weight_bp = 9000", "weight_bp = 10000")
    text = text.split('[[deployments.fraud.variants]]\nname = "candidate"')[0]

    async def scenario(plane, dm):
        await dm.apply_text(text)
        await plane.infer(req("fraud", x))
        await plane.infer(req("fraud", x, routing_key="u1"))
        old = dm._entries[("fraud", "1.0.0")].model
        refs = weakref.ref(old), weakref.ref(old._session)
        del old
        gc.collect()
        gc.freeze()
        try:
            registry.set_alias("fraud", "champion", "2.0.0")
            assert await dm.follow_aliases() == 1
            assert (await plane.infer(req("fraud", x))).model_version == "2.0.0"
            assert sorted(dm._entries) == [("fraud", "2.0.0")]
            # The executor thread that ran close() lets go of its work item a moment after the await returns.
            for _ in range(500):
                gc.collect()
                if all(r() is None for r in refs):
                    break
                await asyncio.sleep(0.01)
            return [r() is None for r in refs]
        finally:
            gc.unfreeze()

    assert run(scenario) == [True, True]


def test_persisted_file_is_applied_and_a_bad_one_is_ignored(registry, x):
    async def scenario(plane, dm):
        dconf.write_atomic(dm.state_file, AB)
        await dm.poll_once()
        assert list(dm.table) == ["fraud"]
        await plane.infer(req("fraud", x, routing_key="a"))
        await dm.poll_once()  # publishes this process's counters beside the file
        status = read_status(dm.state_file)
        assert status["fraud"]["processes"] == 1
        assert status["fraud"]["variants"]["incumbent"]["weight_bp"] == 9000
        assert sum(r["routed"] for r in status["fraud"]["variants"].values() if r["kind"] == "variant") == 1
        running = dm.table["fraud"]
        dconf.write_atomic(dm.state_file, AB.replace("9000", "9001"))
        await dm.poll_once()
        assert "sum to 10001" in dm.last_error
        assert dm.table["fraud"] is running

    run(scenario)


def test_variant_stats_fold_what_the_serving_path_appended():
    """record_ok / record / record_threadsafe / record_many_threadsafe only append; every reader sees the same
    counters as if each request had been counted at once (requests, errors, histogram, sum, percentiles)."""
    from fastml.serving.deployments import LATENCY_BUCKETS_US, VariantStats

    rng = np.random.default_rng(7)
    lat = rng.uniform(50, 2_000_000, 10_000)
    ok = rng.random(10_000) > 0.1
    st = VariantStats()
    bulk = []
    for i, (v, good) in enumerate(zip(lat.tolist(), ok.tolist())):
        if i % 5 == 4:
            bulk.append((v, good))  # recorded in groups, as the shadow runner does
            if len(bulk) == 32:
                st.record_many_threadsafe(bulk)
                bulk = []
        elif i % 3 == 0:
            st.record_threadsafe(v, good)
        elif good:
            st.record_ok(v)
        else:
            st.record(v, False)
    st.record_many_threadsafe(bulk)
    d = st.to_dict(samples=True)
    assert d["requests"] == 10_000 and d["errors"] == int((~ok).sum()) == st.errors
    # The histogram, the sum and the samples hold the answered requests' latencies only (failures count in
    # requests and errors).
    answered = lat[ok]
    expected = np.bincount(np.searchsorted(LATENCY_BUCKETS_US, answered, side="left"), minlength=len(st.buckets))
    assert st.buckets == expected.tolist()
    assert st.latency_sum_us == pytest.approx(answered.sum(), rel=1e-12)
    # LATENCY_SAMPLES of the recorded latencies are kept for percentiles, whatever way they came in.
    samples = d["latency_samples_us"]
    assert len(samples) == 4096 and set(samples) <= set(answered.tolist())
    assert d["latency"]["p99_us"] == pytest.approx(float(np.percentile(samples, 99)))
    assert st.to_dict()["requests"] == 10_000  # folding twice counts nothing twice


def test_refused_requests_do_not_make_a_variant_look_faster():
    # A refused request is recorded at 0 us: counted among the latencies, 90 refusals put a variant whose
    # answers take 100 us at a p50 of 0, which the canary's latency guards would read as faster.
    from fastml.serving.deployments import VariantStats

    st = VariantStats()
    for _ in range(10):
        st.record_ok(100.0)
    for _ in range(45):
        st.record(0.0, False)
    st.record_many_threadsafe([(0.0, False)] * 45)
    d = st.to_dict(samples=True)
    assert (d["requests"], d["errors"]) == (100, 90)
    assert d["latency_samples_us"] == [100.0] * 10 and d["latency"]["p50_us"] == 100.0
    assert sum(st.buckets) == 10 and st.latency_sum_us == 1000.0
