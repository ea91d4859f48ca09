"""Registry fixtures: every registry test runs on SQLite and on a real PostgreSQL server (Feast style).

The PostgreSQL server is started once per session from Debian's binaries (/usr/lib/postgresql/*/bin)
when they exist: initdb and the server run as the ``postgres`` user (PostgreSQL refuses root) in a
temporary directory, on a free 127.0.0.1 port, with durability switched off for speed; it is stopped
at the end of the session by its PID. Each test gets its own schema, dropped afterwards.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from .onnx_files import onnx_model_bytes


def _pg_bindir() -> Path | None:
    for cand in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.path.exists(os.path.join(cand, "initdb")) and os.path.exists(os.path.join(cand, "postgres")):
            return Path(cand)
    return None


def _as_postgres(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    runner = shutil.which("runuser")
    return [runner, "-u", "postgres", "--", *cmd] if runner else ["su", "postgres", "-c", " ".join(cmd)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_server():
    """Base URL (without database options) of a private PostgreSQL server, or skip with the reason."""
    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL binaries not installed (apt-get install postgresql; scripts/setup.sh does)")
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        pytest.skip("psycopg2 is not installed")
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server as")
    root = Path(tempfile.mkdtemp(prefix="fastml-pg-"))
    data = root / "data"
    data.mkdir()
    if os.geteuid() == 0:
        for p in (root, data):
            os.chown(p, pw.pw_uid, pw.pw_gid)
    subprocess.run(
        _as_postgres(
            [str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"]
        ),
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    port = _free_port()
    opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
    log = root / "server.log"
    proc = subprocess.run(
        _as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(log), "-w", "-t", "60", "start"]),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    if proc.returncode != 0:
        text = log.read_text() if log.exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"could not start PostgreSQL: {proc.stdout.decode()} {text}")
    pid = int((data / "postmaster.pid").read_text().splitlines()[0])
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        os.kill(pid, signal.SIGINT)  # "fast" shutdown
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)  # waiting for an external process to exit, not synchronising a test
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def registry_url(request, fastml_home):
    """A registry URL on each backend: SQLite under this test's FASTML_HOME, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{fastml_home / 'registry.db'}"
        return
    base = request.getfixturevalue("postgres_server")
    import sqlalchemy as sa

    schema = "t_" + uuid.uuid4().hex[:12]
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f"CREATE SCHEMA {schema}")
    try:
        yield f"{base}?options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as c:
            c.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()


@pytest.fixture
def make_registry(registry_url):
    """Factory for registries on this test's backend; all are closed at the end of the test."""
    from fastml.registry import Registry

    made = []

    def make(**kwargs):
        reg = Registry(registry_url, **kwargs)
        made.append(reg)
        return reg

    yield make
    for reg in made:
        reg.close()


@pytest.fixture
def reg(make_registry):
    return make_registry()


@pytest.fixture
def sqlite_reg(fastml_home):
    """A SQLite registry, for input-validation tests whose outcome cannot depend on the backend."""
    from fastml.registry import Registry

    reg = Registry(f"sqlite:///{fastml_home / 'registry.db'}")
    yield reg
    reg.close()


@pytest.fixture
def artifact(tmp_path):
    """Factory for small distinct ONNX model files: artifact("a") -> Path, content derived from the tag
    (``size_bytes``: exactly that many bytes)."""

    def make(tag: str = "a", size_bytes: int | None = None) -> Path:
        p = tmp_path / f"model-{tag}.onnx"
        p.write_bytes(onnx_model_bytes(tag, size_bytes))
        return p

    return make
