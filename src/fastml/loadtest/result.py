"""What a load test measured: outcomes per request, latency percentiles, throughput."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Outcome keys that are not HTTP status codes. Status codes are kept as their decimal string ("200").
TIMEOUT = "timeout"  # no complete response within the per-request timeout
CONNECT_ERROR = "connect_error"  # the TCP connection could not be opened
CONNECTION_CLOSED = "connection_closed"  # the server closed/reset the connection mid-request
PROTOCOL_ERROR = "protocol_error"  # the bytes received were not valid HTTP
BAD_RESPONSE = "bad_response"  # a 2xx whose infer body did not decode or failed the caller's check

ERROR_OUTCOMES = (TIMEOUT, CONNECT_ERROR, CONNECTION_CLOSED, PROTOCOL_ERROR, BAD_RESPONSE)

PERCENTILES = (50, 90, 99)


class LatencyLog:
    """Append-only latency record (microseconds) in a growable float64 buffer."""

    __slots__ = ("_buf", "_n")

    def __init__(self, capacity: int = 4096) -> None:
        self._buf = np.empty(capacity, dtype=np.float64)
        self._n = 0

    def add(self, latency_us: float) -> None:
        if self._n == len(self._buf):
            self._buf = np.concatenate([self._buf, np.empty(len(self._buf), dtype=np.float64)])
        self._buf[self._n] = latency_us
        self._n += 1

    def values(self) -> np.ndarray:
        """A copy of the recorded latencies, in recording order."""
        return self._buf[: self._n].copy()

    def __len__(self) -> int:
        return self._n


def percentiles_us(values: np.ndarray) -> dict[str, float | None]:
    """p50/p90/p99 (and max) of ``values`` in µs; None for each when there are no values."""
    if len(values) == 0:
        return {f"p{p}": None for p in PERCENTILES} | {"max": None}
    # Nearest rank (an observed value, never an interpolation): the smallest x with F(x) >= p.
    qs = np.percentile(values, PERCENTILES, method="inverted_cdf")
    return {f"p{p}": float(q) for p, q in zip(PERCENTILES, qs)} | {"max": float(values.max())}


@dataclass
class LoadResult:
    """The outcome of one load test.

    Attributes:
        mode: ``"closed"`` (fixed concurrency) or ``"open"`` (fixed arrival rate).
        concurrency: closed loop: number of concurrent requests; open loop: connections used.
        target_rate_per_s: open loop only: the arrival rate asked for.
        duration_s: the measured window (after warm-up), seconds.
        outcomes: outcome -> count; HTTP status codes as strings ("200", "503"), plus the error
            kinds in :data:`ERROR_OUTCOMES`. Requests sent during warm-up are not counted.
        latency_ok_us: latencies of 2xx answers (open loop: from the scheduled send time).
        latency_all_us: latencies of every HTTP answer, whatever its status (``bad_response`` included).
        late_starts: open loop only: requests sent after their scheduled time because no
            connection was free (the latency still counts from the scheduled time).
        error_samples: for connect errors and timeouts before a connection was had: the first
            exception seen, as text (e.g. to tell refused connections from exhausted ports).
        send_lag_us: open loop only: for each request sent, how long after its due time it was
            written (waiting for a connection, or the generator itself falling behind). A large p99
            means the load generator, not the server, limited the run.
    """

    mode: str
    concurrency: int
    target_rate_per_s: float | None
    duration_s: float
    outcomes: dict[str, int]
    latency_ok_us: np.ndarray = field(repr=False)
    latency_all_us: np.ndarray = field(repr=False)
    late_starts: int = 0
    error_samples: dict[str, str] = field(default_factory=dict)
    send_lag_us: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)

    @property
    def sent(self) -> int:
        """Requests counted in the measured window (every outcome)."""
        return sum(self.outcomes.values())

    @property
    def ok(self) -> int:
        """Requests answered with a 2xx status (and, if validated, a well-formed body)."""
        return sum(n for k, n in self.outcomes.items() if k.isdigit() and 200 <= int(k) < 300)

    @property
    def throughput_per_s(self) -> float:
        """Successful (2xx) answers per second over the measured window."""
        return self.ok / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def answered_per_s(self) -> float:
        """HTTP answers of any status per second (what a server sheds with 503 counts here; so does a 2xx
        whose body failed validation)."""
        answered = sum(n for k, n in self.outcomes.items() if k.isdigit() or k == BAD_RESPONSE)
        return answered / self.duration_s if self.duration_s > 0 else 0.0

    def count(self, outcome: str | int) -> int:
        """Number of requests with this outcome (a status code or an error kind)."""
        return self.outcomes.get(str(outcome), 0)

    def to_dict(self) -> dict:
        """A JSON-ready summary (latency arrays reduced to percentiles)."""
        return {
            "mode": self.mode,
            "concurrency": self.concurrency,
            "target_rate_per_s": self.target_rate_per_s,
            "duration_s": round(self.duration_s, 6),
            "sent": self.sent,
            "ok": self.ok,
            "throughput_per_s": round(self.throughput_per_s, 3),
            "answered_per_s": round(self.answered_per_s, 3),
            "outcomes": dict(sorted(self.outcomes.items())),
            "latency_ok_us": percentiles_us(self.latency_ok_us),
            "latency_all_us": percentiles_us(self.latency_all_us),
            "late_starts": self.late_starts,
            "send_lag_us": percentiles_us(self.send_lag_us) if self.mode == "open" else None,
            "error_samples": dict(self.error_samples),
        }

    def format_text(self) -> str:
        """A short human-readable report."""
        d = self.to_dict()
        load = (
            f"closed loop, concurrency {self.concurrency}"
            if self.mode == "closed"
            else f"open loop, {self.target_rate_per_s:g}/s over up to {self.concurrency} connections"
        )
        ok = d["latency_ok_us"]
        lat = (
            "latency (2xx): " + "  ".join(f"{k} {_fmt_us(v)}" for k, v in ok.items())
            if ok["p50"] is not None
            else "latency (2xx): no successful answers"
        )
        lines = [
            f"{load}; {self.duration_s:.2f} s measured",
            f"sent {self.sent}, ok {self.ok}, throughput {self.throughput_per_s:,.1f}/s "
            f"(answered {self.answered_per_s:,.1f}/s)",
            lat,
            "outcomes: " + ", ".join(f"{k}={v}" for k, v in sorted(self.outcomes.items())),
        ]
        if self.mode == "open":
            lag = percentiles_us(self.send_lag_us)
            lines.append(
                f"late starts (no free connection): {self.late_starts}; send lag after due time: "
                f"p50 {_fmt_us(lag['p50'])}, p99 {_fmt_us(lag['p99'])}"
            )
        for kind, text in sorted(self.error_samples.items()):
            lines.append(f"first {kind}: {text}")
        return "\n".join(lines)


def _fmt_us(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f} us" if value < 10_000 else f"{value / 1000:,.1f} ms"
