"""Model references: ``name``, ``name:1.2.0``, ``name@production``, ``name@champion``, ``name@latest``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from fastml.errors import InvalidInput

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-/]{0,127}\Z")
_ALIAS = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]{0,63}\Z")
LATEST = "latest"


@dataclass(frozen=True)
class Ref:
    """A parsed reference: exactly one of ``version`` and ``selector`` is set (``selector`` is a stage,
    an alias or ``latest``; a bare name means ``latest``)."""

    name: str
    version: str | None = None
    selector: str | None = None

    def __str__(self) -> str:
        return f"{self.name}:{self.version}" if self.version else f"{self.name}@{self.selector}"


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidInput(
            f"invalid model name {name!r}: use 1-128 letters, digits, '_', '-', '.', '/', starting with a "
            "letter or digit (':' and '@' separate versions and aliases in references)"
        )
    return name


def check_alias(alias: str) -> str:
    if not isinstance(alias, str) or not _ALIAS.match(alias):
        raise InvalidInput(f"invalid alias {alias!r}: use 1-64 letters, digits, '_' or '-', starting with a letter")
    return alias


def parse_ref(ref: str) -> Ref:
    """Parse a model reference. The version text is checked later, against semver, by the registry."""
    if not isinstance(ref, str) or not ref.strip():
        raise InvalidInput(
            f"model reference must be a non-empty string like 'name:1.2.0' or 'name@production'; got {ref!r}"
        )
    text = ref.strip()
    if "@" in text:
        name, _, selector = text.partition("@")
        check_name(name)
        if not selector or not _ALIAS.match(selector):
            raise InvalidInput(f"invalid reference {ref!r}: after '@' comes a stage, an alias or 'latest'")
        return Ref(name, selector=selector)
    if ":" in text:
        name, _, version = text.partition(":")
        check_name(name)
        if not version:
            raise InvalidInput(f"invalid reference {ref!r}: after ':' comes a version like 1.2.0")
        return Ref(name, version=version)
    return Ref(check_name(text), selector=LATEST)
