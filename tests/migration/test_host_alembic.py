"""Our revisions included in a host application's own Alembic project, run by the real CLI.

The host project below is what a user writes: its own ``alembic.ini``, its own ``env.py`` (which
knows nothing of flowsignals beyond an optional ``flowsignals_schema`` option), its own revision,
and ``flowsignals:migrations/versions`` added to ``version_locations``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, NullPool, create_engine, inspect, text

from flowsignals import HostLineageError, PostgresSignalStore, migrations
from flowsignals.tables import TABLE_NAME, VERSION_TABLE
from flowsignals.urls import to_sqlalchemy_url

ALEMBIC = Path(sys.executable).with_name("alembic")

HOST_INI = """\
[alembic]
script_location = %(here)s/migrations
# The host's own revisions, then flowsignals' from the installed package.
version_locations = %(here)s/migrations/versions flowsignals:migrations/versions
path_separator = space
"""

HOST_ENV = '''\
"""The host application's env.py: its own metadata, its own alembic_version."""
import os

from alembic import context
from sqlalchemy import Column, Integer, MetaData, Table, Text, create_engine

metadata = MetaData()
Table("host_orders", metadata, Column("id", Integer, primary_key=True), Column("note", Text))

engine = create_engine(os.environ["HOST_DATABASE_URL"])
with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # Optional: where flowsignals' table goes (default: the search_path).
        flowsignals_schema=os.environ.get("HOST_FLOWSIGNALS_SCHEMA"),
    )
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
'''

HOST_REVISION = '''\
"""Host orders table."""
import sqlalchemy as sa
from alembic import op

revision = "host_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "host_orders",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("note", sa.Text),
    )


def downgrade():
    op.drop_table("host_orders")
'''


@pytest.fixture
def host_project(tmp_path: Path) -> Path:
    (tmp_path / "migrations" / "versions").mkdir(parents=True)
    (tmp_path / "alembic.ini").write_text(HOST_INI)
    (tmp_path / "migrations" / "env.py").write_text(HOST_ENV)
    (tmp_path / "migrations" / "versions" / "host_0001_orders.py").write_text(HOST_REVISION)
    return tmp_path


@pytest.fixture
def db(empty_database_url: str) -> Iterator[Engine]:
    engine = create_engine(to_sqlalchemy_url(empty_database_url), poolclass=NullPool)
    yield engine
    engine.dispose()


def _host_alembic(
    project: Path, engine: Engine, *args: str, schema: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSIGNALS_")}
    env["HOST_DATABASE_URL"] = engine.url.render_as_string(hide_password=False)
    if schema is not None:
        env["HOST_FLOWSIGNALS_SCHEMA"] = schema
    result = subprocess.run(
        [str(ALEMBIC), *args], cwd=project, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result


def _versions(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT version_num FROM alembic_version ORDER BY 1"))
        return [row[0] for row in rows]


def test_host_upgrades_both_lineages_with_heads(host_project: Path, db: Engine) -> None:
    heads = _host_alembic(host_project, db, "heads")
    assert sorted(heads.stdout.split("\n")[:2]) == [
        "fs_0005 (flowsignals) (head)",
        "host_0001 (head)",
    ]

    _host_alembic(host_project, db, "upgrade", "heads")

    assert set(inspect(db).get_table_names()) == {"host_orders", TABLE_NAME, "alembic_version"}
    # Two independent branches in one version table: one row per branch head.
    assert _versions(db) == ["fs_0005", "host_0001"]
    assert migrations.check(db) == ("fs_0005", "fs_0005")
    # Our own lineage refuses to run there, rather than failing half-way on existing objects.
    with pytest.raises(HostLineageError, match=r"recorded in the host application's alembic_"):
        migrations.upgrade(db)
    with pytest.raises(HostLineageError):
        migrations.downgrade(db, revision="base")
    assert _versions(db) == ["fs_0005", "host_0001"]
    with PostgresSignalStore(db, verify_schema=True) as store:
        store.register_waiter("00000000-0000-0000-0000-000000000001", "a", "sig")
        delivered = store.deliver_signal("00000000-0000-0000-0000-000000000001", "sig", "{}")
        assert delivered.step_key == "a"

    # Downgrading our branch leaves the host's table and revision exactly as they were.
    _host_alembic(host_project, db, "downgrade", "flowsignals@base")
    assert set(inspect(db).get_table_names()) == {"host_orders", "alembic_version"}
    assert _versions(db) == ["host_0001"]
    assert migrations.check(db) == (None, "fs_0005")


def test_host_upgrades_only_flowsignals_into_a_schema(host_project: Path, db: Engine) -> None:
    with db.begin() as conn:
        conn.execute(text("CREATE SCHEMA signals"))

    _host_alembic(host_project, db, "upgrade", "flowsignals@head", schema="signals")

    assert set(inspect(db).get_table_names()) == {"alembic_version"}
    assert inspect(db).get_table_names(schema="signals") == [TABLE_NAME]
    assert VERSION_TABLE not in inspect(db).get_table_names(schema="signals")
    assert _versions(db) == ["fs_0005"]
    current = _host_alembic(host_project, db, "current")
    assert current.stdout.strip() == "fs_0005 (head)"
    with PostgresSignalStore(db, schema="signals", verify_schema=True) as store:
        assert store.get_waiter("00000000-0000-0000-0000-000000000001", "a") is None

    _host_alembic(host_project, db, "upgrade", "heads", schema="signals")
    assert _versions(db) == ["fs_0005", "host_0001"]
    assert set(inspect(db).get_table_names()) == {"host_orders", "alembic_version"}
