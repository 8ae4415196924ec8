"""Bad input, on both stores: a clear InvalidArgumentError naming the argument, nothing written.

Each case runs against a store holding one pending and one delivered waiter; afterwards both are
exactly as they were and the store still works.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import date, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import URL, create_engine

from flowsignals import (
    DeliveryStatus,
    FlowSignalsError,
    InMemorySignalStore,
    InvalidArgumentError,
    PostgresSignalStore,
    SignalStore,
    WaiterCursor,
)
from tests.integration.faults import OffsetOutOfRange

RUN = uuid.UUID("6f1c1a36-0c3e-4d7e-9a55-3f1f4b1e2a10")
LIMIT = 64  # max_payload_bytes of the stores under test


@pytest.fixture(params=["memory", "postgres"])
def store(request: pytest.FixtureRequest) -> Iterator[SignalStore]:
    if request.param == "memory":
        yield InMemorySignalStore(max_payload_bytes=LIMIT)
    else:
        with PostgresSignalStore(
            request.getfixturevalue("database_url"), max_payload_bytes=LIMIT
        ) as store:
            yield store


Call = Callable[[SignalStore], object]


def _register(**overrides: Any) -> Call:
    args: dict[str, Any] = {"run_id": RUN, "step_key": "new", "signal_name": "sig"}
    args.update(overrides)
    return lambda store: store.register_waiter(**args)


def _deliver(**overrides: Any) -> Call:
    args: dict[str, Any] = {"run_id": RUN, "signal_name": "sig", "payload_json": "{}"}
    args.update(overrides)
    return lambda store: store.deliver_signal(**args)


def _get(**overrides: Any) -> Call:
    args: dict[str, Any] = {"run_id": RUN, "step_key": "pending"}
    args.update(overrides)
    return lambda store: store.get_waiter(**args)


def _remove(**overrides: Any) -> Call:
    args: dict[str, Any] = {"run_id": RUN, "step_key": "pending"}
    args.update(overrides)
    return lambda store: store.remove_waiter(**args)


_naive = datetime(2999, 1, 1)
_huge = "x" * (LIMIT - 1)

CASES: list[Any] = [
    # run_id
    pytest.param(_register(run_id="not-a-uuid"), "run_id", id="register-run_id-garbage"),
    pytest.param(_register(run_id=""), "run_id", id="register-run_id-empty"),
    pytest.param(_register(run_id=12345), "run_id", id="register-run_id-int"),
    pytest.param(_register(run_id=RUN.bytes), "run_id", id="register-run_id-bytes"),
    pytest.param(_register(run_id=None), "run_id", id="register-run_id-none"),
    pytest.param(_deliver(run_id="1234"), "run_id", id="deliver-run_id-short"),
    pytest.param(_get(run_id=[RUN]), "run_id", id="get-run_id-list"),
    pytest.param(_remove(run_id="x" * 10_000), "run_id", id="remove-run_id-long"),
    # step_key
    pytest.param(_register(step_key=""), "step_key", id="register-step_key-empty"),
    pytest.param(_register(step_key="x" * 257), "step_key", id="register-step_key-257"),
    pytest.param(_register(step_key="a\x00b"), "step_key", id="register-step_key-nul"),
    pytest.param(_register(step_key=" lead"), "step_key", id="register-step_key-leading-space"),
    pytest.param(_register(step_key="trail\n"), "step_key", id="register-step_key-trailing-nl"),
    pytest.param(_register(step_key="\u00a0nbsp"), "step_key", id="register-step_key-nbsp"),
    pytest.param(_register(step_key="\ud800"), "step_key", id="register-step_key-surrogate"),
    pytest.param(_register(step_key=b"bytes"), "step_key", id="register-step_key-bytes"),
    pytest.param(_register(step_key=None), "step_key", id="register-step_key-none"),
    pytest.param(_get(step_key=""), "step_key", id="get-step_key-empty"),
    pytest.param(_get(step_key=7), "step_key", id="get-step_key-int"),
    pytest.param(_remove(step_key="x" * 300), "step_key", id="remove-step_key-300"),
    pytest.param(_remove(step_key="\x00"), "step_key", id="remove-step_key-nul"),
    # signal_name
    pytest.param(_register(signal_name=""), "signal_name", id="register-signal_name-empty"),
    pytest.param(_register(signal_name=" "), "signal_name", id="register-signal_name-space"),
    pytest.param(_register(signal_name="é" * 257), "signal_name", id="register-signal_name-257"),
    pytest.param(_deliver(signal_name="s\x00"), "signal_name", id="deliver-signal_name-nul"),
    pytest.param(_deliver(signal_name=1.5), "signal_name", id="deliver-signal_name-float"),
    # expires_at
    pytest.param(_register(expires_at=_naive), "expires_at", id="register-expires_at-naive"),
    pytest.param(_register(expires_at="2999-01-01"), "expires_at", id="register-expires_at-str"),
    pytest.param(_register(expires_at=date(2999, 1, 1)), "expires_at", id="expires_at-date"),
    pytest.param(_register(expires_at=1_900_000_000), "expires_at", id="expires_at-epoch"),
    pytest.param(
        _register(expires_at=datetime.min.replace(tzinfo=timezone(timedelta(hours=5)))),
        "expires_at",
        id="expires_at-before-year-1-utc",
    ),
    pytest.param(
        _register(expires_at=datetime.max.replace(tzinfo=timezone.utc)),
        "expires_at",
        id="expires_at-last-representable-day",
    ),
    pytest.param(
        _register(expires_at=datetime(2030, 1, 1, tzinfo=OffsetOutOfRange())),
        "expires_at",
        id="expires_at-offset-over-a-day",
    ),
    # payload_json
    pytest.param(_deliver(payload_json={"a": 1}), "payload_json", id="payload-dict"),
    pytest.param(_deliver(payload_json=b"{}"), "payload_json", id="payload-bytes"),
    pytest.param(_deliver(payload_json=None), "payload_json", id="payload-none"),
    pytest.param(_deliver(payload_json=""), "payload_json", id="payload-empty"),
    pytest.param(_deliver(payload_json="   "), "payload_json", id="payload-blank"),
    pytest.param(_deliver(payload_json="{'a': 1}"), "payload_json", id="payload-single-quotes"),
    pytest.param(_deliver(payload_json="NaN"), "payload_json", id="payload-nan"),
    pytest.param(_deliver(payload_json="[Infinity]"), "payload_json", id="payload-infinity"),
    pytest.param(_deliver(payload_json="-Infinity"), "payload_json", id="payload-neg-infinity"),
    pytest.param(_deliver(payload_json="[1,]"), "payload_json", id="payload-trailing-comma"),
    pytest.param(_deliver(payload_json='"a\tb"'), "payload_json", id="payload-raw-tab-in-str"),
    pytest.param(_deliver(payload_json="{} {}"), "payload_json", id="payload-two-values"),
    pytest.param(_deliver(payload_json="01"), "payload_json", id="payload-leading-zero"),
    pytest.param(_deliver(payload_json='"\ud800"'), "payload_json", id="payload-lone-surrogate"),
    pytest.param(_deliver(payload_json="\x00"), "payload_json", id="payload-nul"),
    pytest.param(_deliver(payload_json=f'"{_huge}"'), "payload_json", id="payload-one-over"),
    pytest.param(
        _deliver(payload_json=f'"{"€" * (LIMIT // 3)}"'),
        "payload_json",
        id="payload-multibyte-over",
    ),
    pytest.param(_deliver(payload_json="[" * 100_000), "payload_json", id="payload-deep-open"),
    pytest.param(_deliver(payload_json="x" * 10_000_000), "payload_json", id="payload-10mb"),
    # timeout
    pytest.param(
        lambda store: store.wait_for_signal(RUN, "pending", timeout=10**400),
        "timeout",
        id="wait-timeout-int-beyond-float",
    ),
    # conn
    pytest.param(_get(conn="postgresql://x"), "conn", id="get-conn-str"),
    pytest.param(_register(conn=object()), "conn", id="register-conn-object"),
]


def _snapshot(store: SignalStore) -> object:
    return (store.get_waiter(RUN, "pending"), store.get_waiter(RUN, "done"))


@pytest.mark.parametrize(("call", "argument"), CASES)
def test_bad_argument_is_refused_and_nothing_changes(
    store: SignalStore, call: Call, argument: str
) -> None:
    store.register_waiter(RUN, "done", "done-sig")
    store.deliver_signal(RUN, "done-sig", '{"kept": true}')
    store.register_waiter(RUN, "pending", "sig")
    before = _snapshot(store)

    with pytest.raises(InvalidArgumentError) as caught:
        call(store)

    error = caught.value
    assert isinstance(error, ValueError) and isinstance(error, FlowSignalsError)
    assert error.argument == argument
    assert str(error).startswith(f"{argument}: ")
    assert _snapshot(store) == before
    assert store.get_waiter(RUN, "new") is None
    # The store still works after refusing.
    result = store.deliver_signal(RUN, "sig", '{"ok": 1}')
    assert (result.status, result.step_key) == (DeliveryStatus.DELIVERED, "pending")


def test_bad_input_matrix_is_large() -> None:
    assert len(CASES) >= 30


def test_payload_exactly_at_the_limit_is_accepted(store: SignalStore) -> None:
    payload = '"' + "€" * ((LIMIT - 2) // 3) + "x" * ((LIMIT - 2) % 3) + '"'
    assert len(payload.encode("utf-8")) == LIMIT
    store.register_waiter(RUN, "a", "sig")
    assert store.deliver_signal(RUN, "sig", payload).status is DeliveryStatus.DELIVERED
    waiter = store.get_waiter(RUN, "a")
    assert waiter is not None and waiter.payload_json == payload


@pytest.mark.parametrize("limit", [0, -1, 1.5, True, "10"])
def test_bad_payload_limit_is_refused(limit: Any) -> None:
    with pytest.raises(InvalidArgumentError, match=r"^max_payload_bytes: "):
        InMemorySignalStore(max_payload_bytes=limit)
    with pytest.raises(InvalidArgumentError, match=r"^max_payload_bytes: "):
        PostgresSignalStore("postgresql://nobody@/nowhere", max_payload_bytes=limit)


@pytest.mark.parametrize("database", [None, 5, b"postgresql://x"])
def test_bad_database_is_refused(database: Any) -> None:
    with pytest.raises(InvalidArgumentError, match=r"^database: "):
        PostgresSignalStore(database)


def test_a_non_psycopg_engine_is_refused() -> None:
    engine = create_engine("sqlite://")
    with pytest.raises(InvalidArgumentError, match=r"^database: an Engine must use the psycopg"):
        PostgresSignalStore(engine)
    engine.dispose()


def test_an_unknown_pre_ping_is_refused() -> None:
    with pytest.raises(InvalidArgumentError, match=r"^pre_ping: "):
        PostgresSignalStore("postgresql://nobody@/nowhere", pre_ping="bogus")  # type: ignore[arg-type]


@pytest.mark.parametrize("token", ["garbage", "", "2030-01-01T00:00:00/not-a-uuid/a", "x/y"])
def test_a_bad_cursor_token_is_refused(token: str) -> None:
    with pytest.raises(InvalidArgumentError, match=r"^token: is not a waiter cursor token"):
        WaiterCursor.from_token(token)


_NOWHERE = "postgresql://nobody@/nowhere"


@pytest.mark.parametrize(
    ("options", "argument"),
    [
        ({"application_name": "\ud800"}, "application_name"),
        ({"application_name": "a\x00b"}, "application_name"),
        ({"application_name": 7}, "application_name"),
        ({"engine_options": {"no_such_option": 1}}, "engine_options"),
        ({"engine_options": "pool_size=5"}, "engine_options"),
        ({"engine_options": {"connect_args": "x"}}, "engine_options"),
        ({"application_name": "x" * 64}, "application_name"),
        ({"engine_options": {"connect_args": {"no_such_option": "1"}}}, "engine_options"),
        ({"engine_options": {"isolation_level": "NO SUCH LEVEL"}}, "engine_options"),
        ({"pool_timeout": 1e10}, "pool_timeout"),
        ({"pool_timeout": 10**400}, "pool_timeout"),
        ({"recheck_interval": 1e10}, "recheck_interval"),
        ({"poll_interval": 10**400}, "poll_interval"),
    ],
    ids=lambda value: repr(value)[:40] if not isinstance(value, str) else value,
)
def test_bad_store_options_are_refused(options: dict[str, Any], argument: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        PostgresSignalStore(_NOWHERE, **options)
    assert caught.value.argument == argument
    assert str(caught.value).startswith(f"{argument}: ")


@pytest.mark.parametrize(
    "database",
    [
        "postgresql://localhost:notaport/db",
        "postgresql://user:secret@localhost:5x/db",
        URL.create("postgresql+psycopg2", database="x"),
        URL.create("mysql", database="x"),
    ],
    ids=["port", "port-with-password", "url-object-psycopg2", "url-object-mysql"],
)
def test_bad_urls_are_refused_naming_the_database(database: Any) -> None:
    with pytest.raises(InvalidArgumentError, match=r"^database: ") as caught:
        PostgresSignalStore(database)
    assert "secret" not in str(caught.value)


def test_libpq_connect_args_and_a_full_length_application_name_are_taken(
    database_url: str,
) -> None:
    options = {"connect_args": {"options": "-c statement_timeout=5000", "sslmode": "disable"}}
    with PostgresSignalStore(
        database_url, application_name="é" * 31 + "x", engine_options=options
    ) as store:
        assert store.count_waiters().total == 0


def test_a_url_object_is_taken_as_a_url(database_url: str) -> None:
    from flowsignals.urls import to_sqlalchemy_url

    with PostgresSignalStore(to_sqlalchemy_url(database_url).set(drivername="postgresql")) as store:
        assert store.count_waiters().total == 0


def test_an_in_memory_clock_must_be_a_clock() -> None:
    with pytest.raises(InvalidArgumentError, match=r"^clock: must be a callable"):
        InMemorySignalStore(clock="not callable")  # type: ignore[arg-type]
    store = InMemorySignalStore(clock=lambda: 1_900_000_000)  # type: ignore[arg-type,return-value]
    with pytest.raises(InvalidArgumentError, match=r"^clock: must return timezone-aware"):
        store.register_waiter(RUN, "a", "sig")
