"""Is the database at our head? migrations.check, migrations.verify, verify_schema=True, and the
offline SQL a DBA runs by hand."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, NullPool, create_engine, text

from flowsignals import (
    FlowSignalsError,
    InvalidArgumentError,
    PostgresSignalStore,
    SchemaNotAtHeadError,
    migrations,
)
from flowsignals.migrations.environment import DATABASE_URL_ENV
from flowsignals.tables import VERSION_TABLE
from flowsignals.urls import to_sqlalchemy_url

QUOTED_SCHEMA = 'Tenant "A" %s; x'
UNREACHABLE_URL = "postgresql://nobody@127.0.0.1:1/nowhere"


@pytest.fixture
def db(empty_database_url: str) -> Iterator[Engine]:
    engine = create_engine(to_sqlalchemy_url(empty_database_url), poolclass=NullPool)
    yield engine
    engine.dispose()


def test_head_is_the_only_head_of_the_flowsignals_branch() -> None:
    script = ScriptDirectory.from_config(migrations.alembic_config())
    assert script.get_heads() == [migrations.HEAD]
    assert [r.revision for r in script.get_revisions(f"{migrations.BRANCH}@head")] == ["fs_0005"]


def test_check_reports_current_and_head(empty_database_url: str) -> None:
    assert migrations.check(empty_database_url) == (None, "fs_0005")
    migrations.upgrade(empty_database_url, schema="s1")
    assert migrations.check(empty_database_url) == (None, "fs_0005")
    assert migrations.check(empty_database_url, schema="s1") == ("fs_0005", "fs_0005")


def test_verify_schema_refuses_an_empty_database(empty_database_url: str) -> None:
    with pytest.raises(SchemaNotAtHeadError) as raised:
        PostgresSignalStore(empty_database_url, verify_schema=True)
    assert str(raised.value) == (
        "flowsignals' schema is not installed, but this version of flowsignals needs revision "
        "'fs_0005': run `flowsignals migrate` (or flowsignals.migrations.upgrade(url, "
        "schema=None)), or `alembic upgrade flowsignals@head` where the host's Alembic "
        "includes our revisions"
    )


def test_verify_schema_accepts_a_database_at_head(empty_database_url: str, db: Engine) -> None:
    migrations.upgrade(empty_database_url)
    with PostgresSignalStore(empty_database_url, verify_schema=True) as store:
        assert store.get_waiter("00000000-0000-0000-0000-000000000001", "a") is None
    # An Engine of the caller's is checked too, and left open.
    with PostgresSignalStore(db, verify_schema=True) as store:
        assert store.engine is db


def test_verify_schema_refuses_another_revision(empty_database_url: str, db: Engine) -> None:
    migrations.upgrade(empty_database_url, schema=QUOTED_SCHEMA)
    with db.begin() as conn:
        conn.execute(
            text(f'UPDATE "Tenant ""A"" %s; x".{VERSION_TABLE} SET version_num = :old'),
            {"old": "fs_0000"},
        )

    with pytest.raises(SchemaNotAtHeadError) as raised:
        PostgresSignalStore(empty_database_url, schema=QUOTED_SCHEMA, verify_schema=True)

    assert str(raised.value) == (
        "flowsignals' schema in schema 'Tenant \"A\" %s; x' is at 'fs_0000', but this version "
        "of flowsignals needs revision 'fs_0005': run `flowsignals migrate --schema "
        '\'Tenant "A" %s; x\'` (or flowsignals.migrations.upgrade(url, schema=\'Tenant "A" '
        "%s; x')), or `alembic upgrade flowsignals@head` where the host's Alembic includes "
        "our revisions"
    )
    assert isinstance(raised.value, FlowSignalsError)


def test_verify_schema_refuses_a_downgraded_database(empty_database_url: str) -> None:
    migrations.upgrade(empty_database_url)
    migrations.downgrade(empty_database_url, revision="base")
    with pytest.raises(SchemaNotAtHeadError, match=r"^flowsignals' schema is not installed,"):
        PostgresSignalStore(empty_database_url, verify_schema=True)


def test_a_refused_store_disposes_the_engine_it_built(empty_database_url: str) -> None:
    with pytest.raises(SchemaNotAtHeadError):
        PostgresSignalStore(empty_database_url, verify_schema=True, application_name="fs-refused")
    engine = create_engine(to_sqlalchemy_url(empty_database_url), poolclass=NullPool)
    with engine.connect() as conn:
        left = conn.execute(
            text("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'fs-refused'")
        ).scalar_one()
    engine.dispose()
    assert left == 0


def test_offline_sql_for_a_quoted_schema_applies_as_printed(
    monkeypatch: pytest.MonkeyPatch, empty_database_url: str, db: Engine
) -> None:
    monkeypatch.setenv(DATABASE_URL_ENV, UNREACHABLE_URL)

    script = migrations.sql(schema=QUOTED_SCHEMA)

    assert 'CREATE SCHEMA IF NOT EXISTS "Tenant ""A"" %s; x";' in script.splitlines()
    assert "%%" not in script
    assert migrations.sql(schema=QUOTED_SCHEMA, revision="fs_0005") == script
    # What a DBA does with it: feed it to the server as it is (psql -f, or a simple query).
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        conn.execute(script.encode())
    assert migrations.check(db, schema=QUOTED_SCHEMA) == ("fs_0005", "fs_0005")
    with PostgresSignalStore(db, schema=QUOTED_SCHEMA, verify_schema=True) as store:
        store.register_waiter("00000000-0000-0000-0000-000000000001", "a", "sig")


def test_offline_sql_from_head_to_head_changes_nothing() -> None:
    script = migrations.sql(start="fs_0005")
    assert "CREATE" not in script and "INSERT" not in script and "UPDATE" not in script


@pytest.mark.parametrize("call", ["upgrade", "downgrade", "current", "check", "verify"])
def test_an_empty_schema_name_is_refused_not_read_as_the_search_path(call: str) -> None:
    # Nothing is connected to: the name is checked first.
    function = getattr(migrations, call)
    kwargs = {"revision": "base"} if call == "downgrade" else {}
    with pytest.raises(InvalidArgumentError, match=r"^schema: must not be empty"):
        function(UNREACHABLE_URL, "", **kwargs)
