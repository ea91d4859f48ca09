"""Event delivery: in-process subscribers and HMAC-SHA256-signed webhooks.

Every committed change is one row in the append-only ``events`` table (see ``store.events``). After the
commit, the registry hands the event to :class:`EventBus`, which calls subscribers in the calling thread
and queues the event for each matching webhook. A single daemon thread POSTs the queue, retrying with
exponential backoff; the registry operation never waits for it.

Each POST carries ``Content-Type: application/json``, the body (the event as compact JSON),
``X-FastML-Event`` (the kind), ``X-FastML-Delivery`` (event id), and ``X-FastML-Signature:
t=<unix seconds>,sha256=<hex HMAC-SHA256 of "<t>.<body>" with the webhook's secret>`` — the project's one
webhook signature scheme (:mod:`fastml.webhooks`, shared with monitoring alerts). A receiver checks it with
:func:`verify_signature`.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field

from fastml import webhooks as _webhooks
from fastml.errors import InvalidInput

log = logging.getLogger("fastml.registry.events")

EVENT_KINDS = ("register", "transition", "alias", "request", "approve", "reject", "delete")


@dataclass(frozen=True)
class Webhook:
    """A webhook target. ``kinds`` None means every event kind."""

    url: str
    secret: str
    kinds: frozenset[str] | None = None
    max_attempts: int = 5
    backoff_s: float = 0.5
    timeout_s: float = 5.0

    @classmethod
    def from_config(cls, cfg) -> Webhook:
        if isinstance(cfg, Webhook):
            return cfg
        if not isinstance(cfg, dict) or "url" not in cfg or "secret" not in cfg:
            raise InvalidInput(f"webhook config must be a dict with 'url' and 'secret'; got {cfg!r}")
        unknown = set(cfg) - {"url", "secret", "kinds", "max_attempts", "backoff_s", "timeout_s"}
        if unknown:
            raise InvalidInput(f"webhook config: unknown keys {sorted(unknown)}")
        if not str(cfg["url"]).startswith(("http://", "https://")):
            raise InvalidInput(f"webhook url must start with http:// or https://; got {cfg['url']!r}")
        kinds = cfg.get("kinds")
        if kinds is not None:
            bad = set(kinds) - set(EVENT_KINDS)
            if bad:
                raise InvalidInput(f"webhook kinds {sorted(bad)} unknown; known: {list(EVENT_KINDS)}")
            kinds = frozenset(kinds)
        attempts = int(cfg.get("max_attempts", 5))
        if attempts < 1:
            raise InvalidInput("webhook max_attempts must be >= 1")
        return cls(
            str(cfg["url"]),
            str(cfg["secret"]),
            kinds,
            attempts,
            float(cfg.get("backoff_s", 0.5)),
            float(cfg.get("timeout_s", 5.0)),
        )


# The shared scheme, under the names this module always offered.
sign = _webhooks.sign
verify_signature = _webhooks.verify_signature


@dataclass
class DeliveryStats:
    delivered: int = 0
    failed: int = 0  # gave up after max_attempts
    attempts: int = 0
    last_error: str = ""
    pending: int = 0
    _cond: threading.Condition = field(default_factory=threading.Condition, repr=False)


class EventBus:
    """Subscribers (called synchronously after commit) and webhooks (delivered by a background thread)."""

    def __init__(self, webhooks=None):
        self.webhooks = [Webhook.from_config(w) for w in (webhooks or [])]
        self._subscribers: list[Callable[[dict], None]] = []
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.stats = DeliveryStats()

    def subscribe(self, fn: Callable[[dict], None]) -> None:
        if not callable(fn):
            raise InvalidInput("subscribe() needs a callable taking one event dict")
        self._subscribers.append(fn)

    def publish(self, event: dict) -> None:
        for fn in list(self._subscribers):
            try:
                fn(event)
            except Exception:  # a subscriber's bug must not undo or fail a committed change
                log.exception("registry event subscriber %r failed on event %s", fn, event.get("id"))
        targets = [w for w in self.webhooks if w.kinds is None or event["kind"] in w.kinds]
        if not targets:
            return
        body = json.dumps(event, separators=(",", ":"), sort_keys=True).encode()
        with self.stats._cond:
            self.stats.pending += len(targets)
        self._ensure_thread()
        for w in targets:
            self._queue.put((w, event, body))

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until every queued delivery succeeded or gave up; False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self.stats._cond:
            while self.stats.pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.stats._cond.wait(left)
        return True

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="fastml-registry-webhooks", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            hook, event, body = self._queue.get()
            ok = self._deliver(hook, event, body)
            with self.stats._cond:
                if ok:
                    self.stats.delivered += 1
                else:
                    self.stats.failed += 1
                self.stats.pending -= 1
                self.stats._cond.notify_all()

    def _deliver(self, hook: Webhook, event: dict, body: bytes) -> bool:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "fastml-registry",
            "X-FastML-Event": event["kind"],
            "X-FastML-Delivery": str(event["id"]),
        }
        for attempt in range(1, hook.max_attempts + 1):
            with self.stats._cond:
                self.stats.attempts += 1
            headers[_webhooks.SIGNATURE_HEADER] = sign(body, hook.secret)  # signed per attempt: retries stay fresh
            try:
                req = urllib.request.Request(hook.url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=hook.timeout_s) as resp:
                    resp.read()
                    if 200 <= resp.status < 300:
                        return True
                    error = f"HTTP {resp.status}"
            except urllib.error.HTTPError as exc:
                error = f"HTTP {exc.code}"
            except (urllib.error.URLError, OSError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            with self.stats._cond:
                self.stats.last_error = f"{hook.url}: {error}"
            log.warning(
                "webhook %s attempt %d/%d for event %s failed: %s",
                hook.url,
                attempt,
                hook.max_attempts,
                event["id"],
                error,
            )
            if attempt < hook.max_attempts:
                time.sleep(hook.backoff_s * (2 ** (attempt - 1)))  # backoff between retries (background thread)
        log.error("webhook %s: giving up on event %s after %d attempts", hook.url, event["id"], hook.max_attempts)
        return False
