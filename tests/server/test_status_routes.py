"""The one error -> HTTP status table, and the URL grammar (Triton's)."""

from __future__ import annotations

import pytest

from fastml import errors
from fastml.server import routes
from fastml.server.status import HTTP_STATUS, failure_reason, http_status


def test_every_error_class_has_its_status():
    expected = {
        errors.InvalidInput: 400,
        errors.NotFound: 404,
        errors.PermissionDenied: 403,
        errors.Unauthenticated: 401,
        errors.Conflict: 409,
        errors.Overloaded: 503,
        errors.DeadlineExceeded: 504,
        errors.Unavailable: 503,
        errors.IntegrityError: 500,
        errors.InternalError: 500,
        errors.FastMLError: 500,
    }
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert cls in HTTP_STATUS, f"{name} is missing from the status table"
        assert http_status(cls("x")) == expected[cls]
    assert http_status(KeyError("x")) == 500  # not a fastml error: an internal fault

    class Sub(errors.InvalidInput):
        pass

    assert http_status(Sub("x")) == 400


def test_failure_reasons():
    assert failure_reason(errors.Overloaded("q")) == "REJECTED"
    assert failure_reason(errors.DeadlineExceeded("d")) == "REJECTED"
    assert failure_reason(errors.InternalError("i")) == "BACKEND"
    assert failure_reason(errors.InvalidInput("v")) == "OTHER"
    assert failure_reason(RuntimeError("r")) == "BACKEND"


@pytest.mark.parametrize(
    "path, expected",
    [
        ("/v2", (routes.SERVER_META, None, None)),
        ("/v2/", (routes.SERVER_META, None, None)),
        ("/v2/health/live", (routes.LIVE, None, None)),
        ("/v2/health/ready", (routes.READY, None, None)),
        ("/v2/health/other", (routes.NOT_FOUND, None, None)),
        ("/v2/models/mlp", (routes.MODEL_META, "mlp", None)),
        ("/v2/models/mlp/versions/3", (routes.MODEL_META, "mlp", "3")),
        ("/v2/models/mlp/versions/1.2.0/infer", (routes.INFER, "mlp", "1.2.0")),
        ("/v2/models/mlp/infer", (routes.INFER, "mlp", None)),
        ("/v2/models/mlp/ready", (routes.MODEL_READY, "mlp", None)),
        ("/v2/models/mlp/config", (routes.MODEL_CONFIG, "mlp", None)),
        ("/v2/models/mlp/stats", (routes.MODEL_STATS, "mlp", None)),
        ("/v2/models/stats", (routes.ALL_STATS, None, None)),
        ("/v2/models/a%20b/infer", (routes.INFER, "a b", None)),
        ("/v2/models/mlp/generate", (routes.NOT_FOUND, None, None)),
        ("/v2/models/mlp/infer/", (routes.NOT_FOUND, None, None)),
        ("/v2/repository/index", (routes.REPO_INDEX, None, None)),
        ("/v2/repository/myrepo/index", (routes.REPO_INDEX, None, None)),
        ("/v2/repository/models/mlp/load", (routes.REPO_LOAD, "mlp", None)),
        ("/v2/repository/myrepo/models/mlp/unload", (routes.REPO_UNLOAD, "mlp", None)),
        ("/metrics", (routes.METRICS, None, None)),
        ("/v1/models/mlp", (routes.NOT_FOUND, None, None)),
        ("", (routes.NOT_FOUND, None, None)),
    ],
)
def test_routes(path, expected):
    assert routes.route(path) == expected
