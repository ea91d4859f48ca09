"""Healthcare diagnosis (accuracy bar, HIPAA, SHAP, human review, audit): ``python examples/healthcare/run.py [--quick] [--out DIR]`` (same as ``fastml example run healthcare``)."""

import sys

from fastml.examples import main

if __name__ == "__main__":
    sys.exit(main("healthcare", sys.argv[1:]))
