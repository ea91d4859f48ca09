"""Put a bench_server.py result (results.md) into benchmarks/README.md as the `## server` section.

Usage: python benchmarks/server/record_readme.py RESULTS_MD
Only the `## server` section is replaced (or appended); other sections are left as they are.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"

PREFACE = """## server

`python benchmarks/bench_server.py` (about 20 minutes; `--quick` for a shorter run) measures, in one
run: raw ONNX Runtime in-process, the peers KServe 0.21 and PyTriton 0.7 (installed by
`benchmarks/peers/install.sh`), and `fastml serve`, one server at a time, with perf_analyzer (HTTP, binary
tensors, batch 1) at concurrency 1, 8 and 32 on the MLP and the 100-tree GBT, wrk, and the fastml
harness open loop at one fixed rate for all. **Server CPU per inference** = utime+stime of the server
process and all its descendants from `/proc/<pid>/stat` over each run, divided by the inferences the
server itself counted over that run (statistics extension; KServe: its Prometheus counter).

Measured on the 2-core development machine (AMD EPYC) **while builds and test runs were using
it too** (load average at the start of the run is in the header): every
number is noisy and the load generator competes with the server for the same two cores. Compare
within the run, as ratios; a rerun moves absolute numbers by tens of percent. "stability 50%" /
"100%" in a note means perf_analyzer could not meet its 20 % stability criterion in 8 windows.
"""


def main() -> int:
    body = Path(sys.argv[1]).read_text().strip()
    body = body.replace("### ", "#### ")  # nest the result's headings under the section
    section = PREFACE + "\n" + body + "\n"
    text = README.read_text() if README.exists() else "# Benchmarks\n"
    pattern = re.compile(r"^## server\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    README.write_text(text.rstrip("\n") + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
