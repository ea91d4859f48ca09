"""The core's status codes and the one table from code to fastml.errors class (STYLE.md: one boundary).

Both batchers (the native ``fastml._core.Batcher`` and the pure-Python ``ReferenceBatcher``) report
failures as integer codes; :func:`status_error` turns a code into an exception through the table the
native bindings define (``fastml._core.ERROR_CLASSES``, built from ``kErrorTable`` in csrc/bindings.cc),
the same table the feature cache raises through. No other code-to-class mapping exists.
"""

from __future__ import annotations

from fastml import _core, errors

# Code numbers as in csrc/status.h `StatusCode`; tests/engine/test_errors.py checks they agree with
# fastml._core.STATUS_CODES and that every failure code has its own class.
OK = 0
INVALID_INPUT = 1
OVERLOADED = 2
DEADLINE_EXCEEDED = 3
UNAVAILABLE = 4
INTERNAL = 5
NOT_FOUND = 6
INTEGRITY = 7

STATUS_NAMES = {
    "OK": OK,
    "INVALID_INPUT": INVALID_INPUT,
    "OVERLOADED": OVERLOADED,
    "DEADLINE_EXCEEDED": DEADLINE_EXCEEDED,
    "UNAVAILABLE": UNAVAILABLE,
    "INTERNAL": INTERNAL,
    "NOT_FOUND": NOT_FOUND,
    "INTEGRITY": INTEGRITY,
}

# The bindings' table itself (not a copy): code -> fastml.errors class.
CORE_STATUS: dict[int, type[errors.FastMLError]] = _core.ERROR_CLASSES


def status_error(code: int, message: str | None) -> errors.FastMLError:
    """The fastml.errors exception for a core failure code (InternalError for an unknown code)."""
    cls = CORE_STATUS.get(code)
    if cls is None:
        return errors.InternalError(f"unknown core status code {code}: {message}")
    return cls(message or cls.__name__)
