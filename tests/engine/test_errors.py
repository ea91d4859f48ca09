"""The core's status codes map to fastml.errors in exactly one table, one class per code."""

from __future__ import annotations

import pytest

from fastml import _core, errors
from fastml.engine import CORE_STATUS, status, status_error


def test_native_and_python_codes_agree():
    assert dict(_core.STATUS_CODES) == status.STATUS_NAMES


def test_every_failure_code_maps_to_its_own_class():
    failure_codes = {code for name, code in _core.STATUS_CODES.items() if name != "OK"}
    assert set(CORE_STATUS) == failure_codes
    classes = list(CORE_STATUS.values())
    assert len(set(classes)) == len(classes)
    assert all(issubclass(c, errors.FastMLError) for c in classes)


@pytest.mark.parametrize(
    "name, cls",
    [
        ("INVALID_INPUT", errors.InvalidInput),
        ("OVERLOADED", errors.Overloaded),
        ("DEADLINE_EXCEEDED", errors.DeadlineExceeded),
        ("UNAVAILABLE", errors.Unavailable),
        ("INTERNAL", errors.InternalError),
    ],
)
def test_status_error_builds_the_mapped_exception(name, cls):
    exc = status_error(_core.STATUS_CODES[name], "what happened")
    assert type(exc) is cls and str(exc) == "what happened"


def test_unknown_code_is_an_internal_error():
    exc = status_error(99, "odd")
    assert type(exc) is errors.InternalError and "99" in str(exc)


# The one table lives in the bindings (csrc/bindings.cc): the batcher and the feature cache share it.


def test_the_bindings_table_maps_every_failure_code_to_its_own_class():
    assert set(_core.ERROR_CLASSES) == {code for name, code in _core.STATUS_CODES.items() if name != "OK"}
    classes = list(_core.ERROR_CLASSES.values())
    assert len(set(classes)) == len(classes)
    assert all(issubclass(c, errors.FastMLError) for c in classes)
    assert CORE_STATUS == _core.ERROR_CLASSES  # fastml.engine uses the bindings' table, not a copy


@pytest.mark.parametrize(
    "name, cls",
    [
        ("INVALID_INPUT", errors.InvalidInput),
        ("OVERLOADED", errors.Overloaded),
        ("DEADLINE_EXCEEDED", errors.DeadlineExceeded),
        ("UNAVAILABLE", errors.Unavailable),
        ("INTERNAL", errors.InternalError),
        ("NOT_FOUND", errors.NotFound),
        ("INTEGRITY", errors.IntegrityError),
    ],
)
def test_the_native_boundary_raises_the_mapped_class(name, cls):
    with pytest.raises(errors.FastMLError) as ei:
        _core.raise_status(_core.STATUS_CODES[name], "what happened")
    assert type(ei.value) is cls and str(ei.value) == "what happened"


def test_feature_cache_errors_cross_the_same_boundary(tmp_path):
    cache = _core.FeatureCache(str(tmp_path), map_size_bytes=1 << 20)
    cache.open_table("t", 2)
    with pytest.raises(errors.InvalidInput, match="2 features"):
        cache.open_table("t", 3)
    with pytest.raises(errors.InvalidInput):
        cache.open_table("", 1)
