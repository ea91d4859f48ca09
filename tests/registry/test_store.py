"""Store: automatic schema creation and migration with a schema version, SQLite WAL, indexes."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from fastml.errors import Conflict, InvalidInput
from fastml.registry import Registry, store


def test_default_url_is_sqlite_wal_under_fastml_home(fastml_home):
    reg = Registry()
    try:
        assert reg.url == f"sqlite:///{fastml_home / 'registry.db'}"
        assert (fastml_home / "registry.db").is_file()
        with reg.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert store.schema_version(conn) == store.SCHEMA_VERSION
    finally:
        reg.close()


def test_schema_created_with_version_and_indexes(reg):
    with reg.engine.connect() as conn:
        assert store.schema_version(conn) == store.SCHEMA_VERSION == 2
        insp = sa.inspect(conn)
        assert {"models", "versions", "version_tags", "aliases", "requests", "approvals", "events", "meta"} <= set(
            insp.get_table_names()
        )
        version_indexes = {ix["name"] for ix in insp.get_indexes("versions")}
        assert {"ix_versions_model_stage", "ix_versions_stage", "ix_versions_parent"} <= version_indexes
        assert "ix_version_tags_key_value" in {ix["name"] for ix in insp.get_indexes("version_tags")}
        assert "ix_events_model_at" in {ix["name"] for ix in insp.get_indexes("events")}
        uniques = {tuple(u["column_names"]) for u in insp.get_unique_constraints("versions")}
        assert ("model_id", "sort_key") in uniques and ("model_id", "exclusive_stage") in uniques


def test_migrates_a_version_1_database(registry_url):
    engine = store.create_engine(registry_url)
    store.migrate(engine, target=1)  # an old fastml's database: no events index yet
    with engine.connect() as conn:
        assert store.schema_version(conn) == 1
        assert "ix_events_model_at" not in {ix["name"] for ix in sa.inspect(conn).get_indexes("events")}
    engine.dispose()
    reg = Registry(registry_url)  # opening migrates
    try:
        with reg.engine.connect() as conn:
            assert store.schema_version(conn) == 2
            assert "ix_events_model_at" in {ix["name"] for ix in sa.inspect(conn).get_indexes("events")}
    finally:
        reg.close()


def test_refuses_a_database_from_a_newer_fastml(registry_url):
    reg = Registry(registry_url)
    with store.write_transaction(reg.engine) as conn:
        conn.execute(store.meta.update().where(store.meta.c.key == "schema_version").values(value="99"))
    reg.close()
    with pytest.raises(Conflict, match="schema version 99 is newer"):
        Registry(registry_url)


@pytest.mark.parametrize("url", ["", "registry.db", "mysql://x@localhost/db"])
def test_bad_urls_are_invalid_input(url):
    with pytest.raises(InvalidInput, match="URL"):
        store.create_engine(url)


def test_a_plain_postgresql_url_uses_the_installed_driver():
    # SQLAlchemy 2.1 reads postgresql:// as psycopg 3, which fastml does not install: the documented URL failed
    engine = store.create_engine("postgresql://ana@127.0.0.1:1/reg")  # no connection is made here
    assert engine.dialect.driver == "psycopg2"
    assert engine.url.render_as_string(hide_password=False) == "postgresql+psycopg2://ana@127.0.0.1:1/reg"
    explicit = store.create_engine("postgresql+psycopg2://ana@127.0.0.1:1/reg")
    assert explicit.dialect.driver == "psycopg2"


def test_registry_url_from_settings(fastml_home, monkeypatch):
    from fastml.config import reset_settings

    monkeypatch.setenv("FASTML_REGISTRY_URL", f"sqlite:///{fastml_home / 'other.db'}")
    reset_settings()
    reg = Registry()
    try:
        assert reg.url.endswith("other.db") and (fastml_home / "other.db").is_file()
    finally:
        reg.close()


def test_public_names_and_light_cli_import():
    import subprocess
    import sys

    import fastml
    from fastml.registry import ModelVersion, Registry, parse_ref

    assert fastml.Registry is Registry and ModelVersion.__name__ == "ModelVersion" and parse_ref("m").name == "m"
    # `fastml registry --help` imports only the CLI module: no SQLAlchemy, no numpy.
    code = "import sys, fastml.registry.cli; print(sorted(m for m in ('sqlalchemy', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
