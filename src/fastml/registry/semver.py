"""Semantic versions (https://semver.org, 2.0.0): parsing, precedence, bumping, and a sortable key.

Precedence is never string order: ``1.10.0 > 1.9.0`` and ``1.0.0-alpha < 1.0.0-alpha.1 < 1.0.0-beta <
1.0.0-rc.1 < 1.0.0``. Build metadata (``+build.5``) is kept in the text but ignored for precedence, so two
versions differing only in it are the same version.

:func:`sort_key` encodes precedence as a plain string whose byte order equals semver order, so the
database can ``ORDER BY`` it (the column uses the ``C`` collation on PostgreSQL for byte order).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from fastml.errors import InvalidInput

_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)
# Numbers are zero-padded to this many digits inside sort keys.
_NUM_DIGITS = 12
_MAX_NUM = 10**_NUM_DIGITS - 1
# The database columns holding a version's text and its sort key are 200 characters wide.
_MAX_TEXT = 200
BUMPS = ("major", "minor", "patch")


@functools.total_ordering
@dataclass(frozen=True)
class SemVer:
    """A parsed semantic version. Compare with ``<``/``>``; equality ignores build metadata."""

    major: int
    minor: int
    patch: int
    prerelease: tuple[str, ...] = ()
    build: str = ""

    def __str__(self) -> str:
        text = f"{self.major}.{self.minor}.{self.patch}"
        if self.prerelease:
            text += "-" + ".".join(self.prerelease)
        if self.build:
            text += "+" + self.build
        return text

    @property
    def is_prerelease(self) -> bool:
        return bool(self.prerelease)

    def _key(self):
        # A release sorts after all its pre-releases; numeric identifiers sort before alphanumeric ones.
        pre = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in self.prerelease)
        return (self.major, self.minor, self.patch, 0 if self.prerelease else 1, pre)

    def __eq__(self, other) -> bool:
        return isinstance(other, SemVer) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __lt__(self, other: SemVer) -> bool:
        if not isinstance(other, SemVer):
            return NotImplemented
        return self._key() < other._key()

    def bump(self, part: str) -> SemVer:
        """The next version: ``major``, ``minor`` or ``patch``. A pre-release bumps to its own release
        when the parts below ``part`` are zero (``2.0.0-rc.1`` bumped ``major`` is ``2.0.0``), as npm does."""
        if part not in BUMPS:
            raise InvalidInput(f"bump must be one of {', '.join(BUMPS)}; got {part!r}")
        if self.prerelease:
            base = SemVer(self.major, self.minor, self.patch)
            if (
                part == "patch"
                or (part == "minor" and self.patch == 0)
                or (part == "major" and self.minor == 0 and self.patch == 0)
            ):
                return base
        if part == "major":
            return SemVer(self.major + 1, 0, 0)
        if part == "minor":
            return SemVer(self.major, self.minor + 1, 0)
        return SemVer(self.major, self.minor, self.patch + 1)


def parse(text: str) -> SemVer:
    """Parse ``MAJOR.MINOR.PATCH[-PRERELEASE][+BUILD]``; anything else is :class:`InvalidInput`."""
    if not isinstance(text, str):
        raise InvalidInput(f"version must be a string like '1.2.0'; got {type(text).__name__} {text!r}")
    m = _SEMVER.match(text.strip())
    if m is None:
        raise InvalidInput(
            f"invalid version {text!r}: expected semantic version MAJOR.MINOR.PATCH with optional "
            "-prerelease and +build (e.g. '1.2.0', '2.0.0-rc.1'); no leading zeros, no 'v' prefix"
        )
    major, minor, patch = int(m.group(1)), int(m.group(2)), int(m.group(3))
    pre = tuple(m.group(4).split(".")) if m.group(4) else ()
    for n in (major, minor, patch, *(int(p) for p in pre if p.isdigit())):
        if n > _MAX_NUM:
            raise InvalidInput(f"invalid version {text!r}: numbers above {_MAX_NUM} are not supported")
    v = SemVer(major, minor, patch, pre, m.group(5) or "")
    if len(str(v)) > _MAX_TEXT or len(sort_key(v)) > _MAX_TEXT:
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise InvalidInput(
            f"invalid version {shown!r}: too long ({len(str(v))} characters, sort key {len(sort_key(v))}); a "
            f"version and its sort key must fit in {_MAX_TEXT} characters (use fewer pre-release identifiers)"
        )
    return v


def sort_key(v: SemVer) -> str:
    """A string whose byte order is semver precedence (build metadata ignored).

    Layout: zero-padded ``major.minor.patch.``, then ``~`` for a release (``~`` sorts after every
    character a pre-release uses) or the pre-release identifiers: numeric ones as ``0`` + padded digits,
    alphanumeric ones as ``1`` + text, joined by ``!`` (below every identifier character, so a shorter
    identifier list sorts first, as semver requires)."""
    head = f"{v.major:0{_NUM_DIGITS}d}.{v.minor:0{_NUM_DIGITS}d}.{v.patch:0{_NUM_DIGITS}d}."
    if not v.prerelease:
        return head + "~"
    parts = ["0" + p.zfill(_NUM_DIGITS) if p.isdigit() else "1" + p for p in v.prerelease]
    return head + "!".join(parts)
