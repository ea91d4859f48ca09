"""``python -m fastml.loadtest``: ``fastml loadtest`` (see :mod:`fastml.loadtest.cli`), run through the CLI's
entry point so that Ctrl-C, a closed pipe and fastml's errors end it as they end every command."""

import sys

from fastml.cli import main

sys.exit(main(["loadtest", *sys.argv[1:]]))
