"""The migrations build exactly ``tables.py``, undo only their own work, and run from the CLI."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, NullPool, create_engine, inspect, text

from flowsignals import migrations
from flowsignals.embedded import EmbeddedPostgres
from flowsignals.migrations.environment import MIGRATION_LOCK_KEY, include_name_filter
from flowsignals.tables import TABLE_NAME, VERSION_TABLE, build_metadata
from flowsignals.urls import to_sqlalchemy_url

REPO_ROOT = Path(__file__).resolve().parents[2]
ALEMBIC = Path(sys.executable).with_name("alembic")
INDEX_NAME = "ix_flow_signal_waiters_run_id_signal_name_created_at"
#: Every index at head, with its columns and partial-index predicate.
HEAD_INDEXES = [
    ("ix_flow_signal_waiters_claimed_at", ["claimed_at"], "(claimed_at IS NOT NULL)"),
    (
        "ix_flow_signal_waiters_created_at_run_id_step_key",
        ["created_at", "run_id", "step_key"],
        None,
    ),
    ("ix_flow_signal_waiters_delivered_at", ["delivered_at"], "(delivered_at IS NOT NULL)"),
    (
        "ix_flow_signal_waiters_expires_at",
        ["expires_at"],
        "((expires_at IS NOT NULL) AND (delivered_at IS NULL) AND (claimed_at IS NULL))",
    ),
    (INDEX_NAME, ["run_id", "signal_name", "created_at"], None),
]

#: Nothing listens on port 1: proves offline mode never connects.
UNREACHABLE_URL = "postgresql://nobody@127.0.0.1:1/nowhere"


@pytest.fixture
def db(empty_database_url: str) -> Iterator[Engine]:
    engine = create_engine(to_sqlalchemy_url(empty_database_url), poolclass=NullPool)
    yield engine
    engine.dispose()


def _diff(engine: Engine, schema: str | None = None) -> list[Any]:
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn,
            opts={
                "compare_type": True,
                "compare_server_default": True,
                "include_schemas": schema is not None,
                "include_name": include_name_filter(schema),
            },
        )
        return list(compare_metadata(context, build_metadata(schema)))


def _tables(engine: Engine, schema: str = "public") -> set[str]:
    return set(inspect(engine).get_table_names(schema=schema))


def _alembic(*args: str, url: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != migrations.environment.DATABASE_URL_ENV}
    if url is not None:
        env[migrations.environment.DATABASE_URL_ENV] = url
    return subprocess.run(
        [str(ALEMBIC), *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_upgrade_head_builds_exactly_the_declared_schema(
    db: Engine, empty_database_url: str
) -> None:
    assert migrations.current(empty_database_url) is None

    migrations.upgrade(empty_database_url)

    assert _diff(db) == []
    assert migrations.current(empty_database_url) == migrations.HEAD == "fs_0005"
    assert _tables(db) == {TABLE_NAME, VERSION_TABLE}
    inspector = inspect(db)
    pk = inspector.get_pk_constraint(TABLE_NAME)
    assert (pk["name"], pk["constrained_columns"]) == (
        "pk_flow_signal_waiters",
        ["run_id", "step_key"],
    )
    indexes = [
        (ix["name"], ix["column_names"], ix["dialect_options"].get("postgresql_where"))
        for ix in inspector.get_indexes(TABLE_NAME)
    ]
    assert sorted(indexes) == HEAD_INDEXES


def test_upgrade_is_idempotent(db: Engine, empty_database_url: str) -> None:
    migrations.upgrade(empty_database_url)
    migrations.upgrade(empty_database_url)

    with db.connect() as conn:
        rows = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).all()
    assert [tuple(row) for row in rows] == [(migrations.HEAD,)]


def test_upgrade_into_a_schema_puts_table_and_version_table_there(
    db: Engine, empty_database_url: str
) -> None:
    migrations.upgrade(empty_database_url, schema="tenant_a")

    assert _diff(db, "tenant_a") == []
    assert _tables(db, "tenant_a") == {TABLE_NAME, VERSION_TABLE}
    assert _tables(db, "public") == set()
    assert migrations.current(empty_database_url, schema="tenant_a") == migrations.HEAD
    assert migrations.current(empty_database_url) is None

    migrations.downgrade(empty_database_url, schema="tenant_a", revision="base")

    assert _tables(db, "tenant_a") == {VERSION_TABLE}
    assert migrations.current(empty_database_url, schema="tenant_a") is None


def test_downgrade_base_removes_only_flowsignals_objects(
    db: Engine, empty_database_url: str
) -> None:
    with db.begin() as conn:
        conn.execute(text("CREATE TABLE host_orders (id integer PRIMARY KEY, note text)"))
        conn.execute(text("INSERT INTO host_orders VALUES (1, 'first'), (2, 'second')"))
        conn.execute(
            text(
                "CREATE TABLE alembic_version (version_num varchar(32) NOT NULL,"
                " CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num))"
            )
        )
        conn.execute(text("INSERT INTO alembic_version VALUES ('host_0001')"))
    before = _host_state(db)

    migrations.upgrade(empty_database_url)
    assert _tables(db) == {"host_orders", "alembic_version", TABLE_NAME, VERSION_TABLE}
    migrations.downgrade(empty_database_url, revision="base")

    assert _host_state(db) == before
    assert _tables(db) == {"host_orders", "alembic_version", VERSION_TABLE}
    assert migrations.current(empty_database_url) is None
    with db.connect() as conn:
        assert conn.execute(text(f"SELECT count(*) FROM {VERSION_TABLE}")).scalar_one() == 0
        assert (
            conn.execute(
                text("SELECT count(*) FROM pg_indexes WHERE indexname = :name"),
                {"name": INDEX_NAME},
            ).scalar_one()
            == 0
        )


def _host_state(engine: Engine) -> dict[str, Any]:
    inspector = inspect(engine)
    with engine.connect() as conn:
        return {
            "orders_columns": [
                (c["name"], str(c["type"]), c["nullable"])
                for c in inspector.get_columns("host_orders")
            ],
            "orders_pk": inspector.get_pk_constraint("host_orders"),
            "orders_rows": [
                tuple(r) for r in conn.execute(text("SELECT * FROM host_orders ORDER BY id"))
            ],
            "version_pk": inspector.get_pk_constraint("alembic_version"),
            "version_rows": [
                tuple(r) for r in conn.execute(text("SELECT version_num FROM alembic_version"))
            ],
        }


def test_with_a_caller_connection_the_caller_decides_commit(
    db: Engine, empty_database_url: str
) -> None:
    with db.connect() as conn:
        migrations.upgrade(conn)
        assert migrations.current(conn) == migrations.HEAD
        conn.rollback()
    assert migrations.current(empty_database_url) is None
    assert _tables(db) == set()

    with db.connect() as conn:
        migrations.upgrade(conn)
        conn.commit()
    assert migrations.current(empty_database_url) == migrations.HEAD


def test_socket_form_urls_work(
    pg_server: EmbeddedPostgres | None, db: Engine, empty_database_url: str
) -> None:
    if pg_server is None:
        pytest.skip("needs the embedded server's unix socket")
    database = db.url.database
    query_form = (
        f"postgresql://postgres@/{database}?host={pg_server.socket_dir}&port={pg_server.port}"
    )
    encoded_dir = str(pg_server.socket_dir).replace("/", "%2F")
    encoded_form = f"postgresql://postgres@{encoded_dir}:{pg_server.port}/{database}"

    migrations.upgrade(query_form)

    assert migrations.current(encoded_form) == migrations.HEAD
    with create_engine(to_sqlalchemy_url(query_form), poolclass=NullPool).connect() as conn:
        # A unix-socket connection has no server IP address.
        assert conn.execute(text("SELECT inet_server_addr()")).scalar_one() is None
        conn.close()
    migrations.downgrade(encoded_form, revision="base")
    assert migrations.current(query_form) is None


def test_alembic_cli_upgrades_and_downgrades(db: Engine, empty_database_url: str) -> None:
    upgraded = _alembic("upgrade", "head", url=empty_database_url)
    assert upgraded.returncode == 0, upgraded.stderr
    assert "Running upgrade  -> fs_0001" in upgraded.stderr
    assert "Running upgrade fs_0001 -> fs_0002" in upgraded.stderr
    assert "Running upgrade fs_0002 -> fs_0003" in upgraded.stderr
    assert "Running upgrade fs_0003 -> fs_0004" in upgraded.stderr
    assert "Running upgrade fs_0004 -> fs_0005" in upgraded.stderr
    assert _diff(db) == []

    current = _alembic("current", url=empty_database_url)
    assert current.returncode == 0, current.stderr
    assert current.stdout.strip() == "fs_0005 (head)"

    checked = _alembic("check", url=empty_database_url)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.strip() == "No new upgrade operations detected."

    downgraded = _alembic("downgrade", "base", url=empty_database_url)
    assert downgraded.returncode == 0, downgraded.stderr
    assert _tables(db) == {VERSION_TABLE}


def test_alembic_cli_takes_url_and_schema_as_x_arguments(
    db: Engine, empty_database_url: str
) -> None:
    url = db.url.render_as_string(hide_password=False)  # the postgresql+psycopg:// form
    upgraded = _alembic("-x", f"url={url}", "-x", "schema=fs", "upgrade", "head", url=None)
    assert upgraded.returncode == 0, upgraded.stderr
    assert migrations.current(empty_database_url, schema="fs") == migrations.HEAD
    assert _tables(db, "fs") == {TABLE_NAME, VERSION_TABLE}


def test_alembic_cli_without_a_database_says_how_to_give_one() -> None:
    result = _alembic("upgrade", "head", url=None)
    # Alembic's own way to fail a command: "FAILED: <message>", exit status 255, no traceback.
    assert result.returncode == 255
    assert "FAILED: no database given" in result.stdout + result.stderr
    assert "set FLOWSIGNALS_DATABASE_URL" in result.stderr
    assert "Traceback" not in result.stderr


EXPECTED_OFFLINE_UPGRADE = f"""\
BEGIN;

SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY});

CREATE SCHEMA IF NOT EXISTS tenant_b;

CREATE TABLE tenant_b.flowsignals_alembic_version (
    version_num VARCHAR(32) NOT NULL, 
    CONSTRAINT flowsignals_alembic_version_pkc PRIMARY KEY (version_num)
);

-- Running upgrade  -> fs_0001

CREATE TABLE tenant_b.flow_signal_waiters (
    run_id UUID NOT NULL, 
    step_key VARCHAR(256) NOT NULL, 
    signal_name VARCHAR(256) NOT NULL, 
    created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL, 
    expires_at TIMESTAMP WITH TIME ZONE, 
    delivered_at TIMESTAMP WITH TIME ZONE, 
    payload_json TEXT, 
    CONSTRAINT pk_flow_signal_waiters PRIMARY KEY (run_id, step_key)
);

CREATE INDEX {INDEX_NAME} ON tenant_b.flow_signal_waiters (run_id, signal_name, created_at);

INSERT INTO tenant_b.flowsignals_alembic_version (version_num) VALUES ('fs_0001') \
RETURNING tenant_b.flowsignals_alembic_version.version_num;

-- Running upgrade fs_0001 -> fs_0002

ALTER TABLE tenant_b.flow_signal_waiters ADD COLUMN claimed_at TIMESTAMP WITH TIME ZONE;

CREATE INDEX IF NOT EXISTS ix_flow_signal_waiters_created_at_run_id_step_key \
ON tenant_b.flow_signal_waiters (created_at, run_id, step_key);

CREATE INDEX IF NOT EXISTS ix_flow_signal_waiters_expires_at ON tenant_b.flow_signal_waiters \
(expires_at) WHERE expires_at IS NOT NULL AND delivered_at IS NULL AND claimed_at IS NULL;

CREATE INDEX IF NOT EXISTS ix_flow_signal_waiters_delivered_at \
ON tenant_b.flow_signal_waiters (delivered_at) WHERE delivered_at IS NOT NULL;

CREATE INDEX IF NOT EXISTS ix_flow_signal_waiters_claimed_at \
ON tenant_b.flow_signal_waiters (claimed_at) WHERE claimed_at IS NOT NULL;

UPDATE tenant_b.flowsignals_alembic_version SET version_num='fs_0002' \
WHERE tenant_b.flowsignals_alembic_version.version_num = 'fs_0001';

-- Running upgrade fs_0002 -> fs_0003

ALTER TABLE tenant_b.flow_signal_waiters ALTER COLUMN step_key TYPE VARCHAR(256) COLLATE "C";

ALTER TABLE tenant_b.flow_signal_waiters ALTER COLUMN signal_name TYPE VARCHAR(256) COLLATE "C";

UPDATE tenant_b.flowsignals_alembic_version SET version_num='fs_0003' \
WHERE tenant_b.flowsignals_alembic_version.version_num = 'fs_0002';

-- Running upgrade fs_0003 -> fs_0004

ALTER TABLE tenant_b.flow_signal_waiters ADD COLUMN watched_at TIMESTAMP WITH TIME ZONE;

UPDATE tenant_b.flowsignals_alembic_version SET version_num='fs_0004' \
WHERE tenant_b.flowsignals_alembic_version.version_num = 'fs_0003';

-- Running upgrade fs_0004 -> fs_0005

ALTER TABLE tenant_b.flow_signal_waiters ADD COLUMN idempotency_key VARCHAR(256) COLLATE "C";

ALTER TABLE tenant_b.flow_signal_waiters ADD COLUMN delivered_signal_name VARCHAR(256) COLLATE "C";

UPDATE tenant_b.flowsignals_alembic_version SET version_num='fs_0005' \
WHERE tenant_b.flowsignals_alembic_version.version_num = 'fs_0004';

COMMIT;

"""  # noqa: W291 (SQLAlchemy's DDL ends column lines with a space)


def test_offline_sql_needs_no_server() -> None:
    output = io.StringIO()
    config = migrations.alembic_config(url=UNREACHABLE_URL, schema="tenant_b", stdout=output)

    command.upgrade(config, "head", sql=True)

    assert output.getvalue() == EXPECTED_OFFLINE_UPGRADE


def test_alembic_cli_offline_sql_needs_no_server() -> None:
    upgrade = _alembic("upgrade", "head", "--sql", url=UNREACHABLE_URL)
    assert upgrade.returncode == 0, upgrade.stderr
    assert "CREATE TABLE flow_signal_waiters (" in upgrade.stdout
    assert f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY});" in upgrade.stdout

    downgrade = _alembic("downgrade", "fs_0001:base", "--sql", url=None)
    assert downgrade.returncode == 0, downgrade.stderr
    statements = [
        line for line in downgrade.stdout.splitlines() if line.startswith(("DROP", "DELETE"))
    ]
    assert statements == [
        f"DROP INDEX {INDEX_NAME};",
        "DROP TABLE flow_signal_waiters;",
        "DELETE FROM flowsignals_alembic_version WHERE "
        "flowsignals_alembic_version.version_num = 'fs_0001';",
    ]
