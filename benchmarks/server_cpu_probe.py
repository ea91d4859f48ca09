"""Server CPU time per inference under perf_analyzer load (the cost that decides machine count).

Usage: python benchmarks/server_cpu_probe.py HOST:PORT MODEL PID[,PID...] [--concurrency 1,8,32] [--pa PATH]

For each concurrency: reads utime+stime of the server processes from /proc and the model's
inference_count from the statistics endpoint, runs perf_analyzer (HTTP, binary tensors, batch 1),
reads both again, and prints server CPU us per inference next to throughput and latency. The load
generator shares the machine, so throughput is capped by it; the CPU per inference is not.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import tempfile
import urllib.request


def cpu_s(pids: list[int]) -> float:
    tck = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of the full line)
    return total / tck


def count(url: str, model: str) -> int:
    with urllib.request.urlopen(f"http://{url}/v2/models/{model}/stats") as r:
        return sum(m["inference_count"] for m in json.load(r)["model_stats"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("model")
    ap.add_argument("pids")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--pa", default=".cache/perf_analyzer/pa")
    ap.add_argument("--interval-ms", type=int, default=2000)
    a = ap.parse_args()
    pids = [int(p) for p in a.pids.split(",")]
    print("| concurrency | infer/s | p50 us | p99 us | server CPU us/inference |")
    print("|---:|---:|---:|---:|---:|")
    for c in a.concurrency.split(","):
        with tempfile.NamedTemporaryFile(suffix=".csv") as f:
            c0, n0 = cpu_s(pids), count(a.url, a.model)
            # A busy machine is rarely stable within 20%; fall back to a looser criterion.
            for stability in ("50", "200"):
                subprocess.run(
                    [
                        a.pa,
                        "-m",
                        a.model,
                        "-u",
                        a.url,
                        "-i",
                        "http",
                        "--concurrency-range",
                        c,
                        "--measurement-interval",
                        str(a.interval_ms),
                        "--stability-percentage",
                        stability,
                        "--max-trials",
                        "6",
                        "-f",
                        f.name,
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.STDOUT,
                    timeout=300,
                )
                if os.path.getsize(f.name):
                    break
            c1, n1 = cpu_s(pids), count(a.url, a.model)
            row = next(csv.DictReader(open(f.name)))
        per = (c1 - c0) / max(1, n1 - n0) * 1e6
        print(
            f"| {c} | {float(row['Inferences/Second']):,.0f} | {row['p50 latency']} | {row['p99 latency']} | {per:.1f} |"
        )


if __name__ == "__main__":
    main()
