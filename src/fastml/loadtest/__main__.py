"""``python -m fastml.loadtest`` (see :mod:`fastml.loadtest.cli`)."""

import sys

from fastml.loadtest.cli import main

sys.exit(main())
