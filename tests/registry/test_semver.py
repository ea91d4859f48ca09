"""Semantic versions: precedence (never string order), parsing errors, bumps, and the SQL sort key."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastml.errors import InvalidInput
from fastml.registry.semver import SemVer, parse, sort_key

ORDERED = [
    "0.9.0",
    "1.0.0-alpha",
    "1.0.0-alpha.1",
    "1.0.0-alpha.beta",
    "1.0.0-beta",
    "1.0.0-beta.2",
    "1.0.0-beta.11",
    "1.0.0-rc.1",
    "1.0.0",
    "1.0.1",
    "1.2.0",
    "1.9.0",
    "1.10.0",
    "1.10.1-0",
    "1.10.1",
    "2.0.0",
    "10.0.0",
]


def test_precedence_follows_semver_not_string_order():
    parsed = [parse(v) for v in ORDERED]
    assert sorted(parsed) == parsed
    assert parse("1.10.0") > parse("1.9.0")
    assert "1.10.0" < "1.9.0"  # the string order we must not use
    assert parse("1.0.0-rc.1") < parse("1.0.0")
    assert parse("1.0.0-alpha.10") > parse("1.0.0-alpha.9")  # numeric identifiers compare as numbers
    assert parse("1.0.0-1") < parse("1.0.0-alpha")  # numeric identifiers sort before alphanumeric ones


def test_sort_key_byte_order_equals_precedence():
    keys = [sort_key(parse(v)) for v in ORDERED]
    assert sorted(keys) == keys
    assert len(set(keys)) == len(keys)


def test_build_metadata_is_ignored_for_precedence():
    assert parse("1.2.3+build.5") == parse("1.2.3")
    assert sort_key(parse("1.2.3+abc")) == sort_key(parse("1.2.3"))
    assert str(parse("1.2.3-rc.1+b7")) == "1.2.3-rc.1+b7"


@pytest.mark.parametrize(
    "bad", ["1", "1.2", "v1.2.3", "01.2.3", "1.2.3-", "1.2.3-01", "1.2.3.4", "", "a.b.c", "1.2.3-rc..1"]
)
def test_invalid_versions_are_invalid_input(bad):
    with pytest.raises(InvalidInput, match="version"):
        parse(bad)
    with pytest.raises(ValueError):  # InvalidInput is a ValueError
        parse(bad)


def test_non_string_version_is_invalid_input():
    with pytest.raises(InvalidInput, match="string"):
        parse(1.2)


@pytest.mark.parametrize(
    "start,part,expected",
    [
        ("1.2.3", "patch", "1.2.4"),
        ("1.2.3", "minor", "1.3.0"),
        ("1.2.3", "major", "2.0.0"),
        ("2.0.0-rc.1", "major", "2.0.0"),
        ("1.3.0-rc.1", "minor", "1.3.0"),
        ("1.2.4-beta", "patch", "1.2.4"),
        ("1.2.4-beta", "minor", "1.3.0"),
    ],
)
def test_bump(start, part, expected):
    assert str(parse(start).bump(part)) == expected


def test_bad_bump_is_invalid_input():
    with pytest.raises(InvalidInput, match="bump"):
        parse("1.0.0").bump("huge")


_ident = st.one_of(st.integers(0, 10**6).map(str), st.from_regex(r"[a-zA-Z-][0-9a-zA-Z-]{0,5}", fullmatch=True))
_versions = st.builds(
    SemVer, st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 10**6), st.lists(_ident, max_size=3).map(tuple)
)


@given(_versions, _versions)
def test_sort_key_agrees_with_precedence_for_any_pair(a, b):
    assert (a < b) == (sort_key(a) < sort_key(b))
    assert (a == b) == (sort_key(a) == sort_key(b))
    assert parse(str(a)) == a
