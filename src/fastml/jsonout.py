"""JSON for the command line's ``--json`` output: NaN and infinities become ``null``.

``json.dumps`` writes them as ``NaN`` / ``Infinity``, which are not JSON: ``jq`` and strict parsers refuse the whole
document. Scores over an empty bin, a metric of a one-class fold or a stored non-finite value are legitimately not
numbers, so they are printed as null instead of breaking the output.
"""

from __future__ import annotations

import json
import math
from typing import Any


def finite(value: Any) -> Any:
    """``value`` with every NaN or infinite float (in nested dicts, lists and tuples) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """``json.dumps`` of :func:`finite` ``(value)``; ``allow_nan=False`` so a non-finite float that escaped (a
    numpy scalar converted by ``default``) fails loudly instead of printing NaN."""
    return json.dumps(finite(value), allow_nan=False, **kwargs)


__all__ = ["dumps", "finite"]
