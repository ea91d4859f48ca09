"""How many worker processes ``fastml serve --workers auto`` wants: a pure policy, no processes, no clock.

The supervisor (fastml.server.workers) measures every serving worker over each interval from the
snapshots the workers already write (CPU seconds, batcher queue time, requests) and hands the policy one
:class:`LoadSample`. The policy answers with a :class:`Decision`. It is deterministic in its inputs
(time is passed in), so tests and the capacity simulation (scripts/capacity.py) drive it directly.

The rule is Kubernetes' HorizontalPodAutoscaler rule applied to processes:

- ``ratio = max(utilization / target_utilization, queue_us / target_queue_us)``;
- inside the tolerance band (``|ratio - 1| <= tolerance``) the proposal is the measured worker count,
  outside it ``ceil(workers * ratio)``, clamped to ``[min_workers, max_workers]``;
- up: at once, but not again within ``scale_up_cooldown_s`` of the previous scale-up (a new worker needs
  that long to start and to show in the measurements);
- down: to the highest proposal of the last ``scale_down_delay_s`` and only once that long has passed
  since the last change in either direction (the stabilisation window: a burst shorter than the window
  never lets the count fall between its peaks).

The ceiling and the band are the hysteresis: 2 workers at 0.35 busy against a 0.6 target propose
``ceil(2 * 0.58) = 2``, since one worker would then run at 0.7, over the target.
"""

from __future__ import annotations

import collections
import dataclasses
import math

from fastml.errors import InvalidInput

UP = "up"
DOWN = "down"
HOLD = "hold"


@dataclasses.dataclass(frozen=True)
class AutoscaleConfig:
    """Bounds, targets and timings of the autoscaler (``fastml serve --workers auto`` flags).

    Attributes:
        min_workers: never fewer serving workers (>= 1).
        max_workers: never more (>= min_workers).
        target_utilization: CPU busy fraction per worker to aim at (1.0 = one core, all the time).
        target_queue_us: mean batcher queue wait per request to aim at, microseconds.
        tolerance: no change while the load ratio is within ``1 +- tolerance``.
        interval_s: how often the supervisor measures and asks the policy.
        scale_up_cooldown_s: at least this long between two scale-ups.
        scale_down_delay_s: the load must have allowed fewer workers for this long, and this long must have
            passed since the last change, before workers are removed.
    """

    min_workers: int = 1
    max_workers: int = 4
    target_utilization: float = 0.6
    target_queue_us: float = 5000.0
    tolerance: float = 0.1
    interval_s: float = 1.0
    scale_up_cooldown_s: float = 3.0
    scale_down_delay_s: float = 30.0

    def validate(self) -> AutoscaleConfig:
        """Refuse conflicting or meaningless settings, naming the flag.

        Raises:
            InvalidInput: min < 1, min > max, a non-positive target or interval, a negative delay, a NaN or an
                infinite interval, delay or cool-down.
        """
        if self.min_workers < 1:
            raise InvalidInput(f"--min-workers must be >= 1, got {self.min_workers}")
        if self.max_workers < self.min_workers:
            raise InvalidInput(f"--max-workers ({self.max_workers}) must be >= --min-workers ({self.min_workers})")
        if not 0 < self.target_utilization <= 4:
            raise InvalidInput(f"--target-utilization must be in (0, 4], got {self.target_utilization}")
        if not self.target_queue_us > 0:
            raise InvalidInput(f"--target-queue-us must be > 0, got {self.target_queue_us}")
        if not 0 <= self.tolerance < 1:
            raise InvalidInput(f"the autoscaler's tolerance must be in [0, 1), got {self.tolerance}")
        # Finite: an infinite interval never measures (nor replaces a dead worker), and a NaN delay or cool-down
        # fails every comparison (no cool-down at all, or a window that never empties and never scales down).
        if not 0 < self.interval_s < math.inf:
            raise InvalidInput(f"--autoscale-interval-s must be a finite number > 0, got {self.interval_s}")
        if not 0 <= self.scale_up_cooldown_s < math.inf:
            raise InvalidInput(f"--scale-up-cooldown-s must be a finite number >= 0, got {self.scale_up_cooldown_s}")
        if not 0 <= self.scale_down_delay_s < math.inf:
            raise InvalidInput(f"--scale-down-delay-s must be a finite number >= 0, got {self.scale_down_delay_s}")
        return self


@dataclasses.dataclass(frozen=True)
class LoadSample:
    """What the serving workers did over one interval.

    Attributes:
        workers: how many serving workers were measured (each over the whole interval).
        utilization: their mean CPU busy fraction (CPU seconds / wall seconds; 1.0 = one core).
        queue_us: mean time a request waited in a batcher queue, microseconds (0 with no request).
    """

    workers: int
    utilization: float
    queue_us: float = 0.0


@dataclasses.dataclass(frozen=True)
class Decision:
    """The policy's answer: the desired worker count, which way it moved, and why (for the log)."""

    desired: int
    direction: str  # UP, DOWN or HOLD
    reason: str


class AutoscalePolicy:
    """Desired worker count from load samples (see the module docstring for the rule).

    Args:
        config: validated :class:`AutoscaleConfig`.
        initial: the starting desired count (default ``config.min_workers``), clamped to the bounds.
        now_s: the time the count was set (the down delay counts from it).
    """

    def __init__(self, config: AutoscaleConfig, initial: int | None = None, now_s: float = 0.0):
        self.config = config.validate()
        start = config.min_workers if initial is None else initial
        self.desired = min(max(start, config.min_workers), config.max_workers)
        self._last_change_s = now_s
        self._last_up_s = -math.inf
        # (time, proposal) of the last scale_down_delay_s: the stabilisation window for scaling down.
        self._proposals: collections.deque[tuple[float, int]] = collections.deque()

    def proposal(self, sample: LoadSample) -> tuple[int, float]:
        """The worker count this one sample asks for, and the load ratio behind it."""
        cfg = self.config
        ratio = max(sample.utilization / cfg.target_utilization, sample.queue_us / cfg.target_queue_us)
        measured = max(sample.workers, 1)
        if abs(ratio - 1.0) <= cfg.tolerance:
            want = measured
        else:
            # The small epsilon keeps 2 workers * 1.5 = 3.0000000000000004 from asking for 4; an infinite signal
            # (overloaded) asks for the most.
            want = math.ceil(min(measured * ratio, cfg.max_workers) - 1e-9)
        return min(max(want, cfg.min_workers), cfg.max_workers), ratio

    def observe(self, now_s: float, sample: LoadSample | None) -> Decision:
        """Take one interval's measurement and return the (possibly new) desired count.

        Args:
            now_s: the current time, any monotone clock (seconds).
            sample: the measurement, or None when nothing could be measured (no serving worker reported
                over the whole interval): the count is kept, and the decision says why.
        """
        cfg = self.config
        if sample is None or sample.workers < 1:
            return Decision(
                self.desired, HOLD, "no measurement this interval (no worker reported twice); keeping the count"
            )
        if math.isnan(sample.utilization) or math.isnan(sample.queue_us):
            return Decision(
                self.desired,
                HOLD,
                f"no usable measurement this interval (utilization {sample.utilization}, queue {sample.queue_us} us);"
                " keeping the count",
            )
        want, ratio = self.proposal(sample)
        why = (
            f"utilization {sample.utilization:.2f} (target {cfg.target_utilization:.2f}), "
            f"queue {sample.queue_us:.0f} us (target {cfg.target_queue_us:.0f} us) over {sample.workers} "
            f"worker(s): load ratio {ratio:.2f}"
        )
        window = self._proposals
        window.append((now_s, want))
        # A proposal stands until the next one: keep the one in force when the window opened, so that an interval
        # without samples (a worker starting or draining, no measurement) never counts as low load.
        while len(window) > 1 and window[1][0] <= now_s - cfg.scale_down_delay_s:
            window.popleft()
        if want > self.desired:
            if now_s - self._last_up_s < cfg.scale_up_cooldown_s:
                return Decision(self.desired, HOLD, f"{why}; wants {want}, in the scale-up cool-down")
            before = self.desired
            self.desired = want
            self._last_up_s = self._last_change_s = now_s
            return Decision(want, UP, f"{before} -> {want}: {why}")
        peak = max(p for _, p in window)
        if peak < self.desired and now_s - self._last_change_s >= cfg.scale_down_delay_s:
            before = self.desired
            self.desired = peak
            self._last_change_s = now_s
            return Decision(
                peak, DOWN, f"{before} -> {peak}: {why} (highest proposal of the last {cfg.scale_down_delay_s:g} s)"
            )
        return Decision(self.desired, HOLD, why)


__all__ = ["DOWN", "HOLD", "UP", "AutoscaleConfig", "AutoscalePolicy", "Decision", "LoadSample"]
