"""Fraud detection (feature store, approvals, joined features, live drift alert): ``python examples/fraud/run.py [--quick] [--out DIR]`` (same as ``fastml example run fraud``)."""

import sys

from fastml.examples import main

if __name__ == "__main__":
    sys.exit(main("fraud", sys.argv[1:]))
