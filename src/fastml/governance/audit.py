"""Append-only, hash-chained audit log under ``$FASTML_HOME/audit/``.

Layout:
    ``audit.log``  one entry per line, canonical JSON (sorted keys, no spaces).
    ``HEAD``       ``{"seq": N, "hash": "..."}`` of the last entry: the anchor that exposes truncation.
    ``audit.lock`` the file every writer takes an exclusive ``flock`` on.

Each entry holds ``seq`` (1, 2, ...), ``at`` (UTC, ISO 8601), ``actor``, ``action``, ``target``, ``before``,
``after``, ``details``, ``prev`` (the previous entry's ``hash``; 64 zeros for the first) and ``hash``, the
SHA-256 of the entry's canonical bytes without ``hash``. Changing an entry breaks its own hash; changing and
re-hashing it breaks the next entry's ``prev``; deleting, inserting or reordering breaks ``seq`` and ``prev``;
cutting entries off the end no longer matches ``HEAD``.

Writers serialise on an OS file lock (``fcntl.flock``), read the tail of the log *under the lock* to chain
onto it, write the line with one ``write`` and ``fsync`` it before moving ``HEAD`` (written to a temporary
file, fsynced and renamed), so concurrent writers in any number of processes produce one chain and an
appended entry survives a crash. A crash between the two steps leaves ``HEAD`` one entry behind, which
:meth:`AuditLog.verify` accepts and the next append repairs.

Rewriting the whole chain *and* ``HEAD`` cannot be detected from inside the directory, so every append also
anchors the head outside it, in the registry database (:mod:`fastml.governance.anchor`, optionally signed):
verify then fails on a deleted, truncated or replaced log and on entries appended around :meth:`AuditLog.append`.
A head hash kept elsewhere (``fastml audit head``) can still be passed back as ``expected_head``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import fcntl
import hashlib
import io
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import msgspec

from fastml.errors import IntegrityError, InvalidInput

GENESIS = "0" * 64
LOG_NAME = "audit.log"
HEAD_NAME = "HEAD"
LOCK_NAME = "audit.lock"
FIELDS = ("seq", "at", "actor", "action", "target", "before", "after", "details", "prev", "hash")


def canonical_bytes(obj: Any) -> bytes:
    """The one byte form that is hashed: JSON with sorted keys and no whitespace."""
    return msgspec.json.encode(obj, order="sorted")


def entry_hash(entry: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of an entry's canonical bytes, leaving out its own ``hash`` field."""
    return hashlib.sha256(canonical_bytes({k: v for k, v in entry.items() if k != "hash"})).hexdigest()


def _jsonable(value: Any) -> Any:
    """Round-trip through JSON so what is hashed now is exactly what is read back later."""

    def default(obj):
        if hasattr(obj, "tolist"):  # numpy scalars and arrays
            return obj.tolist()
        return str(obj)

    def sets_sorted(obj):
        # msgspec writes sets in iteration order, which varies between processes; sort them first.
        if isinstance(obj, (set, frozenset)):
            return sorted((sets_sorted(v) for v in obj), key=str)
        if isinstance(obj, dict):
            return {k: sets_sorted(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [sets_sorted(v) for v in obj]
        return obj

    return msgspec.json.decode(msgspec.json.encode(sets_sorted(value), enc_hook=default))


@dataclasses.dataclass(frozen=True)
class VerifyResult:
    """Outcome of :meth:`AuditLog.verify`. ``first_bad_line`` is 1-based; ``None`` when the log is intact."""

    ok: bool
    entries: int
    head_hash: str
    first_bad_line: int | None = None
    first_bad_seq: int | None = None
    problem: str | None = None
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"notes": list(self.notes)}


class AuditLog:
    """The audit log of one ``FASTML_HOME`` (or of ``directory``).

    Args:
        directory: where the files live; default ``$FASTML_HOME/audit``.
        anchor: keep the head anchored in the registry database and check it on verify (default on).
        anchor_url: that database's SQLAlchemy URL (default: the configured registry's).
    """

    def __init__(
        self, directory: str | os.PathLike | None = None, *, anchor: bool = True, anchor_url: str | None = None
    ):
        self.anchor = anchor
        self.anchor_url = anchor_url
        if directory is None:
            from fastml.config import get_settings

            directory = get_settings().home / "audit"
        self.directory = Path(directory)
        self.log_path = self.directory / LOG_NAME
        self.head_path = self.directory / HEAD_NAME
        self.lock_path = self.directory / LOCK_NAME

    # ----------------------------------------------------------------------------------------- writing

    def append(
        self,
        action: str,
        *,
        target: str | None = None,
        before: Any = None,
        after: Any = None,
        details: Any = None,
        actor: str | None = None,
        at: str | None = None,
    ) -> dict[str, Any]:
        """Append one entry and return it (with ``seq``, ``prev`` and ``hash`` filled in).

        Args:
            action: what happened, dotted (``registry.transition``, ``governance.gate.block``).
            target: what it happened to (``credit-scoring:1.2.0``).
            before, after: the state before and after (any JSON-able values).
            details: anything else worth keeping.
            actor: who; default the configured user.
            at: when (ISO 8601); default now, UTC.

        Raises:
            InvalidInput: an empty action.
            IntegrityError: the last line of the log is unreadable, so nothing can be chained onto it.
        """
        body = self._body(action, target, before, after, details, actor, at)
        self.directory.mkdir(parents=True, exist_ok=True)
        with self._locked():
            return self._append_locked(body)

    @staticmethod
    def _body(action, target, before, after, details, actor, at) -> dict[str, Any]:
        if not action or not isinstance(action, str):
            raise InvalidInput("audit action must be a non-empty string")
        if actor is None:
            from fastml.config import get_settings

            actor = get_settings().actor
        return {
            "at": at or _dt.datetime.now(_dt.UTC).isoformat(timespec="microseconds"),
            "actor": str(actor),
            "action": action,
            "target": None if target is None else str(target),
            "before": _jsonable(before),
            "after": _jsonable(after),
            "details": _jsonable(details),
        }

    def _append_locked(self, body: dict[str, Any]) -> dict[str, Any]:
        """Chain ``body`` onto the last entry; the caller holds the lock."""
        last = self._last_entry()
        entry = dict(body, seq=(last["seq"] + 1) if last else 1, prev=last["hash"] if last else GENESIS)
        entry["hash"] = entry_hash(entry)
        line = canonical_bytes(entry) + b"\n"
        fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            written = os.write(fd, line)  # one write of one line: readers never see half an entry
            if written != len(line):
                raise IntegrityError(f"short write to {self.log_path}: {written} of {len(line)} bytes")
            os.fsync(fd)
        finally:
            os.close(fd)
        self._write_head(entry["seq"], entry["hash"])
        if self.anchor:
            from fastml.governance import anchor as _anchor

            _anchor.store(self.directory, entry["seq"], entry["hash"], self.anchor_url)
        return entry

    @contextlib.contextmanager
    def _locked(self, shared: bool = False):
        if shared and not self.directory.exists():
            yield  # nothing written yet: nothing to keep consistent
            return
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            # Exclusive: serialises writers across processes, so the chain cannot fork. Shared: a reader
            # (verify) sees no append between reading the log and reading HEAD.
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _write_head(self, seq: int, digest: str) -> None:
        tmp = self.head_path.with_suffix(".tmp")
        data = canonical_bytes({"seq": seq, "hash": digest}) + b"\n"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.head_path)
        dfd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dfd)  # make the rename itself durable
        finally:
            os.close(dfd)

    def _last_entry(self) -> dict[str, Any] | None:
        """The last complete entry, read from the end of the file (cheap for long logs)."""
        try:
            size = self.log_path.stat().st_size
        except FileNotFoundError:
            return None
        if size == 0:
            return None
        with open(self.log_path, "rb") as fh:
            block = 4096
            buf = b""
            pos = size
            while pos > 0:
                step = min(block, pos)
                pos -= step
                fh.seek(pos)
                buf = fh.read(step) + buf
                if buf.count(b"\n") >= 2 or pos == 0:
                    break
                block *= 2
        if not buf.endswith(b"\n"):
            raise IntegrityError(
                f"{self.log_path}: the last line is incomplete (torn write?); run `fastml audit verify`"
            )
        last_line = buf[:-1].rsplit(b"\n", 1)[-1]
        try:
            entry = msgspec.json.decode(last_line)
            int(entry["seq"]), str(entry["hash"])
        except (msgspec.DecodeError, KeyError, TypeError, ValueError) as exc:
            raise IntegrityError(
                f"{self.log_path}: the last entry is unreadable ({exc}); run `fastml audit verify`"
            ) from exc
        return entry

    # ----------------------------------------------------------------------------------------- reading

    def entries(self) -> Iterator[dict[str, Any]]:
        """Every entry in file order (no verification; see :meth:`verify`)."""
        if not self.log_path.exists():
            return
        with open(self.log_path, "rb") as fh:
            for lineno, raw in enumerate(fh, 1):
                try:
                    yield msgspec.json.decode(raw)
                except msgspec.DecodeError as exc:
                    raise IntegrityError(f"{self.log_path} line {lineno} is not valid JSON: {exc}") from exc

    def head(self) -> dict[str, Any] | None:
        """The ``HEAD`` anchor: ``{"seq": N, "hash": "..."}``, or ``None`` before the first entry."""
        try:
            head = msgspec.json.decode(self.head_path.read_bytes())
        except FileNotFoundError:
            return None
        except msgspec.DecodeError as exc:
            raise IntegrityError(f"{self.head_path} is not valid JSON: {exc}") from exc
        if not isinstance(head, dict):  # valid JSON but not the anchor (an overwritten HEAD): report, never crash
            raise IntegrityError(f"{self.head_path} is not a {{seq, hash}} object (holds {type(head).__name__})")
        return head

    def verify(self, expected_head: str | None = None) -> VerifyResult:
        """Walk the chain and report the first entry that is not what the chain says it should be.

        Detects an edited entry (its hash), an edited-and-rehashed entry, deletion, insertion and
        reordering (``seq`` / ``prev`` links), truncation (``HEAD``), and a torn or garbled line.

        Args:
            expected_head: a hash of some earlier entry kept outside the log (``fastml audit head``); the
                check fails unless an entry with that hash is in the chain.
        """
        try:
            with self._locked(shared=True):  # a consistent snapshot: no append between the log and HEAD
                return self._verify(expected_head)
        except PermissionError:  # a read-only copy (e.g. an archived export): no writer can interfere
            return self._verify(expected_head)

    def _verify(self, expected_head: str | None) -> VerifyResult:
        prev = GENESIS
        expected_seq = 1
        count = 0
        notes: list[str] = []
        seen_expected = expected_head is None

        def bad(lineno, seq, problem):
            return VerifyResult(False, count, prev, lineno, seq, problem, tuple(notes))

        try:
            head = self.head()
        except IntegrityError as exc:
            return bad(None, None, str(exc))
        hseq = head.get("seq") if head else None
        hash_at_head = None
        anchored = None
        if self.anchor:
            from fastml.governance import anchor as _anchor

            anchored = _anchor.load(self.directory, self.anchor_url)
        aseq = anchored["seq"] if anchored else None
        hash_at_anchor = None
        lines = open(self.log_path, "rb") if self.log_path.exists() else contextlib.nullcontext([])
        with lines as fh:
            for lineno, raw in enumerate(fh, 1):  # streamed: memory does not grow with the log
                if not raw.endswith(b"\n"):
                    return bad(lineno, None, f"line {lineno} is incomplete (no newline): a torn or truncated write")
                try:
                    entry = msgspec.json.decode(raw)
                except msgspec.DecodeError as exc:
                    return bad(lineno, None, f"line {lineno} is not valid JSON ({exc})")
                if not isinstance(entry, dict) or set(entry) != set(FIELDS):
                    keys = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
                    return bad(
                        lineno, None, f"line {lineno} does not have the entry fields {list(FIELDS)} (has {keys})"
                    )
                seq = entry["seq"]
                if entry_hash(entry) != entry["hash"]:
                    return bad(
                        lineno,
                        seq,
                        f"entry at line {lineno} (seq {seq}) was modified: its content does not match its hash",
                    )
                if raw != canonical_bytes(entry) + b"\n":
                    # append writes exactly the canonical bytes. Any other spelling of the same content was
                    # edited by hand: a duplicate key puts a forged value before the real one (a parser that
                    # keeps the first occurrence shows the forgery, the hash check sees the original).
                    return bad(
                        lineno,
                        seq,
                        f"entry at line {lineno} (seq {seq}) was modified: the line is not the canonical form "
                        "append writes (duplicate keys, reordered keys or extra whitespace)",
                    )
                if seq != expected_seq:
                    return bad(
                        lineno,
                        seq,
                        f"entry at line {lineno} has seq {seq}, expected {expected_seq}: "
                        "entries were deleted, inserted or reordered here",
                    )
                if entry["prev"] != prev:
                    return bad(
                        lineno,
                        seq,
                        f"entry at line {lineno} (seq {seq}) does not chain to the entry before it: "
                        "that entry was modified, or entries were deleted, inserted or reordered",
                    )
                prev = entry["hash"]
                if seq == hseq:
                    hash_at_head = prev
                if seq == aseq:
                    hash_at_anchor = prev
                if prev == expected_head:
                    seen_expected = True
                expected_seq += 1
                count += 1

        if head is None:
            if count:
                return bad(None, None, f"{self.head_path} is missing while the log has {count} entries")
        else:
            hhash = head.get("hash")
            if not isinstance(hseq, int) or hseq > count:
                return bad(
                    count + 1 if isinstance(hseq, int) else None,
                    hseq,
                    f"HEAD says the log ends at seq {hseq} but it has {count} entries: entries were removed from the end",
                )
            if hash_at_head != hhash:
                return bad(hseq, hseq, f"HEAD's hash does not match entry seq {hseq}: the log or HEAD was rewritten")
            if hseq < count:
                if hseq == count - 1:
                    notes.append(
                        "HEAD is one entry behind (a crash between append and HEAD update); the next append repairs it"
                    )
                else:
                    return bad(
                        hseq + 1,
                        hseq + 1,
                        f"HEAD ends at seq {hseq} but entries up to {count} follow it: entries were appended around the lock",
                    )
        if not seen_expected:
            return bad(None, None, f"no entry has the expected head hash {expected_head}: the chain was rewritten")
        if self.anchor and anchored is None and (count or head is not None):
            # Every anchored append stores the head, so a non-empty log without one means the anchor row (or
            # its database file) was deleted: otherwise deleting it would silently disable the check that
            # catches a rewritten log. An empty log without an anchor is a fresh one.
            return bad(
                None,
                None,
                f"the log has {count} entries but the registry database holds no anchored head for it: the anchor "
                "was deleted, or the log was written with anchoring off (AuditLog(anchor=False))",
            )
        if anchored is not None:
            problem = _anchor.signature_problem(self.directory, anchored)
            if problem is None and count < aseq:
                problem = f"the registry database anchors {aseq} entries but the log has {count}: " + (
                    "the log was deleted" if count == 0 else "entries were removed from the end"
                )
            elif problem is None and hash_at_anchor != anchored["hash"]:
                problem = f"entry seq {aseq} does not match the anchored head hash: the log was replaced"
            elif problem is None and count > aseq:
                problem = (
                    f"entries {aseq + 1}..{count} follow the anchored head (seq {aseq}): they were appended "
                    "without fastml's append (forged), or an append crashed before anchoring; the next append re-anchors"
                )
            if problem:
                return bad(None, None, problem)
        return VerifyResult(True, count, prev, notes=tuple(notes))

    def export(
        self, out: io.IOBase | str | os.PathLike, fmt: str = "jsonl", *, verify: bool = True
    ) -> VerifyResult | None:
        """Write every entry to ``out`` as ``jsonl``, ``json`` (with the verification result) or ``csv``.

        Raises:
            IntegrityError: ``verify`` is true and the chain is broken (nothing is written).
            InvalidInput: an unknown format.
        """
        if fmt not in ("jsonl", "json", "csv"):
            raise InvalidInput(f"export format must be jsonl, json or csv, got {fmt!r}")
        with self._locked(shared=True):  # export exactly what was verified
            result = self._verify(None) if verify else None
            if result is not None and not result.ok:
                raise IntegrityError(f"audit log fails verification: {result.problem}")
            entries = list(self.entries())
            head = self.head()
        if fmt == "jsonl":
            data = b"".join(canonical_bytes(e) + b"\n" for e in entries)
        elif fmt == "json":
            doc = {"verified": result.to_dict() if result else None, "head": head, "entries": entries}
            data = msgspec.json.format(msgspec.json.encode(doc), indent=2) + b"\n"
        else:
            import csv

            sio = io.StringIO()
            writer = csv.writer(sio)
            writer.writerow(FIELDS)
            for e in entries:
                writer.writerow(
                    [
                        e[f]
                        if f in ("seq", "at", "actor", "action", "target", "prev", "hash")
                        else canonical_bytes(e[f]).decode()
                        for f in FIELDS
                    ]
                )
            data = sio.getvalue().encode()
        if isinstance(out, (str, os.PathLike)):
            path = Path(out)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)  # all or nothing
        elif isinstance(out, io.TextIOBase):
            out.write(data.decode())
        else:
            out.write(data)
        return result


def import_registry_events(registry, audit: AuditLog) -> int:
    """Append the registry events the audit log does not hold yet (matched by event id), in id order.

    The live subscription (:func:`fastml.governance.attach`) records events as they happen; this catches up
    on events committed while no subscriber was attached (another process, a failed append). It holds the
    audit lock throughout, so two importers never add an event twice. Returns how many were added.
    """
    audit.directory.mkdir(parents=True, exist_ok=True)
    with audit._locked():
        seen = {
            e["details"].get("event_id")
            for e in audit.entries()
            if e["action"].startswith("registry.") and isinstance(e.get("details"), dict)
        }
        added = 0
        for event in registry.events():
            if event.get("id") in seen:
                continue
            kw = registry_event_to_entry(event)
            audit._append_locked(
                audit._body(kw["action"], kw["target"], kw["before"], kw["after"], kw["details"], kw["actor"], None)
            )
            added += 1
    return added


def registry_event_to_entry(event: Mapping[str, Any]) -> dict[str, Any]:
    """Map a registry event (``id, at, actor, kind, model, version, from, to, reason, details``) to
    :meth:`AuditLog.append` keyword arguments."""
    model, version = event.get("model"), event.get("version")
    target = f"{model}:{version}" if version is not None else model  # the registry's own ref syntax
    details = {
        "event_id": event.get("id"),
        "event_at": event.get("at"),
        "reason": event.get("reason"),
        "details": event.get("details"),
    }
    before = {"stage": event["from"]} if event.get("from") is not None else None
    after = {"stage": event["to"]} if event.get("to") is not None else None
    return {
        "action": f"registry.{event.get('kind', 'event')}",
        "target": target,
        "before": before,
        "after": after,
        "details": details,
        "actor": event.get("actor"),
    }
