"""THE one table from fastml.errors classes to HTTP status codes (and the reason phrases we send).

Triton answers most failures with 400; we follow the finer KServe/Triton protocol table
(docs/protocol/README.md): unknown model 404, queue full / shed / not ready 503, deadline passed 504, internal 500.
Anything that is not a FastMLError is a genuine internal fault: 500.
"""

from __future__ import annotations

from fastml import errors
from fastml.serving.dataplane import FAILURE_REASON, failure_reason  # noqa: F401 - the metrics label table, re-exported

HTTP_STATUS: dict[type[errors.FastMLError], int] = {
    errors.InvalidInput: 400,
    errors.NotFound: 404,
    errors.PermissionDenied: 403,
    errors.Unauthenticated: 401,
    errors.Conflict: 409,
    errors.Overloaded: 503,
    errors.DeadlineExceeded: 504,  # accepted, but its deadline passed before it ran: a gateway timeout
    errors.Unavailable: 503,
    errors.IntegrityError: 500,
    errors.InternalError: 500,
    errors.FastMLError: 500,
}

REASONS: dict[int, bytes] = {
    200: b"OK",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    409: b"Conflict",
    413: b"Payload Too Large",
    415: b"Unsupported Media Type",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}


def http_status(exc: BaseException) -> int:
    """HTTP status for an exception: the entry of its nearest class in HTTP_STATUS, else 500."""
    for cls in type(exc).__mro__:
        status = HTTP_STATUS.get(cls)
        if status is not None:
            return status
    return 500
