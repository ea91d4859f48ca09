"""The one table from the core's status codes to fastml.errors classes (STYLE.md: one boundary).

Both batchers (the native ``fastml._core.Batcher`` and the pure-Python ``ReferenceBatcher``) report
failures as integer codes; this module is the only place that turns a code into an exception.
"""

from __future__ import annotations

from fastml import errors

# Code numbers as in csrc/batcher.h `StatusCode`; tests/engine/test_errors.py checks they agree with
# fastml._core.STATUS_CODES and that every failure code has its own class.
OK = 0
INVALID_INPUT = 1
OVERLOADED = 2
DEADLINE_EXCEEDED = 3
UNAVAILABLE = 4
INTERNAL = 5

STATUS_NAMES = {
    "OK": OK,
    "INVALID_INPUT": INVALID_INPUT,
    "OVERLOADED": OVERLOADED,
    "DEADLINE_EXCEEDED": DEADLINE_EXCEEDED,
    "UNAVAILABLE": UNAVAILABLE,
    "INTERNAL": INTERNAL,
}

CORE_STATUS: dict[int, type[errors.FastMLError]] = {
    INVALID_INPUT: errors.InvalidInput,
    OVERLOADED: errors.Overloaded,
    DEADLINE_EXCEEDED: errors.DeadlineExceeded,
    UNAVAILABLE: errors.Unavailable,
    INTERNAL: errors.InternalError,
}


def status_error(code: int, message: str | None) -> errors.FastMLError:
    """The fastml.errors exception for a core failure code (InternalError for an unknown code)."""
    cls = CORE_STATUS.get(code)
    if cls is None:
        return errors.InternalError(f"unknown core status code {code}: {message}")
    return cls(message or cls.__name__)
