"""``fastml example list`` and ``fastml example run NAME [--quick] [--out DIR]``."""

from __future__ import annotations

import argparse
import json


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("example", help="run the end-to-end examples (workflow, recommender, healthcare, fraud)")
    sub = p.add_subparsers(dest="example_command", metavar="COMMAND", required=True)
    c = sub.add_parser("list", help="the examples and what each shows")
    c.add_argument("--json", action="store_true", help="print JSON")
    c.set_defaults(handler=_list)
    c = sub.add_parser(
        "run",
        help="run one example on the current FASTML_HOME; prints a summary and writes summary.json",
        description="Run one example. Options after NAME go to the example (--quick, --out DIR).",
    )
    c.add_argument("name", help="example name (fastml example list)")
    c.add_argument("example_args", nargs=argparse.REMAINDER, help="--quick, --out DIR")
    c.set_defaults(handler=_run)


def _list(args) -> int:
    from fastml.examples import EXAMPLES

    if args.json:
        print(json.dumps([{"name": name, "description": what} for name, (_, what) in EXAMPLES.items()], indent=2))
        return 0
    for name, (_, what) in EXAMPLES.items():
        print(f"{name:<12} {what}")
    return 0


def _run(args) -> int:
    from fastml.examples import main

    return main(args.name, args.example_args)
