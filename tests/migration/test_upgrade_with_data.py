"""Upgrading a database that already holds waiters keeps every one of them, exactly."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import Engine, NullPool, create_engine, text

from flowsignals import DeliveryStatus, PostgresSignalStore, migrations
from flowsignals.urls import to_sqlalchemy_url

ROWS = 500
COLUMNS = "run_id, step_key, signal_name, created_at, expires_at, delivered_at, payload_json"


@pytest.fixture
def db(empty_database_url: str) -> Iterator[Engine]:
    engine = create_engine(to_sqlalchemy_url(empty_database_url), poolclass=NullPool)
    yield engine
    engine.dispose()


def _rows(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        query = f"SELECT {COLUMNS} FROM flow_signal_waiters ORDER BY run_id, step_key"
        return [tuple(row) for row in conn.execute(text(query))]


def test_upgrade_from_fs_0001_keeps_every_waiter(db: Engine, empty_database_url: str) -> None:
    migrations.upgrade(empty_database_url, revision="fs_0001")
    past = datetime.now(timezone.utc) - timedelta(hours=1)
    future = datetime.now(timezone.utc) + timedelta(hours=1)
    with db.begin() as conn:
        for index in range(ROWS):
            kind = index % 3
            conn.execute(
                text(
                    "INSERT INTO flow_signal_waiters (run_id, step_key, signal_name, expires_at,"
                    " delivered_at, payload_json) VALUES (:run, :step, :sig, :exp, :at, :body)"
                ),
                {
                    "run": uuid.uuid4(),
                    "step": f"step-{index}",
                    "sig": "sig",
                    "exp": (None, past, future)[kind],
                    "at": past if kind == 0 else None,
                    "body": f'{{"n": {index}, "text": "Zoë €"}}' if kind == 0 else None,
                },
            )
    before = _rows(db)
    assert len(before) == ROWS

    migrations.upgrade(empty_database_url)

    assert migrations.current(empty_database_url) == migrations.HEAD
    assert _rows(db) == before
    with db.connect() as conn:
        claimed = conn.execute(
            text("SELECT count(*) FROM flow_signal_waiters WHERE claimed_at IS NOT NULL")
        ).scalar_one()
    assert claimed == 0
    # The kept waiters behave as before: the pending ones take a delivery, the expired ones
    # are claimed once, the delivered ones stay delivered.
    with PostgresSignalStore(empty_database_url) as store:
        pending_run = next(row[0] for row in before if row[4] == future)
        assert store.deliver_signal(pending_run, "sig", "{}").status is DeliveryStatus.DELIVERED
        claimed_waiters = store.claim_expired(limit=ROWS)
        assert sorted(w.step_key for w in claimed_waiters) == sorted(
            row[1] for row in before if row[4] == past and row[5] is None
        )
        assert store.count_waiters().delivered == len([r for r in before if r[5]]) + 1


def test_downgrade_to_fs_0001_drops_only_the_new_objects(
    db: Engine, empty_database_url: str
) -> None:
    migrations.upgrade(empty_database_url)
    run = uuid.uuid4()
    with PostgresSignalStore(empty_database_url) as store:
        store.register_waiter(run, "a", "sig")
        store.deliver_signal(run, "sig", '"kept"')

    migrations.downgrade(empty_database_url, revision="fs_0001")

    assert migrations.current(empty_database_url) == "fs_0001"
    with db.connect() as conn:
        columns = conn.execute(
            text(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_name = 'flow_signal_waiters' ORDER BY ordinal_position"
            )
        ).scalars()
        assert list(columns) == COLUMNS.split(", ")
        indexes = conn.execute(
            text("SELECT indexname FROM pg_indexes WHERE tablename = 'flow_signal_waiters'")
        ).scalars()
        assert sorted(indexes) == [
            "ix_flow_signal_waiters_run_id_signal_name_created_at",
            "pk_flow_signal_waiters",
        ]
        payload = conn.execute(text("SELECT payload_json FROM flow_signal_waiters")).scalar_one()
    assert payload == '"kept"'
