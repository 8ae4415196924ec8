"""The store and the migrations in a named schema: quoting, the search_path, independence."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, NullPool, create_engine, inspect

from flowsignals import (
    DeliveryResult,
    DeliveryStatus,
    PostgresSignalStore,
    SchemaNotAtHeadError,
    migrations,
)
from flowsignals.migrations.environment import DATABASE_URL_ENV
from flowsignals.tables import TABLE_NAME, VERSION_TABLE
from flowsignals.urls import to_sqlalchemy_url

REPO_ROOT = Path(__file__).resolve().parents[2]
ALEMBIC = Path(sys.executable).with_name("alembic")
QUOTED_SCHEMA = 'Tenant "A" %s; x'


@pytest.fixture
def db(empty_database_url: str) -> Iterator[Engine]:
    engine = create_engine(to_sqlalchemy_url(empty_database_url), poolclass=NullPool)
    yield engine
    engine.dispose()


def _alembic(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != DATABASE_URL_ENV}
    return subprocess.run(
        [str(ALEMBIC), *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def _use(store: PostgresSignalStore, run: uuid.UUID) -> None:
    """Every core operation once, with exact outcomes."""
    store.register_waiter(run, "a", "sig")
    delivered = store.deliver_signal(run, "sig", '{"ok": true}')
    assert delivered.status is DeliveryStatus.DELIVERED and delivered.step_key == "a"
    assert store.deliver_signal(run, "sig", "{}") == DeliveryResult(
        DeliveryStatus.ALREADY_DELIVERED, "a", delivered.delivered_at
    )
    assert store.deliver_signal(run, "other", "{}") == DeliveryResult(DeliveryStatus.NOT_FOUND)
    waiter = store.get_waiter(run, "a")
    assert waiter is not None and waiter.payload_json == '{"ok": true}'
    assert store.remove_waiter(run, "a") is True
    assert store.get_waiter(run, "a") is None


def test_alembic_cli_migrates_into_a_schema_that_needs_quoting(
    empty_database_url: str, db: Engine
) -> None:
    url = f"url={empty_database_url}"
    upgraded = _alembic("-x", url, "-x", f"schema={QUOTED_SCHEMA}", "upgrade", "head")
    assert upgraded.returncode == 0, upgraded.stderr

    assert set(inspect(db).get_table_names(schema=QUOTED_SCHEMA)) == {TABLE_NAME, VERSION_TABLE}
    assert inspect(db).get_table_names(schema="public") == []
    assert migrations.check(db, schema=QUOTED_SCHEMA) == ("fs_0005", "fs_0005")
    current = _alembic("-x", url, "-x", f"schema={QUOTED_SCHEMA}", "current")
    assert current.stdout.strip() == "fs_0005 (head)", current.stderr
    with PostgresSignalStore(empty_database_url, schema=QUOTED_SCHEMA, verify_schema=True) as s:
        _use(s, uuid.uuid4())

    downgraded = _alembic("-x", url, "-x", f"schema={QUOTED_SCHEMA}", "downgrade", "base")
    assert downgraded.returncode == 0, downgraded.stderr
    assert inspect(db).get_table_names(schema=QUOTED_SCHEMA) == [VERSION_TABLE]


def test_without_a_schema_the_store_follows_the_search_path(
    empty_database_url: str, db: Engine
) -> None:
    migrations.upgrade(empty_database_url, schema="app_signals")
    on_path = {"connect_args": {"options": "-c search_path=app_signals"}}

    with PostgresSignalStore(
        empty_database_url, engine_options=on_path, verify_schema=True
    ) as store:
        assert store.schema is None
        run = uuid.uuid4()
        store.register_waiter(run, "a", "sig")
        with db.connect() as conn:
            rows = conn.exec_driver_sql("SELECT step_key FROM app_signals.flow_signal_waiters")
            assert [tuple(r) for r in rows] == [("a",)]
        _use(store, uuid.uuid4())

    # The default search_path ("$user", public) does not hold the table.
    with pytest.raises(SchemaNotAtHeadError, match=r"^flowsignals' schema is not "):
        PostgresSignalStore(empty_database_url, verify_schema=True)


def test_two_schemas_in_one_database_are_independent(empty_database_url: str) -> None:
    migrations.upgrade(empty_database_url, schema="tenant_one")
    migrations.upgrade(empty_database_url, schema="tenant_two")
    run = uuid.uuid4()
    with (
        PostgresSignalStore(empty_database_url, schema="tenant_one") as one,
        PostgresSignalStore(empty_database_url, schema="tenant_two") as two,
    ):
        one.register_waiter(run, "a", "sig")
        two.register_waiter(run, "a", "sig")

        assert one.deliver_signal(run, "sig", "1").status is DeliveryStatus.DELIVERED
        # The same signal to the same run in the other schema still finds its waiter pending.
        assert two.deliver_signal(run, "sig", "2").status is DeliveryStatus.DELIVERED
        first, second = one.get_waiter(run, "a"), two.get_waiter(run, "a")
        assert first is not None and first.payload_json == "1"
        assert second is not None and second.payload_json == "2"

        assert one.remove_waiter(run, "a") is True
        assert one.get_waiter(run, "a") is None
        assert two.get_waiter(run, "a") == second

    migrations.downgrade(empty_database_url, schema="tenant_one", revision="base")
    assert migrations.check(empty_database_url, schema="tenant_one") == (None, "fs_0005")
    assert migrations.check(empty_database_url, schema="tenant_two") == ("fs_0005", "fs_0005")
