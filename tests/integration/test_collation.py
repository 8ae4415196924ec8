"""Names order by code point, as InMemorySignalStore orders them, whatever the database's
default collation (fs_0003 makes step_key and signal_name COLLATE "C")."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, NullPool, create_engine, text
from sqlalchemy.exc import NotSupportedError

from flowsignals import PostgresSignalStore, migrations
from flowsignals.urls import to_sqlalchemy_url
from tests.conftest import Databases

KEYS = ["b", "a", "B", "Ä", "_"]  # registration order; code point order is "B _ a b Ä"


def test_name_columns_are_collate_c(engine: Engine) -> None:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT column_name, collation_name FROM information_schema.columns"
                " WHERE table_name = 'flow_signal_waiters' AND collation_name IS NOT NULL"
                " ORDER BY column_name"
            )
        ).all()
    assert [tuple(row) for row in rows] == [
        ("delivered_signal_name", "C"),
        ("idempotency_key", "C"),
        ("signal_name", "C"),
        ("step_key", "C"),
    ]


@pytest.fixture
def linguistic_database_url(databases: Databases) -> Iterator[str]:
    """A database whose default collation is ICU's en-US (skipped where ICU is missing)."""
    name = f"fs_icu_{uuid.uuid4().hex[:12]}"
    try:
        databases.execute(
            f'CREATE DATABASE "{name}" TEMPLATE template0 ENCODING UTF8'
            " LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C'"
        )
    except NotSupportedError as exc:
        pytest.skip(f"no linguistic collation to test against: {exc.orig}")
    try:
        url = databases.url(name)
        migrations.upgrade(url)
        yield url
    finally:
        databases.drop(name)


def test_ties_and_listing_follow_code_points_under_a_linguistic_default(
    linguistic_database_url: str,
) -> None:
    url = linguistic_database_url
    probe = create_engine(to_sqlalchemy_url(url), poolclass=NullPool)
    with probe.connect() as conn:
        # The database really orders these differently by default.
        default = conn.execute(
            text("SELECT k FROM unnest(CAST(:keys AS text[])) AS k ORDER BY k"), {"keys": KEYS}
        ).scalars()
        assert list(default) != sorted(KEYS)
    probe.dispose()
    run = uuid.uuid4()
    with PostgresSignalStore(url) as store:
        with store.engine.begin() as conn:  # one transaction: one created_at for all
            for key in KEYS:
                store.register_waiter(run, key, "sig", conn=conn)
        listed = [w.step_key for w in store.list_waiters(run_id=run)]
        served = [store.deliver_signal(run, "sig", "{}").step_key for _ in KEYS]
    assert listed == served == sorted(KEYS) == ["B", "_", "a", "b", "Ä"]
