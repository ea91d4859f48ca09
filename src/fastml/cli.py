"""The ``fastml`` command: one subcommand group per module.

Each group lives beside its module (``fastml/<module>/cli.py``) and exposes ``add_parser(subparsers)``;
this file only lists them, so ``fastml --help`` imports nothing heavy. Every handler returns an exit
code; fastml errors are printed as one line and exit 2 (bad input) or 1 (anything else).
"""

from __future__ import annotations

import argparse
import importlib
import sys

# group name -> module defining add_parser(subparsers) for it
GROUPS = {
    "serve": "fastml.server.cli",
    "registry": "fastml.registry.cli",
    "train": "fastml.pipeline.cli",
    "runs": "fastml.pipeline.cli",
    "features": "fastml.features.cli",
    "monitor": "fastml.monitoring.cli",
    "governance": "fastml.governance.cli",
    "audit": "fastml.governance.cli",
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastml", description="fastml: serve, register, train, monitor and govern ONNX models.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="group", metavar="COMMAND")
    wanted = argv[0] if argv and argv[0] in GROUPS else None
    loaded: set[str] = set()
    for group, module in GROUPS.items():
        if wanted is not None and GROUPS[wanted] != module:
            # Only the module for the requested group is imported; the others get a placeholder entry.
            sub.add_parser(group, help=f"(see fastml {group} --help)")
            continue
        if module in loaded:
            continue
        loaded.add(module)
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("fastml"):
                sub.add_parser(group, help="(not available in this build)")
                continue
            raise
        mod.add_parser(sub)
    return parser


def _version() -> str:
    from fastml import __version__

    return f"fastml {__version__}"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    from fastml.errors import FastMLError, InvalidInput, NotFound

    try:
        return int(handler(args) or 0)
    except FastMLError as exc:
        print(f"fastml: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, (InvalidInput, NotFound)) else 1


if __name__ == "__main__":
    sys.exit(main())
