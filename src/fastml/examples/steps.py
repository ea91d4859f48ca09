"""The harness every example runs on: checked steps, a summary on stdout and the same as ``summary.json``.

An example is a sequence of steps. Each step returns the figures it checked; a failed check ends the run
with :class:`StepFailed` naming the step and the figure, so a person and CI read the same outcome.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class StepFailed(Exception):
    """A step's own check did not hold; the message names the step and what was expected."""


@dataclass
class StepRecord:
    """One step's outcome: ``passed`` / ``failed``, its checked figures and the files it wrote."""

    number: int
    name: str
    outcome: str = "pending"
    duration_s: float = 0.0
    figures: dict[str, Any] = field(default_factory=dict)
    checks: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "name": self.name,
            "outcome": self.outcome,
            "duration_s": round(self.duration_s, 3),
            "figures": self.figures,
            "checks": self.checks,
            "files": self.files,
            "error": self.error,
        }


class Step:
    """The handle a step function receives: record figures and files, and check them."""

    def __init__(self, record: StepRecord) -> None:
        self.record = record

    def figure(self, name: str, value: Any) -> Any:
        """Record a figure (a number, a string or a small dict) under ``name`` and return it."""
        self.record.figures[name] = _plain(value)
        return value

    def file(self, name: str, path: str | os.PathLike) -> Path:
        """Record a file the step wrote (a report, a picture) under ``name``."""
        self.record.files[name] = str(Path(path).absolute())
        return Path(path)

    def check(self, condition: bool, what: str) -> None:
        """Require ``condition``; ``what`` says what it means when it holds.

        Raises:
            StepFailed: the condition does not hold.
        """
        if not condition:
            raise StepFailed(f"step {self.record.number} ({self.record.name}): check failed: {what}")
        self.record.checks.append(what)
        print(f"  ok: {what}", flush=True)

    def say(self, text: str) -> None:
        print(f"  {text}", flush=True)


class Run:
    """Runs steps in order, prints each as it goes, and writes ``summary.json`` at the end (also on failure).

    Args:
        example: the example's name, the title of the summary.
        out_dir: where reports and ``summary.json`` go.
        quick: whether the run uses its quick sizes (recorded in the summary).
    """

    def __init__(self, example: str, out_dir: str | os.PathLike, *, quick: bool) -> None:
        self.example = example
        self.out_dir = Path(out_dir).absolute()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.quick = quick
        self.steps: list[StepRecord] = []
        self.started = time.monotonic()

    def step(self, name: str, fn: Callable[[Step], None]) -> None:
        record = StepRecord(len(self.steps) + 1, name)
        self.steps.append(record)
        print(f"\n[{record.number}] {name}", flush=True)
        t0 = time.monotonic()
        try:
            fn(Step(record))
        except BaseException as exc:
            record.outcome = "failed"
            record.error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            record.duration_s = time.monotonic() - t0
        record.outcome = "passed"

    @property
    def summary_path(self) -> Path:
        return self.out_dir / "summary.json"

    def summary(self) -> dict[str, Any]:
        passed = bool(self.steps) and all(s.outcome == "passed" for s in self.steps)
        return {
            "example": self.example,
            "quick": self.quick,
            "passed": passed,
            "duration_s": round(time.monotonic() - self.started, 3),
            "fastml_home": os.environ.get("FASTML_HOME"),
            "out_dir": str(self.out_dir),
            "steps": [s.to_dict() for s in self.steps],
        }

    def finish(self) -> dict[str, Any]:
        """Write ``summary.json`` and print the short summary with links to every file the steps wrote."""
        doc = self.summary()
        self.summary_path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
        print(f"\n{self.example}: {'all steps passed' if doc['passed'] else 'FAILED'} in {doc['duration_s']:.1f} s")
        for s in self.steps:
            figures = ", ".join(f"{k} {_short(v)}" for k, v in list(s.figures.items())[:4])
            print(f"  {s.number:>2}. {s.name:<48} {s.outcome:<7} {figures}")
            if s.error:
                print(f"      {s.error}")
        files = [(f"{s.number}. {k}", v) for s in self.steps for k, v in s.files.items()]
        if files:
            print("reports:")
            for label, path in files:
                print(f"  {label}: {path}")
        print(f"summary: {self.summary_path}", flush=True)
        return doc


def example_main(name: str, doc: str, run: Callable[..., dict], argv: list[str] | None) -> int:
    """An example's ``main``: ``--quick`` and ``--out`` parsed from ``argv``; 0 when every step passed.

    Args:
        name: the example's name. doc: its module docstring (the first line is the help text).
        run: its ``run(out_dir, quick=...) -> summary``.
    """
    parser = argparse.ArgumentParser(prog=f"fastml example run {name}", description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (the test suite's mode)")
    parser.add_argument("--out", default=None, help=f"output directory (default $FASTML_HOME/examples/{name})")
    args = parser.parse_args(argv)
    from fastml.examples import default_out

    return 0 if run(args.out or default_out(name), quick=args.quick)["passed"] else 1


def registered_ref(result: Any) -> str:
    """The ``name:version`` a pipeline run registered.

    Raises:
        StepFailed: the run registered nothing.
    """
    if not result.model_ref:
        raise StepFailed(f"pipeline run {result.run_id} registered no model")
    return str(result.model_ref)


def _plain(value: Any) -> Any:
    """Numbers and containers as JSON-friendly Python values (numpy scalars become floats and ints)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."
