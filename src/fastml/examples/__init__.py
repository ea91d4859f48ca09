"""Runnable end-to-end examples: the ten-step workflow and the three use cases.

Each example is a module with ``run(out_dir, quick=...) -> summary`` and ``main(argv) -> exit code``;
``fastml example run NAME`` and ``python examples/NAME/run.py`` both call ``main``.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

EXAMPLES = {
    "workflow": ("fastml.examples.workflow", "the ten-step platform workflow, generate -> reports"),
    "recommender": ("fastml.examples.recommender", "A/B 90/10 with sticky users, promotion, canary rollback"),
    "healthcare": ("fastml.examples.healthcare", "accuracy bar, HIPAA, SHAP with predictions, review queue"),
    "fraud": ("fastml.examples.fraud", "feature store, tuning, approvals, live drift alert, bias, GDPR"),
}


def default_out(name: str) -> Path:
    """``$FASTML_HOME/examples/<name>``: where an example writes its reports unless told otherwise."""
    from fastml.config import get_settings

    return Path(get_settings().home) / "examples" / name


def main(name: str, argv: list[str] | None = None) -> int:
    """Run example ``name`` with its own command-line arguments."""
    from fastml.errors import NotFound

    if name not in EXAMPLES:
        raise NotFound(f"unknown example {name!r}; examples: {', '.join(EXAMPLES)}")
    from fastml.examples.steps import StepFailed

    module = importlib.import_module(EXAMPLES[name][0])
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    try:
        return int(module.main(argv))
    except StepFailed as exc:
        print(f"fastml example {name}: {exc}")
        return 1
