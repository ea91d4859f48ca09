"""The ten-step workflow: ``python examples/workflow/run.py [--quick] [--out DIR]`` (same as ``fastml example run workflow``)."""

import sys

from fastml.examples import main

if __name__ == "__main__":
    sys.exit(main("workflow", sys.argv[1:]))
