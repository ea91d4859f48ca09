"""The audit log's head, anchored outside the log: in the registry database.

``HEAD`` inside the audit directory exposes truncation, but whoever can write the directory can rewrite the
log *and* ``HEAD``, delete both, or append entries with a consistent chain. Every append therefore also
records ``(seq, hash)`` of the new last entry in the registry's database (table ``audit_anchors``, keyed by
the audit directory; for a SQLite registry, in ``audit-anchor.db`` beside ``registry.db``, because SQLite has
one writer and promotion gates append to the audit log while the registry's write transaction is open), and :meth:`fastml.governance.audit.AuditLog.verify` checks the log against it: a missing or
truncated log, a replaced chain and entries appended without going through :meth:`AuditLog.append` are all
reported. Optionally the anchor is signed with an Ed25519 key (``FASTML_AUDIT_SIGNING_KEY``: a private key
file, see :mod:`fastml.registry.signing`), so an attacker who can also write the database cannot forge one.
"""

from __future__ import annotations

import base64
import os
import threading
from pathlib import Path

import sqlalchemy as sa

ENV_SIGNING_KEY = "FASTML_AUDIT_SIGNING_KEY"

_meta = sa.MetaData()
anchors = sa.Table(
    "audit_anchors",
    _meta,
    sa.Column("directory", sa.String(1024), primary_key=True),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("signature", sa.Text, nullable=True),  # base64 Ed25519 over anchor_payload, when a key is set
    sa.Column("public_key", sa.Text, nullable=True),  # the signer's ssh-ed25519 text
)

_engines: dict[str, sa.Engine] = {}
_lock = threading.Lock()


def _engine(url: str | None) -> sa.Engine:
    if url is None:
        from fastml.config import get_settings

        url = get_settings().registry_db_url
    if url.startswith("sqlite:///"):
        url = f"sqlite:///{Path(url[len('sqlite:///') :]).parent / 'audit-anchor.db'}"
    with _lock:
        eng = _engines.get(url)
        if eng is None:
            if url.startswith("sqlite:///"):
                Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
            eng = sa.create_engine(url, connect_args={"timeout": 30} if url.startswith("sqlite") else {})
            _meta.create_all(eng, checkfirst=True)
            _engines[url] = eng
        return eng


def key_of(directory: str | os.PathLike) -> str:
    """The anchor's key: the audit directory's absolute path."""
    return str(Path(directory).resolve())


def anchor_payload(directory_key: str, seq: int, digest: str) -> bytes:
    return f"fastml-audit-anchor-v1\n{directory_key}\n{int(seq)}\n{digest}".encode()


def store(directory: str | os.PathLike, seq: int, digest: str, url: str | None = None) -> None:
    """Record ``(seq, digest)`` as the anchored head of the log in ``directory`` (signed when a key is set)."""
    key = key_of(directory)
    signature = public = None
    key_path = os.environ.get(ENV_SIGNING_KEY)
    if key_path:
        from fastml.registry import signing

        private = signing.load_private_key(key_path)
        signature = signing.sign(private, anchor_payload(key, seq, digest))
        public = signing.openssh_text(private.public_key())
    values = {"seq": int(seq), "hash": digest, "signature": signature, "public_key": public}
    with _engine(url).begin() as conn:
        updated = conn.execute(anchors.update().where(anchors.c.directory == key).values(**values)).rowcount
        if not updated:
            conn.execute(anchors.insert().values(directory=key, **values))


def load(directory: str | os.PathLike, url: str | None = None) -> dict | None:
    """The anchored head ``{"seq", "hash", "signature", "public_key"}`` of the log in ``directory``, or None."""
    with _engine(url).connect() as conn:
        row = conn.execute(sa.select(anchors).where(anchors.c.directory == key_of(directory))).first()
    return (
        None
        if row is None
        else {"seq": row.seq, "hash": row.hash, "signature": row.signature, "public_key": row.public_key}
    )


def signature_problem(directory: str | os.PathLike, anchor: dict, trusted_public_key: str | None = None) -> str | None:
    """Why a signed anchor does not verify (None when it does, or when it is unsigned and no key is trusted).

    Args:
        trusted_public_key: the ``ssh-ed25519`` key the anchor must be signed with (default: the public key of
            ``FASTML_AUDIT_SIGNING_KEY`` when set). With a trusted key, an unsigned anchor is a problem.
    """
    from fastml.registry import signing

    if trusted_public_key is None and os.environ.get(ENV_SIGNING_KEY):
        trusted_public_key = signing.openssh_text(signing.load_private_key(os.environ[ENV_SIGNING_KEY]).public_key())
    if trusted_public_key is None:
        return None
    if not anchor.get("signature"):
        return "the anchored head is not signed, but a signing key is configured"
    key = signing.parse_public_key(trusted_public_key)
    payload = anchor_payload(key_of(directory), anchor["seq"], anchor["hash"])
    from cryptography.exceptions import InvalidSignature

    try:
        key.verify(base64.b64decode(anchor["signature"]), payload)
    except (InvalidSignature, ValueError):
        return "the anchored head's signature does not verify: the anchor was forged"
    return None


__all__ = ["ENV_SIGNING_KEY", "anchor_payload", "key_of", "load", "signature_problem", "store"]
