"""History (what was in production when), the append-only event log, subscribers and signed webhooks."""

from __future__ import annotations

import http.server
import json
import threading
from datetime import UTC, datetime

import pytest

from fastml.errors import Conflict, InvalidInput, NotFound
from fastml.registry import verify_signature


def _promote(reg, ref):
    rid = reg.request_transition(ref, "production", actor="ana", reason=f"ship {ref}")
    reg.approve(rid, reviewer="bo")
    reg.approve(rid, reviewer="cy")


def test_history_answers_what_was_in_production_at_a_time(reg, artifact):
    for tag in "abc":
        reg.register("m", artifact(tag), actor="ana")
    before_any = datetime.now(UTC)
    _promote(reg, "m:1.0.0")
    t1 = reg.events(model="m")[-1]["at"]
    reg.set_alias("m", "champion", "1.0.1", actor="ana")
    _promote(reg, "m:1.0.1")
    t2 = reg.events(model="m")[-1]["at"]
    _promote(reg, "m:1.0.2")

    assert reg.history("m", at=before_any)["stages"]["production"] == []
    at1 = reg.history("m", at=t1)
    assert at1["stages"]["production"] == ["1.0.0"] and at1["aliases"] == {}
    at2 = reg.history("m", at=t2)
    assert at2["stages"]["production"] == ["1.0.1"] and at2["stages"]["archived"] == ["1.0.0"]
    assert at2["aliases"] == {"champion": "1.0.1"}
    now = reg.history("m")
    assert now["stages"]["production"] == ["1.0.2"] and now["stages"]["archived"] == ["1.0.0", "1.0.1"]
    # A bare date is the end of that day: today's date sees the latest state.
    assert reg.history("m", at=datetime.now(UTC).date().isoformat())["stages"]["production"] == ["1.0.2"]
    assert reg.history("m", at="2000-01-01")["events"] == []
    # Every change is recorded with who, when, from, to and why.
    transitions = [e for e in now["events"] if e["kind"] == "transition" and e["to"] == "production"]
    assert [(e["version"], e["actor"], e["from"], e["reason"]) for e in transitions] == [
        ("1.0.0", "ana", "development", "ship m:1.0.0"),
        ("1.0.1", "ana", "development", "ship m:1.0.1"),
        ("1.0.2", "ana", "development", "ship m:1.0.2"),
    ]
    assert transitions[0]["details"]["approved_by"] == ["bo", "cy"]
    with pytest.raises(InvalidInput, match="ISO-8601"):
        reg.history("m", at="yesterday")
    with pytest.raises(NotFound):
        reg.history("n")


def test_event_log_is_append_only_with_increasing_ids(reg, artifact):
    reg.register("m", artifact("a"), actor="ana")
    reg.register("m", artifact("b"), actor="ana")
    rid = reg.request_transition("m:1.0.0", "production", actor="ana")
    reg.reject(rid, reviewer="bo", comment="no")
    reg.set_alias("m", "shadow", "1.0.1", actor="ana")
    reg.delete_alias("m", "shadow", actor="ana")
    reg.delete_version("m:1.0.1", actor="ana", reason="bad")
    evs = reg.events()
    assert [e["kind"] for e in evs] == ["register", "register", "request", "reject", "alias", "alias", "delete"]
    ids = [e["id"] for e in evs]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(
        set(e) == {"id", "at", "actor", "kind", "model", "version", "from", "to", "reason", "details"} for e in evs
    )
    assert evs[3]["reason"] == "no" and evs[3]["actor"] == "bo"
    assert evs[-1] == {**evs[-1], "kind": "delete", "version": "1.0.1", "actor": "ana", "reason": "bad"}
    assert [e["id"] for e in reg.events(after_id=ids[2], limit=2)] == ids[3:5]
    assert all(e["at"].endswith("Z") and e["at"] >= evs[0]["at"] for e in evs)


def test_subscribers_get_committed_events_only(reg, artifact):
    got = []
    reg.subscribe(got.append)
    reg.subscribe(lambda ev: 1 / 0)  # a broken subscriber does not break the registry
    reg.register("m", artifact(), actor="ana")
    with pytest.raises(Conflict):
        reg.register("m", artifact(), version="1.0.0", actor="ana")  # nothing committed
    assert [e["kind"] for e in got] == ["register"]
    assert got == reg.events()


class _Hook:
    """A local webhook receiver on 127.0.0.1:0: records (lower-cased headers, body); the first `fail_first` POSTs get 500;
    when `hold` is set, each request waits for `release` before answering."""

    def __init__(self, fail_first: int = 0, hold: bool = False):
        self.received: list[tuple[dict, bytes]] = []
        self.fail_first = fail_first
        self.hold = hold
        self.release = threading.Event()
        self.arrived = threading.Event()
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.arrived.set()
                if hook.hold:
                    hook.release.wait(30)
                if hook.fail_first > 0:
                    hook.fail_first -= 1
                    self.send_response(500)
                    self.end_headers()
                    return
                hook.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook():
    made = []

    def make(**kw):
        h = _Hook(**kw)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


def test_webhooks_are_signed_and_cover_transitions_and_approvals(make_registry, artifact, hook):
    h = hook()
    reg = make_registry(webhooks=[{"url": h.url, "secret": "s3cret", "backoff_s": 0.01}])
    reg.register("m", artifact(), actor="ana")
    _promote(reg, "m:1.0.0")
    assert reg.flush_events(30)
    kinds = [json.loads(body)["kind"] for _, body in h.received]
    assert sorted(kinds) == sorted(["register", "request", "approve", "approve", "transition"])
    for headers, body in h.received:
        assert verify_signature(body, headers["x-fastml-signature"], "s3cret")
        assert not verify_signature(body, headers["x-fastml-signature"], "wrong")
        assert not verify_signature(body + b" ", headers["x-fastml-signature"], "s3cret")
        ev = json.loads(body)
        assert headers["x-fastml-event"] == ev["kind"] and headers["x-fastml-delivery"] == str(ev["id"])
    assert sorted(json.loads(b)["id"] for _, b in h.received) == [e["id"] for e in reg.events()]


def test_webhooks_retry_failures_and_filter_kinds(make_registry, artifact, hook):
    flaky = hook(fail_first=2)
    picky = hook()
    reg = make_registry(
        webhooks=[
            {"url": flaky.url, "secret": "a", "backoff_s": 0.01, "max_attempts": 4},
            {"url": picky.url, "secret": "b", "kinds": ["transition"], "backoff_s": 0.01},
        ]
    )
    reg.register("m", artifact(), actor="ana")
    reg.transition("m:1.0.0", "staging", actor="ana")
    assert reg.flush_events(30)
    assert [json.loads(b)["kind"] for _, b in picky.received] == ["transition"]
    assert sorted(json.loads(b)["kind"] for _, b in flaky.received) == ["register", "transition"]
    stats = reg.events_bus.stats
    assert stats.delivered == 3 and stats.failed == 0 and stats.attempts == 5  # 2 retried after a 500


def test_webhook_that_never_succeeds_gives_up(make_registry, artifact, hook):
    down = hook(fail_first=100)
    reg = make_registry(webhooks=[{"url": down.url, "secret": "a", "backoff_s": 0.001, "max_attempts": 3}])
    reg.register("m", artifact(), actor="ana")
    assert reg.flush_events(30)
    assert reg.events_bus.stats.failed == 1 and reg.events_bus.stats.attempts == 3
    assert "HTTP 500" in reg.events_bus.stats.last_error
    assert reg.resolve("m").version == "1.0.0"  # the change itself stands


def test_webhooks_never_block_the_operation(make_registry, artifact, hook):
    slow = hook(hold=True)
    reg = make_registry(webhooks=[{"url": slow.url, "secret": "a"}])
    # The receiver does not answer until released; register/transition must return regardless.
    reg.register("m", artifact(), actor="ana")
    reg.transition("m:1.0.0", "staging", actor="ana")
    assert reg.resolve("m@staging").version == "1.0.0"
    assert slow.received == []
    assert slow.arrived.wait(30)  # the delivery is in flight while we already returned
    slow.release.set()
    assert reg.flush_events(30)
    assert len(slow.received) == 2


@pytest.mark.parametrize(
    "cfg,match",
    [
        ({"url": "ftp://x", "secret": "s"}, "http"),
        ({"url": "http://x"}, "secret"),
        ({"url": "http://x", "secret": "s", "kinds": ["boom"]}, "kinds"),
        ({"url": "http://x", "secret": "s", "retries": 3}, "unknown"),
    ],
)
def test_bad_webhook_config(fastml_home, cfg, match):
    from fastml.registry import Registry

    with pytest.raises(InvalidInput, match=match):
        Registry(f"sqlite:///{fastml_home / 'registry.db'}", webhooks=[cfg])


def test_webhooks_file_configures_registries_built_without_webhooks(fastml_home, artifact, hook, capsys):
    from fastml.cli import main

    h = hook()
    (fastml_home / "registry-webhooks.json").write_text(
        json.dumps([{"url": h.url, "secret": "k", "kinds": ["register"]}])
    )
    assert main(["registry", "register", "m", str(artifact())]) == 0  # the CLI waits for delivery on exit
    assert [json.loads(b)["kind"] for _, b in h.received] == ["register"]
    headers, body = h.received[0]
    assert verify_signature(body, headers["x-fastml-signature"], "k")
    (fastml_home / "registry-webhooks.json").write_text("{not json")
    with pytest.raises(InvalidInput, match="registry-webhooks.json"):
        from fastml.registry import Registry

        Registry()
