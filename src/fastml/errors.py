"""The one error hierarchy of fastml.

Every module raises these; nothing else crosses a module boundary. Each kind subclasses the builtin a
caller would expect (``InvalidInput`` is a ``ValueError``) so generic handlers keep working. The mapping to
HTTP and binary-protocol status codes lives in one place, ``fastml.server.status``; the native core's
status codes map onto these classes in ``fastml.engine`` (see ``CORE_STATUS``), through the one table of
the native bindings (``kErrorTable`` in csrc/bindings.cc, ``fastml._core.ERROR_CLASSES``) that the batcher
and the feature cache share.
"""

from __future__ import annotations


class FastMLError(Exception):
    """Base of every fastml error."""


class InvalidInput(FastMLError, ValueError):
    """The caller sent something malformed: a wrong name, dtype, shape, version string or config field."""


class NotFound(FastMLError, LookupError):
    """A model, version, alias, feature group, run or path does not exist."""


class Conflict(FastMLError):
    """The operation contradicts the current state: a duplicate version, a lost promotion race."""


class PermissionDenied(FastMLError):
    """The actor may not do this: a requester approving their own request, a gate blocking a promotion."""


class Unauthenticated(FastMLError):
    """The request lacks valid credentials (a missing or wrong admin bearer token; served as 401)."""


class Overloaded(FastMLError):
    """A bounded queue is full; the request was refused without being queued (served as 503)."""


class DeadlineExceeded(FastMLError, TimeoutError):
    """The request's deadline passed before it ran; it never reached the model (served as 504)."""


class Unavailable(FastMLError):
    """The model is not ready, unloading or shut down (served as 503)."""


class IntegrityError(FastMLError):
    """Stored data does not match its checksum or chain: a changed artifact, a tampered audit log."""


class InternalError(FastMLError):
    """A fault inside fastml or the model runtime; the only kind served as 500."""


__all__ = [
    "FastMLError",
    "InvalidInput",
    "NotFound",
    "Conflict",
    "PermissionDenied",
    "Unauthenticated",
    "Overloaded",
    "DeadlineExceeded",
    "Unavailable",
    "IntegrityError",
    "InternalError",
]
