"""Early load shedding: refuse a request at once when the wait it would face cannot fit its deadline.

A bounded queue alone (the batcher's ``max_queue_size``) sheds too late under overload: a request admitted at
the back of a 1,024-deep queue waits queue depth x service time, which at a few thousand requests per second
is longer than any client's deadline, so the server spends its capacity on answers nobody waits for and
goodput collapses. Here each model keeps an estimate of how fast it completes requests while busy; a new
request whose expected wait (requests already in flight / completion rate) exceeds a share of its deadline
(or :data:`MAX_WAIT_S`, whichever is shorter) is refused with :class:`~fastml.errors.Overloaded` (a cheap 503) before it is queued, so the requests that are
accepted are answered in time and the server keeps working at its peak rate.

The deadline is the request's own (Triton ``timeout`` parameter, microseconds), else the model's
``timeout_us``, else :data:`DEFAULT_DEADLINE_S`. Nothing is refused while fewer than :data:`MIN_INFLIGHT`
requests are in flight (a lone slow request must never be shed), nor before a rate has been measured.
"""

from __future__ import annotations

from time import perf_counter

from fastml.errors import Overloaded

DEFAULT_DEADLINE_S = 1.0  # the wait bound for a request that names no deadline (and a model without timeout_us)
WAIT_SHARE = 0.5  # the share of the deadline the expected queue wait may take (the rest: compute, network)
# The longest standing queue kept whatever the deadline (CoDel's idea: a queue longer than this adds latency, not
# throughput). Requests also wait where the gate cannot see them (socket buffers, the client's own queue), so a
# queue that fills the whole deadline share leaves them no room. It equals the default deadline's share: a 0.1 s
# cap shed a legitimate burst (300 pipelined requests from one binary client, answered well within their
# deadline) whenever the rate estimate had been learned on a busy machine.
MAX_WAIT_S = 0.5
MIN_INFLIGHT = 8  # below this many in flight nothing is shed, whatever the estimate
WINDOW_S = 0.05  # completions are counted over windows this long
SMOOTHING = 0.3  # weight of the newest busy window in the rate estimate

SHED_MESSAGE = "the server is overloaded: the expected queue wait exceeds the request's deadline; retry later"


class AdmissionGate:
    """One model's completion-rate estimate and the admission decision made from it (event-loop thread only).

    Attributes:
        rate_per_s: smoothed completions per second measured while the model was busy (0 = not yet known).
        shed: requests refused so far.
    """

    __slots__ = ("rate_per_s", "shed", "_window_start", "_window_done", "_default_deadline_s")

    def __init__(self, default_deadline_s: float = DEFAULT_DEADLINE_S) -> None:
        self.rate_per_s = 0.0
        self.shed = 0
        self._window_start = perf_counter()
        self._window_done = 0
        self._default_deadline_s = default_deadline_s

    def sheds(self, inflight: int, timeout_us: int | None) -> bool:
        """Whether a request with ``inflight`` requests ahead of it is refused (counted in ``shed`` if so).

        A transport may ask with ``timeout_us=None`` before it decodes a request (the cap then decides, as no
        deadline allows a longer queue than :data:`MAX_WAIT_S`), and answer a canned 503 without parsing it.
        """
        if inflight < MIN_INFLIGHT:
            # Not a deep queue: completions from here on would measure arrivals, not capacity.
            self._window_start = perf_counter()
            self._window_done = 0
            return False
        if self.rate_per_s <= 0.0:
            return False
        deadline_s = timeout_us / 1e6 if timeout_us else self._default_deadline_s
        if inflight > self.rate_per_s * min(deadline_s * WAIT_SHARE, MAX_WAIT_S):
            self.shed += 1
            return True
        return False

    def admit(self, inflight: int, timeout_us: int | None) -> None:
        """Refuse the request if ``inflight`` requests ahead of it cannot finish within its deadline's share.

        Raises:
            Overloaded: the expected wait is longer than ``WAIT_SHARE`` of the deadline (or ``MAX_WAIT_S``).
        """
        if self.sheds(inflight, timeout_us):
            raise Overloaded(SHED_MESSAGE)

    def completed(self, inflight: int) -> None:
        """Count one completion; ``inflight`` is what is still in flight after it.

        Only completions while at least :data:`MIN_INFLIGHT` requests wait are counted (the model never idles
        then, so they measure its capacity, not the arrival rate); the estimate rises at once and falls
        smoothly, so a short lull never makes the gate shed a burst the model can take.
        """
        if inflight < MIN_INFLIGHT:
            self._window_start = perf_counter()
            self._window_done = 0
            return
        self._window_done += 1
        now = perf_counter()
        elapsed = now - self._window_start
        if elapsed < WINDOW_S:
            return
        measured = self._window_done / elapsed
        self._window_start = now
        self._window_done = 0
        if measured >= self.rate_per_s:
            self.rate_per_s = measured
        else:
            self.rate_per_s = (1 - SMOOTHING) * self.rate_per_s + SMOOTHING * measured


__all__ = ["DEFAULT_DEADLINE_S", "MAX_WAIT_S", "MIN_INFLIGHT", "SHED_MESSAGE", "WAIT_SHARE", "AdmissionGate"]
