"""Governance benchmark: fairness metrics vs fairlearn, audit-log appends vs a plain fsynced JSON-lines file.

    python benchmarks/bench_governance.py [--quick] [--json PATH]

Side by side, in one run:
  * fairness: every metric of ``assess_fairness`` (per-group rates + 9 disparities) vs fairlearn computing
    the same set (one MetricFrame for the per-group table + its 6 disparity functions), on 2, 5 groups and
    2x5 intersections; the values are checked equal before timing;
  * audit: ``AuditLog.append`` (flock, tail read, SHA-256 chain, fsync, HEAD rename + fsyncs) vs appending
    the same JSON line to a file with one fsync and nothing else; and ``verify`` throughput.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchjson  # noqa: E402 - the benchmarks folder is not a package
from envinfo import machine_lines  # noqa: E402


def env_header() -> str:
    import fairlearn
    import msgspec
    import sklearn

    return "\n".join(
        [
            *machine_lines(),
            f"- numpy {np.__version__}, fairlearn {fairlearn.__version__}, scikit-learn {sklearn.__version__}, msgspec {msgspec.__version__}",
        ]
    )


def best_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return min(times)


def fairlearn_all(y, p, sf):
    from fairlearn import metrics as flm

    mf = flm.MetricFrame(
        metrics={
            "sel": flm.selection_rate,
            "tpr": flm.true_positive_rate,
            "fpr": flm.false_positive_rate,
            "count": flm.count,
        },
        y_true=y,
        y_pred=p,
        sensitive_features=sf,
    )
    out = {"by_group": mf.by_group}
    for name in (
        "demographic_parity_difference",
        "demographic_parity_ratio",
        "equal_opportunity_difference",
        "equal_opportunity_ratio",
        "equalized_odds_difference",
        "equalized_odds_ratio",
    ):
        out[name] = getattr(flm, name)(y, p, sensitive_features=sf)
    return out


def bench_fairness(n_rows: int, repeat: int, result: benchjson.Report | None = None) -> list[str]:
    from fastml.governance.fairness import assess_fairness

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, n_rows)
    p = rng.integers(0, 2, n_rows)
    cases = {
        "2 groups": rng.choice(["a", "b"], n_rows),
        "5 groups": rng.choice([f"g{i}" for i in range(5)], n_rows),
        "2x5 intersections": {
            "sex": rng.choice(["F", "M"], n_rows),
            "grp": rng.choice([f"g{i}" for i in range(5)], n_rows),
        },
    }
    rows = [
        "| sensitive features | rows | fairlearn (ms) | fastml (ms) | speed-up |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    if n_rows < 100_000:  # --quick: the one case CI checks, so the run stays short
        cases = {"2 groups": cases["2 groups"]}
    for label, sf in cases.items():
        fl_sf = sf if not isinstance(sf, dict) else __import__("pandas").DataFrame(sf)
        ours = assess_fairness(y, p, sf)
        theirs = fairlearn_all(y, p, fl_sf)
        for name in ("demographic_parity_difference", "equalized_odds_ratio"):
            assert abs(ours.value(name) - theirs[name]) < 1e-12, (label, name)
        t_fl = best_ms(lambda fl_sf=fl_sf: fairlearn_all(y, p, fl_sf), repeat)
        t_us = best_ms(lambda sf=sf: assess_fairness(y, p, sf), repeat)
        rows.append(f"| {label} | {n_rows:,} | {t_fl:.1f} | {t_us:.1f} | {t_fl / t_us:.1f}x |")
        if result is not None and label == "2 groups":
            result.add(
                benchjson.time_row(
                    f"fairness report, {n_rows:,} rows, 2 groups",
                    "fairlearn MetricFrame + disparity functions",
                    t_fl,
                    t_us,
                    "ms",
                    50.0,
                )
            )
    return rows


def bench_audit(n_entries: int) -> list[str]:
    from fastml.governance.audit import AuditLog, canonical_bytes

    details = {"reasons": [], "compliance": "pass", "fairness": {"demographic_parity_difference": 0.03}}
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / "plain.jsonl"
        fd = os.open(plain, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        lat_plain = []
        try:
            for i in range(n_entries):
                t0 = time.perf_counter()
                line = (
                    canonical_bytes(
                        {
                            "seq": i,
                            "at": dt.datetime.now(dt.UTC).isoformat(),
                            "actor": "bench",
                            "action": "registry.transition",
                            "target": f"m:{i}",
                            "details": details,
                        }
                    )
                    + b"\n"
                )
                os.write(fd, line)
                os.fsync(fd)
                lat_plain.append((time.perf_counter() - t0) * 1e6)
        finally:
            os.close(fd)
        log = AuditLog(Path(tmp) / "audit")
        lat_chain = []
        for i in range(n_entries):
            t0 = time.perf_counter()
            log.append(
                "registry.transition",
                target=f"m:{i}",
                before={"stage": "staging"},
                after={"stage": "production"},
                details=details,
                actor="bench",
            )
            lat_chain.append((time.perf_counter() - t0) * 1e6)
        t0 = time.perf_counter()
        res = log.verify()
        verify_s = time.perf_counter() - t0
        assert res.ok and res.entries == n_entries
    med_p, med_c = statistics.median(lat_plain), statistics.median(lat_chain)
    return [
        "| writer | entries | median append (us) | p90 append (us) | ratio to plain |",
        "| --- | ---: | ---: | ---: | ---: |",
        f"| plain JSON line + fsync (no chain, no lock) | {n_entries} | {med_p:.0f} | {np.percentile(lat_plain, 90):.0f} | 1.0x |",
        f"| fastml AuditLog.append (flock + chain + fsync + HEAD) | {n_entries} | {med_c:.0f} | {np.percentile(lat_chain, 90):.0f} | {med_c / med_p:.1f}x |",
        "",
        f"verify: {n_entries} entries in {verify_s * 1000:.1f} ms ({n_entries / verify_s:,.0f} entries/s)",
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    benchjson.add_arguments(ap)
    args = ap.parse_args()
    result = benchjson.Report("bench_governance.py", quick=args.quick)
    # --quick: the audit table is printed, not a CI row, and its fsyncs wait on a shared disk: 50 appends.
    n_rows, repeat, n_entries = (20_000, 1, 50) if args.quick else (200_000, 5, 1000)
    print("# fastml governance benchmark\n")
    print(env_header())
    print("\n## Fairness metrics: full report (per-group rates + disparities)\n")
    print("\n".join(bench_fairness(n_rows, repeat, result)))
    print("\n## Audit log appends (durable: every append fsynced)\n")
    print("\n".join(bench_audit(n_entries)))
    result.write(args.json)


if __name__ == "__main__":
    main()
