"""The one signature scheme of every webhook fastml sends (registry events, monitoring alerts).

Each POST carries ``X-FastML-Signature: t=<unix seconds>,sha256=<hex>``, where the hex is the HMAC-SHA256,
keyed with the webhook's secret, of ``"<t>." + raw body``. Signing the time with the body lets a receiver
refuse a replayed delivery (:func:`verify_signature` refuses one older than ``max_age_s``, five minutes by
default) with nothing but the one header; the time is taken when each attempt is sent, so retries stay fresh.

A receiver in any language: split the header on ``,``, take ``t`` and ``sha256``, recompute the HMAC over
the ``t`` value, a dot and the raw body, compare in constant time, and check that ``t`` is recent.

This module sits at the package root so that both libraries use it without importing each other.
"""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "X-FastML-Signature"
DEFAULT_MAX_AGE_S = 300.0


def _key(secret: str | bytes) -> bytes:
    return secret.encode() if isinstance(secret, str) else secret


def _digest(body: bytes, secret: str | bytes, timestamp: str) -> str:
    return hmac.new(_key(secret), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def sign(body: bytes, secret: str | bytes, timestamp: float | None = None) -> str:
    """The ``X-FastML-Signature`` header value for ``body`` sent at ``timestamp`` (default now)."""
    t = str(int(time.time() if timestamp is None else timestamp))
    return f"t={t},sha256={_digest(body, secret, t)}"


def signed_headers(body: bytes, secret: str | bytes, timestamp: float | None = None) -> dict[str, str]:
    """``Content-Type`` and the signature header for one delivery attempt of a JSON ``body``."""
    return {"Content-Type": "application/json", SIGNATURE_HEADER: sign(body, secret, timestamp)}


def parse_signature(header: str | None) -> tuple[str, str] | None:
    """``(timestamp, hex digest)`` from a header value, or None when it is not in the scheme's form."""
    if not header:
        return None
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    t, digest = parts.get("t", ""), parts.get("sha256", "")
    if not t.isdigit() or len(digest) != 64:
        return None
    return t, digest


def verify_signature(
    body: bytes,
    header: str | None,
    secret: str | bytes,
    *,
    max_age_s: float | None = DEFAULT_MAX_AGE_S,
    now: float | None = None,
) -> bool:
    """True when ``header`` signs ``body`` under ``secret`` (constant-time) and, unless ``max_age_s`` is
    None, was made at most ``max_age_s`` seconds from ``now``."""
    parsed = parse_signature(header)
    if parsed is None:
        return False
    t, digest = parsed
    if max_age_s is not None and abs((time.time() if now is None else now) - int(t)) > max_age_s:
        return False
    return hmac.compare_digest(_digest(body, secret, t), digest)


__all__ = ["SIGNATURE_HEADER", "DEFAULT_MAX_AGE_S", "sign", "signed_headers", "parse_signature", "verify_signature"]
