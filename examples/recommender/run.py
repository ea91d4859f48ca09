"""Real-time recommendations (A/B, promotion, canary rollback): ``python examples/recommender/run.py [--quick] [--out DIR]`` (same as ``fastml example run recommender``)."""

import sys

from fastml.examples import main

if __name__ == "__main__":
    sys.exit(main("recommender", sys.argv[1:]))
