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
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from fastml.errors import IntegrityError, InvalidInput, NotFound

_CHUNK_BYTES = 1 << 20


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
    def _copy_lock(self, exclusive: bool):
        """Hold ``<root>/.tmp.lock``: shared while copying (many writers at once), exclusive to sweep. Yields False
        when ``exclusive`` and a copy is in flight (the lock is busy), else True."""
        self._tmp.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / ".tmp.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                # A writer waits for a sweep in progress (short); a sweep never waits for writers.
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB if exclusive else fcntl.LOCK_SH)
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
        # One Path parse instead of two joins: this runs on every resolve().
        return Path(f"{self._root_text}/{sha256[:2]}/{sha256}")

    def put(self, source: str | os.PathLike) -> StoredArtifact:
        """Copy ``source`` in (hashing while copying) and return where it lives.

        Content already present is not copied again (same hash, same size, and the stored file still hashes
        to it); a stored copy that no longer does is replaced by this one."""
        src = Path(source)
        if not src.is_file():
            raise InvalidInput(f"artifact {str(src)!r} is not a readable file")
        # Fast path: identical content already stored (hash the source without writing anything).
        sha, size = sha256_file(src)
        final = self.path_for(sha)
        corrupt = False
        if final.is_file() and final.stat().st_size == size:
            if sha256_file(final)[0] == sha:
                return StoredArtifact(sha, size, final)
            corrupt = True  # the stored copy no longer matches its name: replace it with this checked content
        with self._copy_lock(exclusive=False):
            stored = self._copy(src, sha, size, final)
        if corrupt:
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

    def check(self, sha256: str, size_bytes: int) -> str | None:
        """None when the stored file matches, else what is wrong ("missing", size or hash mismatch)."""
        path = self.path_for(sha256)
        try:
            actual_size = path.stat().st_size
        except FileNotFoundError:
            return "missing"
        if actual_size != size_bytes:
            return f"has {actual_size} bytes, expected {size_bytes}"
        actual_sha, _ = sha256_file(path)
        if actual_sha != sha256:
            return f"has sha256 {actual_sha}, expected {sha256}"
        return None

    def stored(self) -> list[str]:
        """Every hash with a file under its final name."""
        if not self.root.is_dir():
            return []
        out = []
        for sub in self.root.iterdir():
            if sub.is_dir() and len(sub.name) == 2 and sub.name != ".t":
                out.extend(p.name for p in sub.iterdir() if p.is_file() and len(p.name) == 64)
        return sorted(out)

    def temporaries(self) -> list[Path]:
        """Leftover partial copies (from a crash during a copy); never visible under a final name."""
        return sorted(self._tmp.glob("*.part")) if self._tmp.is_dir() else []

    def orphans(self, referenced: set[str]) -> list[str]:
        return [h for h in self.stored() if h not in referenced]

    def gc(self, referenced: set[str], *, older_than_s: float = 3600.0) -> list[str]:
        """Remove stored files no version references, and leftover temporaries, untouched for
        ``older_than_s`` (a younger file may belong to a registration in flight); returns removed hashes."""
        import time

        cutoff = time.time() - older_than_s
        removed = []
        for h in self.orphans(referenced):
            path = self.path_for(h)
            if path.stat().st_mtime <= cutoff:
                path.unlink(missing_ok=True)
                removed.append(h)
        for tmp in self.temporaries():
            if tmp.stat().st_mtime <= cutoff:
                tmp.unlink(missing_ok=True)
        return removed
