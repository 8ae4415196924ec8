"""Hostile but valid input: injection strings, odd schemas, time zones, edge datetimes.

Everything here is accepted, so each case must round-trip verbatim and touch nothing else.
(Refused input is tests/integration/test_bad_input.py.) Every string argument is a bound
parameter and the schema a quoted identifier; psycopg's placeholders are pyformat, so a ``%``
that reached the SQL text unescaped would break the statement, hence the ``%`` cases.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import create_engine, text

from flowsignals import DeliveryStatus, PostgresSignalStore, migrations
from flowsignals.urls import to_sqlalchemy_url

INJECTIONS = [
    "'; DROP TABLE flow_signal_waiters; --",
    "' OR '1'='1",
    '" OR ""="',
    "a'); DELETE FROM flow_signal_waiters; --",
    "%s",
    "%(run)s",
    "%(step)s%%",
    "100%",
    "$1",
    ":step",
    "?",
    "\\",
    "\\'; SELECT 1; --",
    "E'\\x41'",
    "/* comment */",
    "$$; SELECT pg_sleep(10); $$",
    "Robert'); DROP TABLE students;--",
    "\u202eevil",
    "line\u2028separator",
    "tab\tinside",
    "😀 emoji",
    "\uff26\uff35\uff2c\uff2c fullwidth",
    "x" * 256,
    "é" * 256,
]


@pytest.fixture
def store(database_url: str) -> Iterator[PostgresSignalStore]:
    with PostgresSignalStore(database_url) as store:
        yield store


def _tables(store: PostgresSignalStore) -> list[tuple[str, str]]:
    with store.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT table_schema, table_name FROM information_schema.tables"
                " WHERE table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2"
            )
        ).all()
    return [(schema, name) for schema, name in rows]


@pytest.mark.parametrize("value", INJECTIONS, ids=range(len(INJECTIONS)))
def test_injection_strings_round_trip_through_every_string_argument(
    store: PostgresSignalStore, value: str
) -> None:
    tables = _tables(store)
    bystander = uuid.uuid4()
    store.register_waiter(bystander, "other", "other")
    run = uuid.uuid4()
    payload = '{"v": ' + _json_string(value) + "}"

    store.register_waiter(str(run), value, value)
    result = store.deliver_signal(str(run), value, payload)
    assert (result.status, result.step_key) == (DeliveryStatus.DELIVERED, value)
    waiter = store.get_waiter(run, value)
    assert waiter is not None
    assert (waiter.step_key, waiter.signal_name, waiter.payload_json) == (value, value, payload)
    assert store.remove_waiter(run, value) is True
    assert store.get_waiter(run, value) is None

    assert _tables(store) == tables
    other = store.get_waiter(bystander, "other")
    assert other is not None and other.delivered_at is None


def _json_string(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


@pytest.mark.parametrize(
    "run_text",
    [
        "{12345678-1234-5678-1234-567812345678}",
        "urn:uuid:12345678-1234-5678-1234-567812345678",
        "12345678123456781234567812345678",
        "12345678-1234-5678-1234-567812345678".upper(),
    ],
)
def test_every_spelling_of_a_run_id_is_the_same_run(
    store: PostgresSignalStore, run_text: str
) -> None:
    run = uuid.UUID("12345678-1234-5678-1234-567812345678")
    store.register_waiter(run_text, "a", "sig")
    waiter = store.get_waiter(run, "a")
    assert waiter is not None and waiter.run_id == run
    assert store.deliver_signal(run_text, "sig", "1").step_key == "a"


SCHEMAS = [
    "fs",
    "Mixed Case",
    "select",
    "we'ird",
    'dq"uote',
    "semi;colon",
    "pct%s",
    "pct%(x)s",
    "pct%%",
    "back\\slash",
    "Ünïcødé ✓",
    "x; DROP SCHEMA public CASCADE; --",
]


@pytest.mark.parametrize("schema", SCHEMAS, ids=range(len(SCHEMAS)))
def test_hostile_schema_names_are_quoted_everywhere(database_url: str, schema: str) -> None:
    migrations.upgrade(database_url, schema=schema)
    assert migrations.current(database_url, schema=schema) == migrations.HEAD
    with PostgresSignalStore(database_url, schema=schema) as store:
        assert (schema, "flow_signal_waiters") in _tables(store)
        run = uuid.uuid4()
        store.register_waiter(run, "a", "sig")
        assert store.deliver_signal(run, "sig", '{"s": 1}').step_key == "a"
        waiter = store.get_waiter(run, "a")
        assert waiter is not None and waiter.payload_json == '{"s": 1}'
        with store.engine.begin() as conn:
            store.register_waiter(run, "b", "sig", conn=conn)
        assert store.remove_waiter(run, "b") is True
        # Nothing leaked into the default schema.
        assert ("public", "flow_signal_waiters") in _tables(store)
        with store.engine.connect() as conn:
            count = conn.execute(text("SELECT count(*) FROM public.flow_signal_waiters")).scalar()
        assert count == 0
    migrations.downgrade(database_url, schema=schema, revision="base")


EDGE_DEADLINES = [
    datetime(1, 1, 2, tzinfo=timezone.utc),
    datetime(9999, 12, 30, tzinfo=timezone.utc),
    datetime(9999, 12, 30, 13, 59, 59, 999999, tzinfo=timezone(timedelta(hours=14))),
    datetime(1, 1, 2, 11, 0, tzinfo=timezone(timedelta(hours=-12))),
    datetime(2999, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=5, minutes=45))),
    datetime(2999, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=-3, minutes=-30))),
    # Sub-minute offsets, as old local mean times have.
    datetime(2999, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=5, minutes=53, seconds=28))),
    datetime(2999, 3, 12, 2, 30, tzinfo=ZoneInfo("America/St_Johns")),  # in the DST gap
    datetime(2999, 11, 5, 1, 30, fold=1, tzinfo=ZoneInfo("America/St_Johns")),  # repeated hour
    datetime(2000, 2, 29, 23, 59, 59, 999999, tzinfo=timezone.utc),
    datetime(1900, 1, 1, tzinfo=ZoneInfo("Europe/Amsterdam")),  # LMT era offset +00:19:32
]

TIME_ZONES = ["UTC", "America/St_Johns", "Pacific/Kiritimati", "Etc/GMT+12", "Asia/Kathmandu"]


@pytest.mark.parametrize("zone", TIME_ZONES)
def test_session_time_zone_never_changes_a_result(database_url: str, zone: str) -> None:
    options = {"connect_args": {"options": f"-c timezone={zone}"}}
    run = uuid.uuid4()
    with (
        PostgresSignalStore(database_url, engine_options=options) as store,
        PostgresSignalStore(database_url) as utc,
    ):
        with store.engine.connect() as conn:
            assert conn.execute(text("SHOW timezone")).scalar() == zone
        for i, deadline in enumerate(EDGE_DEADLINES):
            store.register_waiter(run, f"s{i:02}", f"sig{i}", deadline)
            seen = store.get_waiter(run, f"s{i:02}")
            assert seen is not None and seen.expires_at == deadline
            assert seen.expires_at is not None and seen.expires_at.utcoffset() == timedelta(0)
            assert seen == utc.get_waiter(run, f"s{i:02}")
        # The far-past deadlines expired, by the server's clock, whatever the zone.
        expired = store.deliver_signal(run, "sig0", "{}")
        assert (expired.status, expired.step_key) == (DeliveryStatus.EXPIRED, "s00")
        result = store.deliver_signal(run, "sig1", "{}")
        assert result.status is DeliveryStatus.DELIVERED
        assert result.delivered_at is not None and result.delivered_at.tzinfo == timezone.utc
        assert abs(result.delivered_at - datetime.now(timezone.utc)) < timedelta(minutes=5)
        assert utc.deliver_signal(run, "sig1", "{}") == store.deliver_signal(run, "sig1", "{}")


@pytest.mark.parametrize("datestyle", ["SQL, DMY", "German", "Postgres, MDY"])
def test_session_datestyle_never_changes_a_result(database_url: str, datestyle: str) -> None:
    options = {"connect_args": {"options": f"-c datestyle={datestyle.replace(' ', '')}"}}
    run = uuid.uuid4()
    deadline = datetime(2999, 1, 2, 3, 4, 5, 6, tzinfo=timezone.utc)
    with PostgresSignalStore(database_url, engine_options=options) as store:
        store.register_waiter(run, "a", "sig", deadline)
        result = store.deliver_signal(run, "sig", "{}")
        waiter = store.get_waiter(run, "a")
    assert result.status is DeliveryStatus.DELIVERED
    assert waiter is not None and waiter.expires_at == deadline
    assert waiter.delivered_at == result.delivered_at


def test_a_caller_connection_in_another_time_zone(database_url: str) -> None:
    engine = create_engine(
        to_sqlalchemy_url(database_url),
        connect_args={"options": "-c timezone=America/St_Johns"},
    )
    try:
        store = PostgresSignalStore(engine)
        run = uuid.uuid4()
        deadline = datetime(2999, 1, 1, tzinfo=ZoneInfo("America/St_Johns"))
        with engine.begin() as conn:
            store.register_waiter(run, "a", "sig", deadline, conn=conn)
            waiter = store.get_waiter(run, "a", conn=conn)
        assert waiter is not None and waiter.expires_at == deadline
        assert waiter.created_at.tzinfo == timezone.utc
    finally:
        engine.dispose()
