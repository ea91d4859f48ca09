"""Capacity on paper: workers and replicas for a request rate and a p99 target, and the autoscaler on a bursty
trace, from what benchmarks/bench_workers.py measured.

    python scripts/capacity.py [--bench-json PATH] [--rate R] [--p99-ms T] [--workers-per-replica W]
                               [--simulate] [--peak-rate R] [--seed N]

Inputs (the ``capacity`` section of bench_workers.py's JSON, or --per-worker-rps / --unloaded-ms):

- mu, one worker's throughput at saturation (its --workers 1 run: 32 closed-loop clients), requests/s;
- d0, the unloaded latency (c=1 p50) minus one service time 1/mu: the fixed part of every request's latency
  (client, network, HTTP framing) that queueing does not change.

Model (stated, not measured): each worker is one server of an M/M/c queue (Poisson arrivals, exponential
service at rate mu, first come first served across c workers; SO_REUSEPORT spreads connections, not requests,
so this is optimistic for few long-lived connections). The response time is ``d0 + W + S``: ``P(W > t) =
C(c, a) e^{-(c mu - lambda) t}`` with C the Erlang C probability and ``S ~ Exp(mu)``; the p99 is solved
numerically. Workers are rounded up to whole replicas of ``--workers-per-replica`` (a pod's cores), plus one
for a rolling update or a lost node (``--spare``).

The simulation drives fastml's own policy class (fastml.server.autoscale.AutoscalePolicy) one interval at a
time over a seeded bursty trace: a worker it adds serves after the start-up time bench_workers measured (or
--startup-s); each interval the workers' utilisation is lambda / (c mu) and their queue time the M/M/c mean
wait (with a backlog carried over while overloaded). It reports workers over time and the seconds spent above
the p99 target, against fixed provisioning at the trace's peak and at its mean.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import math
import platform
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


# ----- M/M/c -------------------------------------------------------------------------------------------
def erlang_c(c: int, offered: float) -> float:
    """Probability that an arrival waits in an M/M/c queue with ``offered = lambda / mu`` (< c)."""
    if offered >= c:
        return 1.0
    # Erlang B by its stable recurrence, then C from B.
    b = 1.0
    for k in range(1, c + 1):
        b = offered * b / (k + offered * b)
    rho = offered / c
    return b / (1 - rho + rho * b)


def p_response_above(t_s: float, c: int, rate: float, mu: float) -> float:
    """P(W + S > t) for M/M/c (wait W, service S ~ Exp(mu))."""
    wait_p = erlang_c(c, rate / mu)
    theta = c * mu - rate
    tail_s = math.exp(-mu * t_s)
    if abs(theta - mu) < 1e-9:
        both = (1 + mu * t_s) * math.exp(-mu * t_s)
    else:
        both = (theta * math.exp(-mu * t_s) - mu * math.exp(-theta * t_s)) / (theta - mu)
    return (1 - wait_p) * tail_s + wait_p * both


def p99_s(c: int, rate: float, mu: float, d0_s: float) -> float:
    """p99 response time (seconds) of c workers at ``rate``; inf when c workers cannot keep up."""
    if rate >= c * mu:
        return math.inf
    lo, hi = 0.0, 1.0 / mu
    while p_response_above(hi, c, rate, mu) > 0.01:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        if p_response_above(mid, c, rate, mu) > 0.01:
            lo = mid
        else:
            hi = mid
    return d0_s + hi


def mean_wait_s(c: int, rate: float, mu: float) -> float:
    """Mean queue wait of M/M/c (inf when overloaded)."""
    if rate >= c * mu:
        return math.inf
    return erlang_c(c, rate / mu) / (c * mu - rate)


def workers_for(rate: float, p99_target_s: float, mu: float, d0_s: float, limit: int = 100_000) -> int:
    """Fewest workers whose p99 meets the target at ``rate``."""
    floor_s = d0_s + math.log(100) / mu  # the p99 of the service alone, with no wait at all
    if floor_s >= p99_target_s:
        raise SystemExit(
            f"capacity.py: a p99 of {p99_target_s * 1e3:g} ms is below the p99 of one unloaded request here "
            f"({floor_s * 1e3:.2f} ms): no number of workers meets it"
        )
    c = max(1, math.ceil(rate / mu))
    while p99_s(c, rate, mu, d0_s) > p99_target_s:
        c += 1
        if c > limit:
            raise SystemExit("capacity.py: more than 100,000 workers; check the inputs")
    return c


# ----- inputs --------------------------------------------------------------------------------------------
def load_capacity(path: Path | None) -> tuple[dict, str]:
    """The ``capacity`` section of a bench_workers.py JSON: the given file, else the newest under
    .cache/bench_results/*/ (python benchmarks/run_all.py) or benchmarks/measured/."""
    candidates = [path] if path else []
    if path is None:
        runs = sorted(glob.glob(str(ROOT / ".cache" / "bench_results" / "*" / "bench_workers.json")))
        candidates = [Path(p) for p in reversed(runs)] + [ROOT / "benchmarks" / "measured" / "bench_workers.json"]
    for p in candidates:
        if p.is_file():
            data = json.loads(p.read_text())
            if "capacity" not in data:
                raise SystemExit(f"capacity.py: {p} has no 'capacity' section (written by bench_workers.py --json)")
            cap = dict(data["capacity"])
            for row in data.get("rows", []):  # a worker's start-up time: the reaction row's baseline
                if row["name"].startswith("autoscaler reaction") and "worker_startup_s" not in cap:
                    cap["worker_startup_s"] = row["baseline_value"]
            return cap, str(p)
    raise SystemExit(
        "capacity.py: no bench_workers.json found; run `python benchmarks/bench_workers.py --json PATH` and pass "
        "--bench-json PATH, or give --per-worker-rps and --unloaded-ms"
    )


# ----- simulation ----------------------------------------------------------------------------------------
def bursty_trace(duration_s: int, base: float, peak: float, seed: int) -> list[float]:
    """Requests/s per second: a daily-shape ramp plus bursts to ``peak`` lasting 20-90 s, seeded."""
    rng = random.Random(seed)
    rates = []
    burst_left, burst_rate = 0, base
    for t in range(duration_s):
        ramp = base * (1 + 0.5 * math.sin(2 * math.pi * t / duration_s))
        if burst_left == 0 and rng.random() < 1 / 120:
            burst_left, burst_rate = rng.randint(20, 90), rng.uniform(0.6, 1.0) * peak
        if burst_left:
            burst_left -= 1
            rates.append(max(ramp, burst_rate))
        else:
            rates.append(ramp * rng.uniform(0.9, 1.1))
    return rates


def simulate(trace, mu, d0_s, p99_target_s, config, startup_s) -> dict:
    """Run the policy over ``trace`` (one rate per second); workers serve ``startup_s`` after being added."""
    from fastml.server.autoscale import AutoscalePolicy, LoadSample

    # Warm start: as many workers as the first second's rate needs at the target utilisation.
    first = math.ceil(trace[0] / (mu * config.target_utilization))
    policy = AutoscalePolicy(config, initial=first, now_s=0.0)
    serving = policy.desired
    pending: list[float] = []  # times at which starting workers begin serving
    backlog = 0.0  # requests queued beyond what the serving workers could absorb
    above_s = 0
    worker_s = 0.0
    series = []
    step = config.interval_s
    t = 0.0
    for second, rate in enumerate(trace):
        # The supervisor's loop: starts finish, the policy samples every interval_s, workers start or retire.
        serving += sum(1 for ready in pending if ready <= t)
        pending = [ready for ready in pending if ready > t]
        backlog = max(0.0, backlog + rate - serving * mu)  # one second of arrivals against one of service
        util = 1.0 if backlog > 0 else min(1.0, rate / (serving * mu))
        wait, p99 = _now(serving, rate, backlog, mu, d0_s)
        if second % max(1, round(step)) == 0:
            decision = policy.observe(t, LoadSample(serving, util, wait * 1e6))
            want = decision.desired
            starting = len(pending)
            if want > serving + starting:
                pending += [t + startup_s] * (want - serving - starting)
            elif want < serving + starting:
                drop = serving + starting - want
                while drop and pending:
                    pending.pop()
                    drop -= 1
                serving -= drop
        above_s += p99 > p99_target_s
        worker_s += serving + len(pending)  # a starting worker already holds its core
        series.append((second, rate, serving, len(pending), util, p99))
        t += 1.0
    return {"series": series, "above_s": above_s, "worker_s": worker_s}


def _now(workers: int, rate: float, backlog: float, mu: float, d0_s: float) -> tuple[float, float]:
    """(mean queue wait, p99) for one second: M/M/c when the workers keep up, else the backlog drains first."""
    if backlog > 0 or rate >= workers * mu:
        wait = backlog / (workers * mu) + 1.0 / mu
        return wait, d0_s + wait + 4.6 / mu  # 4.6 / mu: an exponential service's p99
    return mean_wait_s(workers, rate, mu), p99_s(workers, rate, mu, d0_s)


def fixed(trace, workers, mu, d0_s, p99_target_s) -> int:
    """Seconds above the p99 target with a fixed worker count (overload carried as a backlog)."""
    backlog, above = 0.0, 0
    for rate in trace:
        backlog = max(0.0, backlog + rate - workers * mu)
        above += _now(workers, rate, backlog, mu, d0_s)[1] > p99_target_s
    return above


# ----- main --------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench-json", type=Path, default=None, help="bench_workers.py --json output")
    parser.add_argument("--per-worker-rps", type=float, default=None, help="override mu (requests/s per worker)")
    parser.add_argument("--unloaded-ms", type=float, default=None, help="override the unloaded p50 latency (ms)")
    parser.add_argument("--rate", type=float, default=20_000.0, help="requests/s to plan for (default 20000)")
    parser.add_argument("--p99-ms", type=float, default=25.0, help="p99 latency target (default 25 ms)")
    parser.add_argument("--workers-per-replica", type=int, default=4, help="workers (cores) per replica (pod)")
    parser.add_argument("--spare", type=int, default=1, help="replicas beyond the need (rolling update, a node)")
    parser.add_argument("--simulate", action="store_true", help="also run the autoscaler on a bursty trace")
    parser.add_argument("--trace-s", type=int, default=1800, help="simulated seconds (default 1800)")
    parser.add_argument("--peak-rate", type=float, default=None, help="burst peak, requests/s (default --rate)")
    parser.add_argument(
        "--startup-s", type=float, default=None, help="a new worker's start-up time (default: measured, else 2 s)"
    )
    parser.add_argument("--max-workers", type=int, default=None, help="autoscaler bound (default: peak need + 1)")
    parser.add_argument("--min-workers", type=int, default=1, help="autoscaler bound (default 1)")
    parser.add_argument("--target-utilization", type=float, default=None, help="policy target (default 0.6)")
    parser.add_argument("--scale-down-delay-s", type=float, default=None, help="policy delay (default 30)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    if args.per_worker_rps and args.unloaded_ms:
        cap, source = {"per_worker_rps": args.per_worker_rps, "unloaded_p50_us": args.unloaded_ms * 1e3}, "flags"
    else:
        cap, source = load_capacity(args.bench_json)
        if args.per_worker_rps:
            cap["per_worker_rps"] = args.per_worker_rps
        if args.unloaded_ms:
            cap["unloaded_p50_us"] = args.unloaded_ms * 1e3
    mu = float(cap["per_worker_rps"])
    d0_s = max(0.0, cap["unloaded_p50_us"] / 1e6 - 1.0 / mu)
    target_s = args.p99_ms / 1e3
    if not (mu > 0 and args.rate > 0 and target_s > 0 and args.workers_per_replica >= 1):
        raise SystemExit("capacity.py: rates, the p99 target and --workers-per-replica must be positive")

    print(f"# capacity plan ({datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC}, {platform.node() or 'host'})")
    print(f"- inputs from {source}")
    for line in cap.get("machine", []):
        print(f"  {line}")
    print(
        f"- mu = {mu:,.0f} requests/s per worker; unloaded p50 {cap['unloaded_p50_us'] / 1e3:.2f} ms "
        f"(fixed part d0 = {d0_s * 1e3:.2f} ms, service 1/mu = {1e3 / mu:.2f} ms)"
    )
    c = workers_for(args.rate, target_s, mu, d0_s)
    replicas = math.ceil(c / args.workers_per_replica) + args.spare
    print(f"\n## {args.rate:,.0f} requests/s at p99 <= {args.p99_ms:g} ms (M/M/c)\n")
    print("| workers | utilisation | p99 (ms) |")
    print("|---:|---:|---:|")
    for n in sorted({max(1, math.ceil(args.rate / mu)), c - 1, c, c + 1} - {0}):
        p = p99_s(n, args.rate, mu, d0_s)
        shown = "overloaded" if math.isinf(p) else f"{p * 1e3:.2f}"
        print(f"| {n} | {args.rate / (n * mu):.2f} | {shown} |")
    print(
        f"\n-> {c} workers: {replicas} replicas of {args.workers_per_replica} workers "
        f"({math.ceil(c / args.workers_per_replica)} needed + {args.spare} spare)"
    )

    if args.simulate:
        from fastml.server.autoscale import AutoscaleConfig

        peak = args.peak_rate or args.rate
        trace = bursty_trace(args.trace_s, base=peak / 4, peak=peak, seed=args.seed)
        need_peak = workers_for(max(trace), target_s, mu, d0_s)
        need_mean = workers_for(sum(trace) / len(trace), target_s, mu, d0_s)
        tuned = {
            k: v
            for k, v in (
                ("target_utilization", args.target_utilization),
                ("scale_down_delay_s", args.scale_down_delay_s),
            )
            if v is not None
        }
        config = AutoscaleConfig(
            min_workers=args.min_workers, max_workers=args.max_workers or need_peak + 1, **tuned
        ).validate()
        startup_s = args.startup_s if args.startup_s is not None else float(cap.get("worker_startup_s", 2.0))
        sim = simulate(trace, mu, d0_s, target_s, config, startup_s)
        print(
            f"\n## autoscaler on a bursty trace ({args.trace_s} s, mean {sum(trace) / len(trace):,.0f}/s, "
            f"peak {max(trace):,.0f}/s, seed {args.seed})\n"
        )
        print(
            f"policy: AutoscaleConfig({', '.join(f'{k}={v}' for k, v in vars(config).items())}); "
            f"a new worker serves {startup_s:.1f} s after the decision\n"
        )
        print("| t (s) | rate (/s) | serving | starting | utilisation | p99 (ms) |")
        print("|---:|---:|---:|---:|---:|---:|")
        for second, rate, serving, starting, util, p99 in sim["series"][:: max(1, args.trace_s // 30)]:
            shown = f"{p99 * 1e3:.1f}"
            print(f"| {second} | {rate:,.0f} | {serving} | {starting} | {util:.2f} | {shown} |")
        total = len(trace)
        print("\n| provisioning | worker-seconds | seconds above p99 target |")
        print("|---|---:|---:|")
        print(
            f"| autoscaled (1-{config.max_workers}) | {sim['worker_s']:,.0f} | {sim['above_s']} "
            f"({100 * sim['above_s'] / total:.1f} %) |"
        )
        for label, n in (("fixed at the peak's need", need_peak), ("fixed at the mean's need", need_mean)):
            above = fixed(trace, n, mu, d0_s, target_s)
            print(f"| {label} ({n}) | {n * total:,.0f} | {above} ({100 * above / total:.1f} %) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
