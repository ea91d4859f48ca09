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

Requests also wait where the gate cannot count them: in socket buffers, while the event loop is busy elsewhere.
With the inline runner (runner="loop") the loop runs each iteration's batches itself, so whatever arrives during
a flush is read only after it; a client counts that wait, and with a slow model it alone can take most of the
deadline. So when a check comes right after completions (the loop went from settling requests to reading), the
time from the check before to those completions is a *stall*: the gate adds it to the expected wait of the
requests read right after it. An idle loop is no stall: its gap ends in a read, not in completions. A stall is
also a measurement: until the next one, its length per request completed in it (the loop's wall time per
request, which follows at once a process that gets less CPU, where the best-of-windows rate does not) is taken as
what each request ahead will cost, where that is more than the rate says.

The rate estimate can also be wrong: it is the best of recent windows, and on a machine where other jobs take the
process's CPU the model completes fewer requests than that. So the gate also keeps when each request it admitted
came in, and sheds while the oldest one still in flight has been waiting longer than a new one may (CoDel's
sojourn time): the queue it admits then never stands longer than the wait bound, whatever the estimate says, and
accepted requests are answered within their deadline instead of late or with 504.

A transport may ask before it decodes a request (``timeout_us=None`` to :meth:`AdmissionGate.sheds`), so that
shedding costs a canned 503 and no JSON or tensor decoding. It cannot know that request's deadline yet, so the
gate answers for the longest deadline among the requests it decoded in the last one to two seconds: a request
shed that early would have been shed after decoding too, unless it names a longer deadline than all of them.
"""

from __future__ import annotations

from collections import deque
from itertools import repeat
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
# The standing-queue target (CoDel's idea again, in expected-wait terms). A client fleet holds a bounded number of
# connections, one request in flight on each: if the server keeps every accepted request queued for most of its
# deadline, the connections stay busy and the excess waits at the clients, where no gate sees it, until it is
# too late to be useful. So once the expected wait has stayed above TARGET_WAIT_S for INTERVAL_S, arrivals above
# the target are shed (the connections cycle on fast 503s while the accepted ones are answered promptly) until
# the queue drains to half the target. A burst is never shed for this: it arrives before the interval is over.
TARGET_WAIT_S = 0.05
INTERVAL_S = 0.2
# ...and only with more than this many in flight: closed-loop clients (perf_analyzer's concurrency range, the
# benchmarks' 32 connections) wait for their answers, so their queue never grows and is not shed for its length.
# A fleet of one-request connections (512 in the overload bench) is not shed for it either: each 503 frees a
# connection that sends again at once, so shedding down to the target turned the fleet's excess into a stream of
# 503s that took the CPU the model needed. With a model whose compute is the limit (runner threads, 0.35 ms a
# row), alternating rounds with the rule from 64 in flight and without it measured medians of 1,184 against
# 1,814 200s/s for a dropping client at 4x and 1,422 against 1,624 for a FIFO client at 2x. What is left is the
# deadline rule; this one applies only to queues deeper than the batcher's default bound (pipelining clients and
# a larger max_queue_size).
STANDING_MIN_INFLIGHT = 1024
WINDOW_S = 0.05  # completions are counted over windows this long
# The estimate is the highest rate among the last RATE_WINDOWS busy windows (a windowed max, as TCP BBR estimates
# bottleneck bandwidth): a window in which completions were counted late (the event loop busy answering 503s, the
# process descheduled on a busy machine) measures less than the model can do, and an estimate that followed it
# down would shed more, load the loop more and fall again. A model that really slows down is followed within
# RATE_WINDOWS busy windows.
RATE_WINDOWS = 10
# Completions often arrive in bursts: the inline runner (runner="loop") settles a whole event-loop iteration's
# requests at once when it flushes, and runner threads settle a batch at a time. A window is therefore closed
# only once its completions themselves span WINDOW_S, or when a burst drains the queue, and never with fewer
# than this many completions: closing on the first completion of a burst after a long loop iteration measured
# one completion over the whole iteration (~20/s for a model doing thousands), and the gate then shed every
# request but a handful for as long as the estimate stood, with nothing completing at depth to correct it.
RATE_MIN_COMPLETIONS = 16
# ...nor a drained burst that took less than a whole window: runner threads settle a batch at a time, and a few
# dozen requests settled within 10 ms of the window opening (read in the loop's previous iterations) measured
# 10,000+/s for a model doing 3,000; the windowed max then kept that for RATE_WINDOWS windows and shed nothing.
RATE_MIN_SPAN_S = WINDOW_S
# A gap this long between two admission checks that ends within this long of a completion is a stall: the loop was
# busy with model work (the inline runner's batches, a run of completions) and requests waited unread in socket
# buffers meanwhile. Shorter gaps are the ordinary cost of reading; a gap that ends in a read long after the last
# completion is the loop idling (a queue that drained, a quiet client), not a stall.
STALL_MIN_S = 0.002
# An estimate no busy window has renewed for this long (or for two windows' worth of completions at its rate, if
# that is longer) is forgotten, as before the first one: it was measured on a load that is gone. Without this, a
# rate learned on large requests (a 20,000-row request runs as hundreds of batches) shed the next one-row
# requests for good: they drain the queue within a window, so they never record a window that would raise it.
RATE_STALE_S = 1.0
HINT_EPOCH_S = 1.0  # decoded deadlines are remembered for one to two of these epochs (the pre-decode hint)

SHED_MESSAGE = "the server is overloaded: the expected queue wait exceeds the request's deadline; retry later"


class AdmissionGate:
    """One model's completion-rate estimate and the admission decision made from it (event-loop thread only).

    Attributes:
        rate_per_s: completions per second, the best of the recent busy windows (0 = not yet known).
        shed: requests refused so far.
    """

    __slots__ = (
        "rate_per_s",
        "shed",
        "_recent_rates",
        "_window_start",
        "_window_done",
        "_first_done_s",
        "_default_deadline_s",
        "_hint_epoch_start",
        "_hint_current_s",
        "_hint_previous_s",
        "_above_since",
        "_dropping",
        "_last_check_s",
        "_last_done_s",
        "_stall_s",
        "_stall_end_s",
        "_stall_cost_s",
        "_done_since_check",
        "_admitted",
        "_rate_at_s",
    )

    def __init__(self, default_deadline_s: float = DEFAULT_DEADLINE_S) -> None:
        self.rate_per_s = 0.0
        self.shed = 0
        self._recent_rates: deque[float] = deque(maxlen=RATE_WINDOWS)
        self._window_start = perf_counter()
        self._window_done = 0
        self._first_done_s = 0.0  # when the window's first completion came (0 = none yet)
        self._default_deadline_s = default_deadline_s
        # Longest decoded deadline in the current and the previous epoch (0 = none seen).
        self._hint_epoch_start = self._window_start
        self._hint_current_s = 0.0
        self._hint_previous_s = 0.0
        self._above_since = 0.0  # when the expected wait last rose above TARGET_WAIT_S (0 = it is below)
        self._dropping = False  # above the target for INTERVAL_S: arrivals above it are shed
        self._last_check_s = self._window_start  # when sheds() last ran
        self._last_done_s = 0.0  # when completed() last ran
        self._stall_s = 0.0  # the last stall's length (see STALL_MIN_S); 0 = the loop idled instead
        self._stall_end_s = 0.0  # when that stall ended (the first check after it)
        self._stall_cost_s = 0.0  # that stall's length per request completed in it (0 = too few to tell)
        self._done_since_check = 0  # completions since the last check
        # When each request in flight was admitted, oldest first (completions are taken as first in, first out).
        self._admitted: deque[float] = deque()
        self._rate_at_s = 0.0  # when the last busy window was recorded

    def _stale(self, now: float) -> bool:
        """Forget an estimate that no window renewed for long (see :data:`RATE_STALE_S`); whether it was."""
        if self._recent_rates and now - self._rate_at_s > max(RATE_STALE_S, 2 * RATE_MIN_COMPLETIONS / self.rate_per_s):
            self._recent_rates.clear()
            self.rate_per_s = 0.0
            return True
        return False

    def _deadline_hint_s(self, now: float, seen_s: float = 0.0) -> float:
        """The longest deadline decoded in this epoch and the last (``seen_s`` joins this epoch's first)."""
        if now - self._hint_epoch_start >= HINT_EPOCH_S:
            stale = now - self._hint_epoch_start >= 2 * HINT_EPOCH_S
            self._hint_previous_s = 0.0 if stale else self._hint_current_s
            self._hint_current_s = 0.0
            self._hint_epoch_start = now
        if seen_s > self._hint_current_s:
            self._hint_current_s = seen_s
        return max(self._hint_current_s, self._hint_previous_s)

    def sheds(self, inflight: int, timeout_us: int | None) -> bool:
        """Whether a request with ``inflight`` requests ahead of it is refused (counted in ``shed`` if so).

        A transport may ask with ``timeout_us=None`` before it decodes a request and answer a canned 503 without
        parsing it: the decision is then made for the longest deadline decoded recently (see the module
        docstring), or the default deadline when none was.
        """
        now = perf_counter()
        last_check_s = self._last_check_s
        if now - last_check_s >= STALL_MIN_S:
            done_s = self._last_done_s
            # Completions just before this check: the loop was settling work until now, not waiting for a read.
            busy = done_s > last_check_s and now - done_s < STALL_MIN_S
            self._stall_s = done_s - last_check_s if busy else 0.0
            self._stall_end_s = now
            n = self._done_since_check
            self._stall_cost_s = self._stall_s / n if busy and n >= MIN_INFLIGHT else 0.0
        self._last_check_s = now
        self._done_since_check = 0
        admitted = self._admitted
        while len(admitted) > inflight:  # admitted but never queued (the engine refused it): not in flight
            admitted.popleft()
        if inflight < MIN_INFLIGHT:
            # Not a deep queue: completions from here on would measure arrivals, not capacity.
            self._window_start = perf_counter()
            self._window_done = 0
            self._first_done_s = 0.0
            self._above_since = 0.0
            self._dropping = False
            return False
        if timeout_us is None:
            deadline_s = self._deadline_hint_s(now) or self._default_deadline_s
        else:
            deadline_s = timeout_us / 1e6
        bound_s = min(deadline_s * WAIT_SHARE, MAX_WAIT_S)
        admitted = self._admitted
        if admitted and now - admitted[0] > bound_s:
            # The oldest request in flight has waited longer than a new one may: the queue is longer than the
            # rate estimate says (the model got less CPU than when it was measured).
            self.shed += 1
            return True
        if self.rate_per_s <= 0.0 or self._stale(now):
            return False
        wait_s = inflight / self.rate_per_s
        # A request read within a stall's length after it may have waited that stall unread (reads after that
        # are of requests that arrived since). The standing-queue rule stays on the queue the gate counts.
        unread_s = 0.0
        if now - self._stall_end_s < self._stall_s:
            unread_s = self._stall_s
            if inflight * self._stall_cost_s > wait_s:
                wait_s = inflight * self._stall_cost_s
        if unread_s + wait_s > bound_s or self._standing(inflight, wait_s, now):
            self.shed += 1
            return True
        return False

    def _standing(self, inflight: int, wait_s: float, now: float) -> bool:
        """Whether an arrival facing ``wait_s`` is shed to keep a standing queue at the target."""
        if inflight <= STANDING_MIN_INFLIGHT:
            self._above_since = 0.0
            self._dropping = False
            return False
        if wait_s <= TARGET_WAIT_S:
            if wait_s <= TARGET_WAIT_S / 2:
                self._above_since = 0.0
                self._dropping = False
            elif not self._dropping:
                self._above_since = 0.0
            return False
        if self._dropping:
            return True
        if self._above_since == 0.0:
            self._above_since = now
            return False
        if now - self._above_since >= INTERVAL_S:
            self._dropping = True
            return True
        return False

    def admit(self, inflight: int, timeout_us: int | None) -> None:
        """Refuse the request if ``inflight`` requests ahead of it cannot finish within its deadline's share.

        Raises:
            Overloaded: the expected wait is longer than ``WAIT_SHARE`` of the deadline (or ``MAX_WAIT_S``).
        """
        deadline_us = timeout_us or int(self._default_deadline_s * 1e6)  # None here: the request named none
        self._deadline_hint_s(perf_counter(), deadline_us / 1e6)
        if self.sheds(inflight, deadline_us):
            raise Overloaded(SHED_MESSAGE)
        self._admitted.append(self._last_check_s)  # sheds() just read the clock

    def admitted_run(self, inflight: int, timeout_us: int | None, count: int) -> None:
        """Records ``count`` requests with one deadline that a transport admitted together under
        :meth:`unshed_inflight` and queued already, the first with ``inflight`` ahead of it (the binary protocol's
        intake, once per read): the first's :meth:`admit` is replayed for its side effects (deadline hint, rate
        window, standing-queue state, stall clock) and all ``count`` are counted as admitted. Never raises.
        """
        deadline_us = timeout_us or int(self._default_deadline_s * 1e6)
        self._deadline_hint_s(perf_counter(), deadline_us / 1e6)
        if self.sheds(inflight, deadline_us):
            self.shed -= 1  # admitted under unshed_inflight a moment ago (the clock moved since): not a shed
        self._admitted.extend(repeat(self._last_check_s, count))  # sheds() just read the clock

    def unshed_inflight(self, timeout_us: int | None) -> int:
        """The most requests in flight ahead of one with ``timeout_us`` at which :meth:`admit` surely admits it,
        whatever the standing-queue state: a transport that admits a run of requests natively (the binary
        protocol's intake) takes those with at most this many ahead of them, then records them with
        :meth:`admitted_run` (admit() for the others would have changed nothing but the admitted count: the same
        deadline, more ahead, all admitted). Requests past the bound go through :meth:`admit` one by one.
        """
        deadline_s = (timeout_us or int(self._default_deadline_s * 1e6)) / 1e6
        bound_s = min(deadline_s * WAIT_SHARE, MAX_WAIT_S)
        now = perf_counter()
        if self._admitted and now - self._admitted[0] > bound_s:
            return MIN_INFLIGHT - 1  # the oldest in flight waited too long: admit() sheds above the floor
        rate = self.rate_per_s
        if rate <= 0.0 or self._stale(now):
            return 1 << 62
        unread_s = 0.0
        if now - self._stall_end_s < self._stall_s:
            unread_s = self._stall_s
            if self._stall_cost_s * rate > 1.0:
                rate = 1.0 / self._stall_cost_s  # the stall's cost per request, as sheds() takes it
        # Rounded down, and one less, so no float rounding admits one that admit() would shed.
        by_deadline = int((bound_s - unread_s) * rate) - 1
        # Up to TARGET_WAIT_S of expected wait the standing-queue rule admits, only ever clearing its state.
        by_standing = max(STANDING_MIN_INFLIGHT, int(TARGET_WAIT_S * rate) - 1)
        return max(MIN_INFLIGHT - 1, min(by_deadline, by_standing))

    def completed(self, inflight: int) -> None:
        """Count one completion; ``inflight`` is what is still in flight after it (:meth:`completed_many` of 1).

        Only completions while at least :data:`MIN_INFLIGHT` requests wait are counted (the model never idles
        then, so they measure its capacity, not the arrival rate). A window closes when its completions span
        :data:`WINDOW_S`, or at the completion that drains the queue below :data:`MIN_INFLIGHT` (the end of a
        burst) at least :data:`RATE_MIN_SPAN_S` after it opened, and only with :data:`RATE_MIN_COMPLETIONS` in it; its rate is completions over the time since it
        opened. The estimate rises at once and falls only when :data:`RATE_WINDOWS` windows in a row measured
        less, so a short lull never makes the gate shed a burst the model can take.
        """
        self.completed_many(inflight, 1)

    def completed_many(self, inflight: int, count: int) -> None:
        """``count`` completions at once (one batch's answers, written in one pass), ``inflight`` still in flight
        after the last: the same books as ``count`` calls of :meth:`completed` with ``inflight + count - 1`` down
        to ``inflight`` at one clock reading, in one call (a transport answering a pass's requests pays one call,
        not one per answer)."""
        now = perf_counter()
        self._last_done_s = now
        self._done_since_check += count
        admitted = self._admitted
        if admitted:
            # Each completion takes the oldest admission and trims the rest to what is still in flight: together
            # that leaves min(len - count, inflight).
            for _ in range(min(count, len(admitted))):
                admitted.popleft()
            while len(admitted) > inflight:
                admitted.popleft()
        first = self._first_done_s
        if inflight >= MIN_INFLIGHT and (first == 0.0 or now - first < WINDOW_S):
            # No completion drains the queue, and with one clock reading none closes the window (a window the
            # first one opens has spanned no time for the others).
            self._window_done += count
            if first == 0.0:
                self._first_done_s = now
            return
        for left in range(count - 1, -1, -1):
            self._count_completion(now, inflight + left)

    def _count_completion(self, now: float, inflight: int) -> None:
        """One completion's part in the capacity windows (see :meth:`completed`)."""
        if inflight < MIN_INFLIGHT:
            # The queue drained: the burst that did it belongs to this window (it ran in the time measured).
            done = self._window_done + 1
            elapsed = now - self._window_start
            if done >= RATE_MIN_COMPLETIONS and elapsed >= RATE_MIN_SPAN_S:
                self._record(done / elapsed, now)
            self._window_start = now
            self._window_done = 0
            self._first_done_s = 0.0
            return
        self._window_done += 1
        if self._first_done_s == 0.0:
            self._first_done_s = now
            return
        if now - self._first_done_s < WINDOW_S or self._window_done < RATE_MIN_COMPLETIONS:
            return
        self._record(self._window_done / (now - self._window_start), now)
        self._window_start = now
        self._window_done = 0
        self._first_done_s = 0.0

    def _record(self, measured_per_s: float, now: float) -> None:
        self._recent_rates.append(measured_per_s)
        self.rate_per_s = max(self._recent_rates)
        self._rate_at_s = now


__all__ = [
    "DEFAULT_DEADLINE_S",
    "INTERVAL_S",
    "MAX_WAIT_S",
    "MIN_INFLIGHT",
    "RATE_MIN_COMPLETIONS",
    "RATE_MIN_SPAN_S",
    "RATE_STALE_S",
    "RATE_WINDOWS",
    "SHED_MESSAGE",
    "STALL_MIN_S",
    "STANDING_MIN_INFLIGHT",
    "TARGET_WAIT_S",
    "WAIT_SHARE",
    "AdmissionGate",
]
