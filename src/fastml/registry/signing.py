"""Signed approvals: a reviewer proves who they are with an Ed25519 key, not a typed name.

An approval may carry a signature over :func:`approval_payload` (the registry's id, the request id and the time
it was made, model, version, target stage and reviewer, canonically encoded; :func:`payload_for` reads them from
a registry), made with the reviewer's private key (an OpenSSH ``ssh-ed25519`` key, as
``ssh-keygen -t ed25519`` writes, or PKCS#8 PEM). The registry checks it against its allowed signers, lines
like OpenSSH's ``allowed_signers`` file::

    alice ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA... alice@laptop
    bob   ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA...

The policy (allowed signers, and whether signatures are required) is a setting of the registry itself, stored
in its database by :func:`set_policy`, so every client of that registry enforces the same rules. When signing
is required, an unsigned approval is refused, and so is a second approval made with a key that already
approved the same request, whatever reviewer name it was typed under. Signatures are stored beside the
approvals and :func:`verify_stored` re-verifies each one (``Registry.verify()`` reports what fails).
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import sqlalchemy as sa

from fastml.errors import InvalidInput, NotFound, PermissionDenied

# v2 binds a signature to one registry and one request: v1 (request id, model, version, stage, reviewer) could be
# replayed in another registry whose request of that number asks the same (a staging and a production registry).
PAYLOAD_PREFIX = b"fastml-approval-v2\n"
_PAYLOAD_PREFIX_V1 = b"fastml-approval-v1\n"  # still verified for signatures stored before v2
# The registry's identity, in its meta table: made on first use, random, never changed.
_REGISTRY_ID_KEY = "registry_id"

# Kept in the registry database beside the approvals, in their own metadata: created on first use, so an
# existing registry needs no migration and a registry that never signs carries no extra tables.
_meta = sa.MetaData()
policy_table = sa.Table(
    "signing_policy",
    _meta,
    sa.Column("id", sa.Integer, primary_key=True),  # always 1: one policy per registry
    sa.Column("allowed_signers", sa.Text, nullable=False),
    sa.Column("required", sa.Boolean, nullable=False),
)
signatures_table = sa.Table(
    "approval_signatures",
    _meta,
    sa.Column("request_id", sa.Integer, primary_key=True),
    sa.Column("reviewer", sa.String(128), primary_key=True),
    sa.Column("key_fingerprint", sa.String(80), nullable=False),
    sa.Column("public_key", sa.Text, nullable=False),
    sa.Column("signature", sa.Text, nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.UniqueConstraint("request_id", "key_fingerprint", name="uq_approval_signatures_key"),
)


def ensure_tables(conn) -> None:
    """Create the signing tables if this registry has none yet (idempotent)."""
    _meta.create_all(conn, checkfirst=True)


def approval_payload(
    request_id: int,
    name: str,
    version: str,
    target_stage: str,
    reviewer: str,
    *,
    registry_id: str,
    requested_at: str,
) -> bytes:
    """The bytes a reviewer signs to approve ``request_id``: every field that decides what the approval means, and
    the registry and request time that make it this registry's request (:func:`payload_for` reads them)."""
    body = {
        "registry": registry_id,
        "request_id": int(request_id),
        "requested_at": requested_at,
        "model": name,
        "version": version,
        "target_stage": target_stage,
        "reviewer": reviewer,
    }
    return PAYLOAD_PREFIX + _canonical(body)


def _payload_v1(request_id: int, name: str, version: str, target_stage: str, reviewer: str) -> bytes:
    body = {"request_id": int(request_id), "model": name, "version": version, "target_stage": target_stage}
    return _PAYLOAD_PREFIX_V1 + _canonical({**body, "reviewer": reviewer})


def _canonical(body: dict) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def payload_for(registry, request_id: int, reviewer: str) -> bytes:
    """:func:`approval_payload` for request ``request_id`` of ``registry`` (a :class:`fastml.registry.Registry`),
    as ``reviewer`` signs it."""
    from fastml.registry import store

    req = registry.get_request(request_id)
    with store.write_transaction(registry.engine) as conn:  # a registry signed for before v2 gets its id now
        rid, at = _ensure_registry_id(conn), _requested_at(conn, request_id)
    return approval_payload(
        request_id, req["name"], req["version"], req["target_stage"], reviewer, registry_id=rid, requested_at=at
    )


def registry_id(conn) -> str | None:
    """This registry's id (its meta table's ``registry_id``: random, made on first use), or None before any."""
    from fastml.registry import store

    return conn.execute(sa.select(store.meta.c.value).where(store.meta.c.key == _REGISTRY_ID_KEY)).scalar()


def _ensure_registry_id(conn) -> str:
    """:func:`registry_id`, made now when there is none (inside the caller's write transaction)."""
    import secrets

    from fastml.registry import store

    value = registry_id(conn)
    if value is None:
        value = secrets.token_hex(16)
        conn.execute(store.meta.insert().values(key=_REGISTRY_ID_KEY, value=value))
    return value


def _requested_at(conn, request_id: int) -> str:
    from fastml.registry import store

    at = conn.execute(sa.select(store.requests.c.created_at).where(store.requests.c.id == request_id)).scalar()
    if at is None:
        raise NotFound(f"no transition request {request_id}")
    return at


def _ed25519():
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return ed25519


def parse_public_key(text: str):
    """An Ed25519 public key from ``ssh-ed25519 AAAA...`` text.

    Raises:
        InvalidInput: not an OpenSSH public key, or not Ed25519.
    """
    from cryptography.hazmat.primitives.serialization import load_ssh_public_key

    try:
        key = load_ssh_public_key(text.strip().encode())
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"not an OpenSSH public key: {exc}") from None
    if not isinstance(key, _ed25519().Ed25519PublicKey):
        raise InvalidInput(f"only ssh-ed25519 keys are accepted, got {type(key).__name__}")
    return key


def openssh_text(public_key) -> str:
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def fingerprint(public_key) -> str:
    """OpenSSH's fingerprint of a key: ``SHA256:`` + unpadded base64 of the SHA-256 of its wire encoding."""
    blob = base64.b64decode(openssh_text(public_key).split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def parse_allowed_signers(text: str) -> dict[str, list]:
    """``{reviewer: [public key, ...]}`` from allowed-signers lines (``#`` comments and blank lines skipped).

    Raises:
        InvalidInput: a malformed line (named by number).
    """
    out: dict[str, list] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) < 3:
            raise InvalidInput(f"allowed signers line {number}: expected 'reviewer ssh-ed25519 AAAA...'")
        try:
            key = parse_public_key(f"{parts[1]} {parts[2]}")
        except InvalidInput as exc:
            raise InvalidInput(f"allowed signers line {number}: {exc}") from None
        for reviewer in parts[0].split(","):  # OpenSSH allows several principals per line
            out.setdefault(reviewer, []).append(key)
    return out


def load_private_key(path: str | Path, password: bytes | None = None):
    """An Ed25519 private key from an OpenSSH (``ssh-keygen -t ed25519``) or PKCS#8 PEM file.

    Raises:
        NotFound: no such file. InvalidInput: not an Ed25519 private key.
    """
    from cryptography.hazmat.primitives import serialization

    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise NotFound(f"cannot read the key file {str(p)!r}: {exc.strerror or exc}") from None
    try:
        key: object
        if b"OPENSSH PRIVATE KEY" in data:
            key = serialization.load_ssh_private_key(data, password)
        else:
            key = serialization.load_pem_private_key(data, password)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"{str(p)!r} is not a readable private key: {exc}") from None
    if not isinstance(key, _ed25519().Ed25519PrivateKey):
        raise InvalidInput(f"{str(p)!r} is not an Ed25519 key (use ssh-keygen -t ed25519)")
    return key


def sign(private_key, payload: bytes) -> str:
    """The base64 Ed25519 signature of ``payload``."""
    return base64.b64encode(private_key.sign(payload)).decode()


def _verify(public_key, signature_b64: str, payload: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature

    try:
        public_key.verify(base64.b64decode(signature_b64, validate=True), payload)
    except (InvalidSignature, ValueError):
        return False
    return True


# ----------------------------------------------------------------- the registry's policy
def set_policy(engine, allowed_signers: str, *, required: bool) -> None:
    """Store the allowed signers (text of an allowed-signers file) and whether approvals must be signed.

    Raises:
        InvalidInput: a malformed allowed-signers text, or ``required`` with no signer at all.
    """
    signers = parse_allowed_signers(allowed_signers)
    if required and not signers:
        raise InvalidInput("signed approvals cannot be required with an empty allowed-signers list")
    with engine.begin() as conn:
        ensure_tables(conn)
        _ensure_registry_id(conn)
        conn.execute(policy_table.delete())
        conn.execute(policy_table.insert().values(id=1, allowed_signers=allowed_signers, required=bool(required)))


def get_policy(conn) -> tuple[dict[str, list], bool] | None:
    """``(signers, required)`` of the registry, or None when no policy was ever set."""
    if not sa.inspect(conn).has_table("signing_policy"):
        return None
    row = conn.execute(sa.select(policy_table).where(policy_table.c.id == 1)).first()
    if row is None:
        return None
    return parse_allowed_signers(row.allowed_signers), bool(row.required)


def check_approval(
    conn, request_id: int, name: str, version: str, target_stage: str, reviewer: str, signature: str | None
) -> None:
    """Inside the approval's write transaction: check its signature against the policy and store it.

    Raises:
        PermissionDenied: signing is required and the approval is unsigned; the signature does not verify with
            any key allowed for ``reviewer``; or that key already approved this request (under any name).
        InvalidInput: a signature when the registry has no allowed signers.
    """
    policy = get_policy(conn)
    if signature is None:
        if policy is not None and policy[1]:
            raise PermissionDenied(
                f"this registry requires signed approvals: sign with the reviewer's key "
                f"(CLI: fastml registry approve {request_id} --reviewer {reviewer} --key PATH)"
            )
        return
    if policy is None:
        raise InvalidInput(
            "a signed approval needs the registry's allowed signers (fastml.registry.signing.set_policy)"
        )
    payload = approval_payload(
        request_id,
        name,
        version,
        target_stage,
        reviewer,
        registry_id=_ensure_registry_id(conn),
        requested_at=_requested_at(conn, request_id),
    )
    key = next((k for k in policy[0].get(reviewer, []) if _verify(k, signature, payload)), None)
    if key is None:
        raise PermissionDenied(f"the signature does not verify with any key allowed for reviewer {reviewer!r}")
    fp = fingerprint(key)
    ensure_tables(conn)
    earlier = conn.execute(
        sa.select(signatures_table.c.reviewer).where(
            signatures_table.c.request_id == request_id, signatures_table.c.key_fingerprint == fp
        )
    ).scalar()
    if earlier is not None:
        raise PermissionDenied(
            f"key {fp} already approved request {request_id} as {earlier!r}; each approval needs a different reviewer's key"
        )
    conn.execute(
        signatures_table.insert().values(
            request_id=request_id,
            reviewer=reviewer,
            key_fingerprint=fp,
            public_key=openssh_text(key),
            signature=signature,
            payload=payload.decode(),
        )
    )


def verify_stored(engine) -> list[dict]:
    """Re-verify every stored approval signature against its stored key and the request it names, and check
    the key is still an allowed signer for that reviewer. One problem dict per failure (as Registry.verify)."""
    problems: list[dict] = []
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table("approval_signatures"):
            return problems
        policy = get_policy(conn)
        from fastml.registry import store

        rows = conn.execute(sa.select(signatures_table)).all()
        for r in rows:
            where = f"request {r.request_id} approval by {r.reviewer!r}"
            req = conn.execute(
                sa.select(store.requests.c.target_stage, store.models.c.name, store.versions.c.version)
                .join(store.versions, store.versions.c.id == store.requests.c.version_id)
                .join(store.models, store.models.c.id == store.versions.c.model_id)
                .where(store.requests.c.id == r.request_id)
            ).first()
            decided = conn.execute(
                sa.select(store.approvals.c.decision).where(
                    store.approvals.c.request_id == r.request_id, store.approvals.c.reviewer == r.reviewer
                )
            ).scalar()
            problem = None
            if req is None or decided != "approve":
                problem = "the signed approval has no matching request or approval"
            else:
                if r.payload.encode().startswith(_PAYLOAD_PREFIX_V1):
                    payload = _payload_v1(r.request_id, req.name, req.version, req.target_stage, r.reviewer)
                else:
                    payload = approval_payload(
                        r.request_id,
                        req.name,
                        req.version,
                        req.target_stage,
                        r.reviewer,
                        registry_id=registry_id(conn) or "",
                        requested_at=_requested_at(conn, r.request_id),
                    )
                try:
                    key = parse_public_key(r.public_key)
                except InvalidInput:
                    key = None
                if key is None or fingerprint(key) != r.key_fingerprint or not _verify(key, r.signature, payload):
                    problem = "the approval signature does not verify"
                elif policy is not None and r.key_fingerprint not in {
                    fingerprint(k) for k in policy[0].get(r.reviewer, [])
                }:
                    problem = "the signing key is no longer an allowed signer for this reviewer"
            if problem:
                problems.append(
                    {
                        "ref": where,
                        "kind": "approval-signature",
                        "sha256": r.key_fingerprint,
                        "path": "",
                        "problem": problem,
                    }
                )
    return problems


__all__ = [
    "approval_payload",
    "payload_for",
    "registry_id",
    "check_approval",
    "fingerprint",
    "get_policy",
    "load_private_key",
    "parse_allowed_signers",
    "parse_public_key",
    "set_policy",
    "sign",
    "verify_stored",
]
