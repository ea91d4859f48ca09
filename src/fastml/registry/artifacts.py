"""A content-addressed artifact store: files kept under ``<root>/<sha[:2]>/<sha>``.

A file is copied into ``<root>/.tmp/`` while its SHA-256 is computed, fsynced, then renamed to its final
name (an atomic step on POSIX) and the directory fsynced. A crash before the rename leaves only a
temporary file, which no reader ever looks at; a crash after it leaves a complete, valid file that
no version row points at yet (:meth:`ArtifactStore.orphans` lists those, :meth:`gc` removes them).
The registry commits a version row only after :meth:`put` returns, so no row ever points at a
missing or partial artifact.

Interrupted writes are cleaned up when the store is next opened (:meth:`ArtifactStore.sweep`): every copy
holds a shared ``flock`` on ``.tmp.lock`` while its temporary exists, and the sweep removes the temporaries
only when it can take that lock exclusively, i.e. when no copy is in flight in any process. The kernel drops
the lock of a process that dies, even by SIGKILL, so debris never waits for a timeout and a live copy is
never removed under its writer. Re-storing content whose stored copy is corrupt replaces that copy (with the
new one, after checking its hash) instead of keeping the bad file.

Reads never follow a symbolic link below the root (the shard directory or the file itself): a link is reported
as an integrity problem, even one pointing at identical bytes, because its target lives outside the store and
can change after the check. Only a 64-hex-digit digest names a file, so no caller text becomes a path.

:meth:`gc` and :meth:`put` share the lock: ``gc`` holds it exclusively while it deletes, and ``put`` refreshes the
modification time of content it reuses while holding it shared, so a registration in flight (stored, not yet
committed) is never collected from under its version row.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import stat
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from fastml.errors import IntegrityError, InvalidInput, NotFound

_CHUNK_BYTES = 1 << 20
_DIGEST = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class StoredArtifact:
    sha256: str
    size_bytes: int
    path: Path


def sha256_file(path: Path) -> tuple[str, int]:
    """SHA-256 hex digest and size in bytes of a file."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK_BYTES):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _sha256_fd(fd: int) -> tuple[str, int]:
    """SHA-256 hex digest and size of an open file, read in chunks from its start (never whole in memory)."""
    h = hashlib.sha256()
    size = 0
    os.lseek(fd, 0, os.SEEK_SET)
    while chunk := os.read(fd, _CHUNK_BYTES):
        h.update(chunk)
        size += len(chunk)
    return h.hexdigest(), size


def check_digest(sha256: str) -> str:
    """``sha256`` if it is a lowercase SHA-256 hex digest, else InvalidInput: the only text that names a stored
    file, so a digest taken from a tag or a request can never walk out of the store (``../..``)."""
    if not isinstance(sha256, str) or not _DIGEST.fullmatch(sha256):
        raise InvalidInput(f"not a sha256 digest (64 lowercase hex digits): {sha256!r}")
    return sha256


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ArtifactStore:
    """Files keyed by their SHA-256 under ``root``."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._root_text = str(self.root)
        self._tmp = self.root / ".tmp"
        # What this process cleaned or repaired: {"kind", "path", "size_bytes"} (reported by Registry.verify).
        self.cleaned: list[dict] = []

    @contextlib.contextmanager
    def _copy_lock(self, exclusive: bool, *, wait: bool = False):
        """Hold ``<root>/.tmp.lock``: shared while storing (many writers at once), exclusive to sweep or gc. Yields
        False when ``exclusive`` without ``wait`` and a copy is in flight (the lock is busy), else True."""
        self._tmp.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / ".tmp.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                # A writer waits for a sweep in progress (short); a sweep never waits for writers; gc does (it
                # must not delete a file a writer is reusing, and writers hold the lock only briefly).
                mode = fcntl.LOCK_SH
                if exclusive:
                    mode = fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB
                fcntl.flock(fd, mode)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)  # closing releases the lock

    def sweep(self) -> list[dict]:
        """Remove the temporaries of interrupted copies (a writer killed mid-copy) when no copy is in flight;
        returns what was removed (``{"kind": "temporary", "path", "size_bytes"}``), also kept in ``cleaned``."""
        if not self._tmp.is_dir():
            return []
        removed = []
        with self._copy_lock(exclusive=True) as idle:
            if not idle:
                return []  # a copy is running somewhere: its temporary is not debris; the next open sweeps
            for tmp in self.temporaries():
                try:
                    size = tmp.stat().st_size
                    tmp.unlink()
                except FileNotFoundError:
                    continue
                removed.append({"kind": "temporary", "path": str(tmp), "size_bytes": size})
        self.cleaned.extend(removed)
        return removed

    def path_for(self, sha256: str) -> Path:
        check_digest(sha256)
        # One Path parse instead of two joins: this runs on every resolve().
        return Path(f"{self._root_text}/{sha256[:2]}/{sha256}")

    def put(self, source: str | os.PathLike) -> StoredArtifact:
        """Copy ``source`` in (hashing while copying) and return where it lives.

        Content already present is not copied again (same hash, same size, and the stored file still hashes
        to it); a stored copy that no longer does is replaced by this one."""
        src = Path(source)
        if not src.is_file():
            raise InvalidInput(f"artifact {str(src)!r} is not a readable file")
        # Hash the source without writing anything: identical content may already be stored.
        sha, size = sha256_file(src)
        final = self.path_for(sha)
        with self._copy_lock(exclusive=False):
            problem = self.check(sha, size)
            if problem is None:
                # Reused content gets a fresh modification time while the lock is held, so gc (which keeps files
                # younger than its grace period) cannot delete it before the caller commits the row naming it.
                os.utime(final, follow_symlinks=False)
                return StoredArtifact(sha, size, final)
            # Missing, or a stored copy that no longer matches its name (or is a link): replace it with this
            # checked content.
            stored = self._copy(src, sha, size, final)
        if problem != "missing":
            self.cleaned.append({"kind": "repaired", "path": str(final), "size_bytes": size})
        return stored

    def _copy(self, src: Path, sha: str, size: int, final: Path) -> StoredArtifact:
        tmp = self._tmp / f"{uuid.uuid4().hex}.part"
        h = hashlib.sha256()
        copied = 0
        try:
            with open(src, "rb") as fin, open(tmp, "wb") as fout:
                while chunk := fin.read(_CHUNK_BYTES):
                    h.update(chunk)
                    fout.write(chunk)
                    copied += len(chunk)
                fout.flush()
                os.fsync(fout.fileno())
            if h.hexdigest() != sha or copied != size:
                raise IntegrityError(f"artifact {str(src)!r} changed while it was being copied; register again")
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.parent.is_symlink():
                # The rename would land wherever the link points, outside the store.
                raise IntegrityError(f"artifact directory {final.parent} is a symbolic link; refusing to store into it")
            os.replace(tmp, final)  # atomic: readers see nothing or the whole file
            _fsync_dir(final.parent)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return StoredArtifact(sha, size, final)

    def verified_path(self, sha256: str, size_bytes: int, what: str) -> Path:
        """The stored file for ``sha256`` after checking its size and hash (``IntegrityError`` if changed)."""
        path = self.path_for(sha256)
        problem = self.check(sha256, size_bytes)
        if problem == "missing":
            raise NotFound(f"artifact of {what} is missing: {path}")
        if problem:
            raise IntegrityError(f"artifact of {what} at {path} {problem}; refusing to load it")
        return path

    def verified_bytes(self, sha256: str, size_bytes: int | None, what: str) -> bytes:
        """The stored file's bytes for ``sha256``, read once through one descriptor and checked (size and hash)
        before they are returned: a loader that runs these bytes runs exactly what was verified, where reopening
        the verified path would read whatever the name holds by then. ``size_bytes`` None: a size nobody
        recorded (the hash is still checked; the file is read to its end).

        Raises:
            NotFound: no such stored file. IntegrityError: a link or other non-file, or a size or hash that differs.
        """
        path = self.path_for(sha256)
        check_digest(sha256)
        try:
            fd = self._open_stored(sha256)
        except FileNotFoundError:
            raise NotFound(f"artifact of {what} is missing: {path}") from None
        except OSError as exc:
            raise IntegrityError(
                f"artifact of {what} at {path} is not a plain file in the store ({exc.strerror}; links are never "
                "followed); refusing to load it"
            ) from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise IntegrityError(f"artifact of {what} at {path} is not a regular file; refusing to load it")
            chunks, size = [], 0
            # One byte more than expected tells a grown file from one of the right size.
            limit = size_bytes + 1 if size_bytes is not None else None
            while (limit is None or size < limit) and (
                chunk := os.read(fd, _CHUNK_BYTES if limit is None else min(_CHUNK_BYTES, limit - size))
            ):
                chunks.append(chunk)
                size += len(chunk)
        finally:
            os.close(fd)
        data = b"".join(chunks)
        if size_bytes is None:
            size_bytes = len(data)
        if len(data) > size_bytes:  # only the first size + 1 bytes were read: their digest would mean nothing
            found = f"more than {size_bytes} bytes"
        else:
            actual = hashlib.sha256(data).hexdigest()
            if len(data) == size_bytes and actual == sha256:
                return data
            found = f"{len(data)} bytes and sha256 {actual}"
        raise IntegrityError(
            f"artifact of {what} at {path} has {found}, expected {size_bytes} bytes and sha256 {sha256}; "
            "refusing to load it"
        )

    def _open_stored(self, sha256: str) -> int:
        """A read descriptor of the stored file, opened without following a link at the shard directory or the
        file (OSError ELOOP/ENOTDIR for a link, FileNotFoundError when absent). O_NONBLOCK: a FIFO planted under
        the name must not hang the reader; it is refused as not a regular file."""
        dfd = os.open(f"{self._root_text}/{sha256[:2]}", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            return os.open(sha256, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dfd)
        finally:
            os.close(dfd)

    def check(self, sha256: str, size_bytes: int) -> str | None:
        """None when the stored file matches, else what is wrong ("missing", a link or other non-file, size or
        hash mismatch, naming the expected and actual digests)."""
        check_digest(sha256)
        try:
            fd = self._open_stored(sha256)
        except FileNotFoundError:
            return "missing"
        except OSError as exc:  # ELOOP / ENOTDIR: a symbolic link where the file or its directory should be
            return (
                f"is not a plain file in the store ({exc.strerror}; links are never followed), expected sha256 {sha256}"
            )
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return f"is not a regular file, expected sha256 {sha256}"
            # Hashed through the descriptor just checked, so a rename in between cannot swap what is read.
            actual_sha, actual_size = _sha256_fd(fd)
        finally:
            os.close(fd)
        if actual_size != size_bytes:
            return f"has {actual_size} bytes, expected {size_bytes} (has sha256 {actual_sha}, expected {sha256})"
        if actual_sha != sha256:
            return f"has sha256 {actual_sha}, expected {sha256}"
        return None

    def stored(self) -> list[str]:
        """Every hash with a file under its final name."""
        if not self.root.is_dir():
            return []
        out = []
        for sub in self.root.iterdir():
            # A linked shard directory is not walked: gc would otherwise delete files wherever it points.
            if sub.is_dir() and not sub.is_symlink() and len(sub.name) == 2 and sub.name != ".t":
                # Links are listed too (never followed), so gc can remove an unreferenced one.
                out.extend(
                    p.name for p in sub.iterdir() if _DIGEST.fullmatch(p.name) and (p.is_symlink() or p.is_file())
                )
        return sorted(out)

    def temporaries(self) -> list[Path]:
        """Leftover partial copies (from a crash during a copy); never visible under a final name."""
        return sorted(self._tmp.glob("*.part")) if self._tmp.is_dir() else []

    def orphans(self, referenced: set[str]) -> list[str]:
        return [h for h in self.stored() if h not in referenced]

    def gc(self, referenced: set[str], *, older_than_s: float = 3600.0) -> list[str]:
        """Remove stored files no version references, and leftover temporaries, untouched for
        ``older_than_s`` (a younger file may belong to a registration in flight); returns removed hashes."""
        cutoff = time.time() - older_than_s
        removed = []
        # Exclusive: no put is between reusing a file (and refreshing its time) and returning it while we decide.
        with self._copy_lock(exclusive=True, wait=True):
            for h in self.orphans(referenced):
                path = self.path_for(h)
                try:
                    mtime = os.lstat(path).st_mtime
                except FileNotFoundError:
                    continue
                if mtime <= cutoff:
                    path.unlink(missing_ok=True)
                    removed.append(h)
            for tmp in self.temporaries():
                try:
                    if tmp.stat().st_mtime <= cutoff:
                        tmp.unlink(missing_ok=True)
                except FileNotFoundError:
                    continue
        return removed
