"""The machine-readable result every benchmark writes with ``--json PATH`` (read by CI and run_all.py).

Schema::

    {"benchmark": "bench_engine.py", "quick": true, "notes": [str, ...],
     "rows": [{"name": str, "baseline": str, "baseline_value": float, "fastml_value": float, "unit": str,
               "ratio": float, "target": float, "higher_is_better": true}]}

``ratio`` is oriented so that bigger is better for fastml (baseline time / fastml time, or fastml rate /
baseline rate), and ``target`` is the ratio documented in benchmarks/README.md ("CI targets"). CI fails a
row only when ``ratio < target / 2``: a real regression, not noise from a busy machine.

``goal`` (optional) is the ratio the product set out to reach where fastml does not reach it yet: the row
then gates CI on ``target`` (a floor under what fastml measures today, so a regression still fails) and
the table says whether the goal was met, so an unmet goal is visible in every run instead of being
either hidden or a permanently red CI.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

TIME_UNITS = {"ns", "us", "ms", "s", "us/row", "us/inference", "us/request"}


@dataclass
class Row:
    """One comparison: fastml against a baseline measured in the same run."""

    name: str
    baseline: str
    baseline_value: float
    fastml_value: float
    unit: str
    ratio: float
    target: float
    higher_is_better: bool = True
    goal: float | None = None

    def passes(self) -> bool:
        """False only for a real regression: the ratio fell below half its target."""
        return self.ratio >= self.target / 2


def time_row(
    name: str, baseline: str, baseline_s: float, fastml_s: float, unit: str, target: float, goal: float | None = None
) -> Row:
    """A row for a cost (time, CPU): ratio = baseline / fastml, so > 1 means fastml is cheaper."""
    return Row(
        name, baseline, float(baseline_s), float(fastml_s), unit, _div(baseline_s, fastml_s), float(target), goal=goal
    )


def rate_row(
    name: str,
    baseline: str,
    baseline_rate: float,
    fastml_rate: float,
    unit: str,
    target: float,
    goal: float | None = None,
) -> Row:
    """A row for a rate (rows/s, requests/s): ratio = fastml / baseline."""
    return Row(
        name,
        baseline,
        float(baseline_rate),
        float(fastml_rate),
        unit,
        _div(fastml_rate, baseline_rate),
        float(target),
        goal=goal,
    )


def _div(num: float, den: float) -> float:
    return float(num) / float(den) if den else float("inf")


@dataclass
class Report:
    """Collects rows (and notes on what could not be measured) and writes them as JSON."""

    benchmark: str
    quick: bool = False
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row

    def note(self, text: str) -> None:
        """Record (and print) why something was not measured, so a reader of the CI log sees it."""
        self.notes.append(text)
        print(f"note: {text}", file=sys.stderr, flush=True)

    def to_dict(self) -> dict:
        return {
            "benchmark": self.benchmark,
            "quick": self.quick,
            "notes": self.notes,
            "rows": [asdict(r) for r in self.rows],
        }

    def write(self, path: Path | None) -> None:
        """Write the JSON file when ``--json`` was given; always print the rows as a markdown table."""
        print("\n" + table(self.rows))
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The two options every benchmark shares (``--quick`` may already exist with its own help)."""
    if not any("--quick" in a.option_strings for a in parser._actions):
        parser.add_argument("--quick", action="store_true", help="a few seconds to ~30 s: the CI smoke run")
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        metavar="PATH",
        help="also write the comparison rows as JSON (see benchmarks/benchjson.py)",
    )


def table(rows: list[Row] | list[dict]) -> str:
    """Markdown table: name, baseline, fastml, ratio, target, verdict."""
    out = [
        "| benchmark row | baseline | baseline value | fastml value | ratio | target | CI | goal |",
        "|---|---|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        d = asdict(r) if isinstance(r, Row) else r
        ok = d["ratio"] >= d["target"] / 2
        goal = d.get("goal")
        goal_text = "" if goal is None else f"{goal:g}x {'met' if d['ratio'] >= goal else 'NOT MET'}"
        out.append(
            f"| {d['name']} | {d['baseline']} | {_num(d['baseline_value'])} {d['unit']} | "
            f"{_num(d['fastml_value'])} {d['unit']} | {d['ratio']:.2f}x | {d['target']:g}x | "
            f"{'ok' if ok else 'REGRESSION'} | {goal_text} |"
        )
    return "\n".join(out)


def _num(v: float) -> str:
    if v >= 1000:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"
