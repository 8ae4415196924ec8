"""wait_for_signal: exact outcomes on both stores, then LISTEN/NOTIFY faults on PostgreSQL.

No timing assertions beyond generous bounds: every test asserts what a wait returned or
raised; latency is measured in bench/.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from functools import partial
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, create_engine, make_url, text

from flowsignals import (
    DeliveryStatus,
    FlowSignalsError,
    InMemorySignalStore,
    InvalidArgumentError,
    PostgresSignalStore,
    SignalStore,
    SignalWaiter,
    WaiterExpiredError,
    WaiterNotFoundError,
    WaitTimeoutError,
)
from flowsignals.embedded import EmbeddedPostgres
from flowsignals.urls import to_sqlalchemy_url
from tests.integration.faults import Call, admin_connection, lock_waiters, wait_until

#: Generous: a wait that should end "at once" must end well within this.
PATIENCE = 30.0


@pytest.fixture(params=["memory", "postgres", "postgres-polling"])
def store(request: pytest.FixtureRequest) -> Iterator[SignalStore]:
    if request.param == "memory":
        yield InMemorySignalStore()
    elif request.param == "postgres":
        yield request.getfixturevalue("pg_store")
    else:
        url = request.getfixturevalue("database_url")
        with PostgresSignalStore(url, listen=False, poll_interval=0.01) as polling:
            yield polling


@pytest.fixture
def run() -> uuid.UUID:
    return uuid.uuid4()


class Background:
    """Runs a call on a thread; ``result()`` returns its value or raises its exception."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self._value: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(call,))
        self._thread.start()

    def _run(self, call: Callable[[], Any]) -> None:
        try:
            self._value = call()
        except BaseException as exc:
            self._error = exc

    def result(self, timeout: float = PATIENCE + 10) -> Any:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the call did not return"
        if self._error is not None:
            raise self._error
        return self._value


def test_delivery_just_after_the_wait_starts_is_never_missed(
    store: SignalStore, run: uuid.UUID
) -> None:
    for index in range(100):
        step = f"step-{index}"
        store.register_waiter(run, step, f"sig-{index}")
        waiting = Background(partial(store.wait_for_signal, run, step, timeout=PATIENCE))
        time.sleep((index % 21) / 1000)  # 0-20 ms after the wait starts
        assert store.deliver_signal(run, f"sig-{index}", str(index)).delivered
        waiter = waiting.result()
        assert (waiter.step_key, waiter.payload_json) == (step, str(index))


def test_already_delivered_returns_at_once(store: SignalStore, run: uuid.UUID) -> None:
    store.register_waiter(run, "a", "sig")
    delivered = store.deliver_signal(run, "sig", '{"ok": true}')
    for timeout in (0, 0.0, timedelta(0), PATIENCE):
        waiter = store.wait_for_signal(run, "a", timeout=timeout)
        assert waiter.payload_json == '{"ok": true}'
        assert waiter.delivered_at == delivered.delivered_at
        assert waiter == store.get_waiter(run, "a")


def test_timeout_raises_and_is_never_a_payload(store: SignalStore, run: uuid.UUID) -> None:
    store.register_waiter(run, "a", "sig")
    for timeout in (0, 0.05, timedelta(milliseconds=50)):
        with pytest.raises(WaitTimeoutError) as caught:
            store.wait_for_signal(run, "a", timeout=timeout)
        assert isinstance(caught.value, TimeoutError)
        assert isinstance(caught.value, FlowSignalsError)
        assert (caught.value.run_id, caught.value.step_key) == (run, "a")
    waiter = store.get_waiter(run, "a")
    assert waiter is not None and waiter.delivered_at is None and waiter.payload_json is None


def test_unknown_waiter_is_not_found(store: SignalStore, run: uuid.UUID) -> None:
    with pytest.raises(WaiterNotFoundError) as caught:
        store.wait_for_signal(run, "never", timeout=PATIENCE)
    assert (caught.value.run_id, caught.value.step_key) == (run, "never")


def test_removed_while_waiting_is_not_found(store: SignalStore, run: uuid.UUID) -> None:
    store.register_waiter(run, "a", "sig")
    waiting = Background(lambda: store.wait_for_signal(run, "a", timeout=PATIENCE))
    time.sleep(0.05)
    assert store.remove_waiter(run, "a")
    with pytest.raises(WaiterNotFoundError):
        waiting.result()


def test_deadline_passing_while_waiting_is_expired(store: SignalStore, run: uuid.UUID) -> None:
    deadline = datetime.now(timezone.utc) + timedelta(seconds=0.3)
    store.register_waiter(run, "a", "sig", deadline)
    with pytest.raises(WaiterExpiredError) as caught:
        store.wait_for_signal(run, "a", timeout=PATIENCE)
    assert caught.value.waiter.step_key == "a"
    assert caught.value.waiter.expires_at == deadline
    assert caught.value.waiter.payload_json is None


def test_claimed_waiter_is_expired(store: SignalStore, run: uuid.UUID) -> None:
    store.register_waiter(run, "a", "sig", datetime.now(timezone.utc) - timedelta(hours=1))
    (claimed,) = store.claim_expired()
    with pytest.raises(WaiterExpiredError) as caught:
        store.wait_for_signal(run, "a", timeout=PATIENCE)
    assert caught.value.waiter == claimed


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param('"' + "x" * 20_000 + '"', id="20000-chars"),
        pytest.param("[" + ",".join(['"€"'] * 3000) + "]", id="3000-euro-signs"),
    ],
)
def test_payloads_beyond_the_notify_limit_wake_and_arrive_intact(
    store: SignalStore, run: uuid.UUID, payload: str
) -> None:
    store.register_waiter(run, "a", "sig")
    waiting = Background(lambda: store.wait_for_signal(run, "a", timeout=PATIENCE))
    time.sleep(0.02)
    assert store.deliver_signal(run, "sig", payload).delivered
    waiter: SignalWaiter = waiting.result()
    assert waiter.payload_json == payload


def test_many_threads_on_different_steps_each_get_their_own_payload(
    store: SignalStore, run: uuid.UUID
) -> None:
    steps = [f"step-{index}" for index in range(32)]
    for step in steps:
        store.register_waiter(run, step, f"sig-{step}")
    waits = [
        Background(partial(store.wait_for_signal, run, step, timeout=PATIENCE)) for step in steps
    ]
    time.sleep(0.05)
    for step in reversed(steps):
        assert store.deliver_signal(run, f"sig-{step}", f'"{step}"').delivered
    assert [w.result().payload_json for w in waits] == [f'"{step}"' for step in steps]


def test_conn_is_refused(store: SignalStore, run: uuid.UUID) -> None:
    store.register_waiter(run, "a", "sig")
    with pytest.raises(InvalidArgumentError) as caught:
        store.wait_for_signal(run, "a", timeout=1, conn=object())  # type: ignore[arg-type]
    assert caught.value.argument == "conn"


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"timeout": -1}, "timeout"),
        ({"timeout": float("nan")}, "timeout"),
        ({"timeout": float("inf")}, "timeout"),
        ({"timeout": "5"}, "timeout"),
        ({"timeout": None}, "timeout"),
        ({"timeout": 1, "run_id": "x"}, "run_id"),
        ({"timeout": 1, "step_key": ""}, "step_key"),
    ],
)
def test_bad_arguments(
    store: SignalStore, run: uuid.UUID, kwargs: dict[str, Any], argument: str
) -> None:
    call: dict[str, Any] = {"run_id": run, "step_key": "a", **kwargs}
    with pytest.raises(InvalidArgumentError) as caught:
        store.wait_for_signal(**call)
    assert caught.value.argument == argument


# PostgreSQL only -------------------------------------------------------------------------


def _listener_pids(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                text(
                    "SELECT pid FROM pg_stat_activity WHERE application_name ="
                    " 'flowsignals-listener' AND datname = current_database()"
                )
            ).scalars()
        )


def _eventually(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + PATIENCE
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.02)


def _start_listener(store: PostgresSignalStore) -> None:
    run = uuid.uuid4()
    store.register_waiter(run, "warm-up", "warm-up")
    store.deliver_signal(run, "warm-up", "{}")
    store.wait_for_signal(run, "warm-up", timeout=PATIENCE)
    listener = store.listener
    assert listener is not None
    _eventually(lambda: listener.backend_pid is not None, "the listener connected")


def test_notification_carries_identifiers_only_and_fires_on_commit(
    pg_store: PostgresSignalStore, engine: Engine, database_url: str, run: uuid.UUID
) -> None:
    pg_store.register_waiter(run, "step one", "sig")
    pg_store.register_waiter(run, "unwatched", "other")
    with psycopg.connect(database_url, autocommit=True) as listening:
        listening.execute('LISTEN "flowsignals"')
        # Nobody waits on this one, so its delivery sends nothing (NOTIFY serialises commits).
        assert pg_store.deliver_signal(run, "other", "{}").delivered
        assert list(listening.notifies(timeout=0.2)) == []
        # A wait that began (and timed out) marks its waiter watched: deliveries notify it.
        with pytest.raises(WaitTimeoutError):
            pg_store.wait_for_signal(run, "step one", timeout=0)
        with engine.connect() as conn:
            pg_store.deliver_signal(run, "sig", '{"secret": "payload"}', conn=conn)
            assert list(listening.notifies(timeout=0.2)) == []  # not before commit
            conn.commit()
        (notify,) = listening.notifies(timeout=PATIENCE, stop_after=1)
    assert (notify.channel, notify.payload) == ("flowsignals", f"{run} step one")


def test_a_rolled_back_delivery_neither_wakes_nor_delivers(
    engine: Engine, database_url: str, run: uuid.UUID
) -> None:
    with PostgresSignalStore(database_url, recheck_interval=0.05) as store:
        store.register_waiter(run, "a", "sig")
        waiting = Background(lambda: store.wait_for_signal(run, "a", timeout=1.0))
        with engine.connect() as conn:
            assert store.deliver_signal(run, "sig", '"no"', conn=conn).delivered
            time.sleep(0.2)
            conn.rollback()
        with pytest.raises(WaitTimeoutError):
            waiting.result()
        assert store.deliver_signal(run, "sig", '"yes"').delivered
        assert store.wait_for_signal(run, "a", timeout=PATIENCE).payload_json == '"yes"'


def test_a_schema_has_its_own_channel(empty_database_url: str, run: uuid.UUID) -> None:
    from flowsignals import migrations

    migrations.upgrade(empty_database_url, schema="tenant_a")
    with PostgresSignalStore(empty_database_url, schema="tenant_a") as store:
        store.register_waiter(run, "a", "sig")
        waiting = Background(lambda: store.wait_for_signal(run, "a", timeout=PATIENCE))
        time.sleep(0.05)
        with psycopg.connect(empty_database_url, autocommit=True) as listening:
            listening.execute('LISTEN "flowsignals:tenant_a"')
            assert store.deliver_signal(run, "sig", "1").delivered
            (notify,) = listening.notifies(timeout=PATIENCE, stop_after=1)
        assert notify.payload == f"{run} a"
        assert waiting.result().payload_json == "1"


def test_lost_notifications_are_made_up_by_the_recheck(database_url: str, run: uuid.UUID) -> None:
    with PostgresSignalStore(database_url, recheck_interval=0.2) as store:
        _start_listener(store)
        listener = store.listener
        assert listener is not None
        listener._dispatch = lambda payload: None  # type: ignore[method-assign]
        store.register_waiter(run, "a", "sig")
        waiting = Background(lambda: store.wait_for_signal(run, "a", timeout=PATIENCE))
        time.sleep(0.05)
        assert store.deliver_signal(run, "sig", '"late"').delivered
        assert waiting.result().payload_json == '"late"'


def test_killed_listener_reconnects_and_waits_still_wake(
    engine: Engine, database_url: str, run: uuid.UUID
) -> None:
    # The recheck is an hour: every wake-up here comes from a notification or a reconnection.
    with PostgresSignalStore(database_url, recheck_interval=3600) as store:
        _start_listener(store)
        listener = store.listener
        assert listener is not None
        (old_pid,) = _listener_pids(engine)
        assert listener.backend_pid == old_pid

        store.register_waiter(run, "during", "sig-during")
        waiting = Background(lambda: store.wait_for_signal(run, "during", timeout=PATIENCE))
        time.sleep(0.05)
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": old_pid})
        assert store.deliver_signal(run, "sig-during", '"during"').delivered
        assert waiting.result().payload_json == '"during"'

        _eventually(lambda: len(_listener_pids(engine)) == 1, "a new listener connection")
        assert _listener_pids(engine) != [old_pid]
        _eventually(lambda: listener.backend_pid is not None, "the listener is listening")
        store.register_waiter(run, "after", "sig-after")
        waiting = Background(lambda: store.wait_for_signal(run, "after", timeout=PATIENCE))
        time.sleep(0.05)
        assert store.deliver_signal(run, "sig-after", '"after"').delivered
        assert waiting.result().payload_json == '"after"'
        assert listener.connections == 2


def test_a_server_restart_during_a_wait(
    pg_server: EmbeddedPostgres | None, database_url: str, run: uuid.UUID
) -> None:
    if pg_server is None:
        pytest.skip("needs the embedded server, which the test can restart")
    with PostgresSignalStore(database_url, recheck_interval=3600) as store:
        _start_listener(store)
        listener = store.listener
        assert listener is not None
        store.register_waiter(run, "a", "sig")
        waiting = Background(lambda: store.wait_for_signal(run, "a", timeout=PATIENCE))
        time.sleep(0.05)

        pg_server.restart()

        _eventually(lambda: listener.connections >= 2, "the listener reconnected")
        assert store.deliver_signal(run, "sig", '"after restart"').delivered
        assert waiting.result().payload_json == '"after restart"'
        store.register_waiter(run, "b", "sig-b")
        waiting = Background(lambda: store.wait_for_signal(run, "b", timeout=PATIENCE))
        time.sleep(0.05)
        assert store.deliver_signal(run, "sig-b", '"b"').delivered
        assert waiting.result().payload_json == '"b"'


def test_close_stops_the_listener(engine: Engine, database_url: str) -> None:
    store = PostgresSignalStore(database_url)
    assert store.listener is None  # started lazily, by the first wait
    _start_listener(store)
    assert len(_listener_pids(engine)) == 1
    store.close()
    assert store.listener is None
    _eventually(lambda: _listener_pids(engine) == [], "the listener connection closed")
    assert not [t for t in threading.enumerate() if t.name.startswith("flowsignals-listener")]


def test_polling_store_opens_no_listener(engine: Engine, database_url: str) -> None:
    with PostgresSignalStore(database_url, listen=False, poll_interval=0.01) as store:
        run = uuid.uuid4()
        store.register_waiter(run, "a", "sig")
        waiting = Background(lambda: store.wait_for_signal(run, "a", timeout=PATIENCE))
        time.sleep(0.05)
        assert store.deliver_signal(run, "sig", "7").status is DeliveryStatus.DELIVERED
        assert waiting.result().payload_json == "7"
        assert store.listener is None
        assert _listener_pids(engine) == []


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"poll_interval": 0}, "poll_interval"),
        ({"recheck_interval": -1.0}, "recheck_interval"),
        ({"recheck_interval": "5"}, "recheck_interval"),
    ],
)
def test_bad_intervals_are_refused(kwargs: dict[str, Any], argument: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        PostgresSignalStore("postgresql://user@localhost/db", **kwargs)
    assert caught.value.argument == argument


def test_a_wait_never_blocks_on_a_row_another_transaction_holds(
    pg_store: PostgresSignalStore, engine: Engine, run: uuid.UUID
) -> None:
    # A caller's transaction holds the waiter's row lock (its delivery is not committed). The
    # wait's first read skips the locked row instead of queueing behind it, so its timeout
    # still holds; once the delivery commits, a wait sees it.
    pg_store.register_waiter(run, "a", "sig")
    with engine.connect() as conn:
        assert pg_store.deliver_signal(run, "sig", '"held"', conn=conn).delivered
        started = time.monotonic()
        with pytest.raises(WaitTimeoutError):
            pg_store.wait_for_signal(run, "a", timeout=0.3)
        assert time.monotonic() - started < PATIENCE
        waiting = Background(lambda: pg_store.wait_for_signal(run, "a", timeout=PATIENCE))
        time.sleep(0.1)
        conn.commit()
    assert waiting.result().payload_json == '"held"'


def _wakes_by_notification(store: PostgresSignalStore, run: uuid.UUID) -> None:
    """A wait on a store whose re-check is an hour away returns: only a notification did it."""
    store.register_waiter(run, "a", "sig")
    waiting = Background(lambda: store.wait_for_signal(run, "a", timeout=PATIENCE))
    listener_up = lambda: store.listener is not None and store.listener.backend_pid is not None  # noqa: E731
    _eventually(listener_up, "the listener connected")
    time.sleep(0.1)
    assert store.deliver_signal(run, "sig", '"woken"').delivered
    assert waiting.result().payload_json == '"woken"'
    assert store.listener is not None and store.listener.connections == 1


def test_the_listener_connects_with_the_stores_connect_args(
    database_url: str, run: uuid.UUID
) -> None:
    # The URL names a dead port; connect_args name the live one. The listener used to connect
    # from the URL alone, failing forever while every wait fell back to the re-check.
    url = make_url(database_url)
    dead = url.set(port=1).render_as_string(hide_password=False)
    options = {"connect_args": {"port": url.port}}
    with PostgresSignalStore(dead, engine_options=options, recheck_interval=3600) as store:
        _wakes_by_notification(store, run)


def test_the_listener_of_a_store_on_a_callers_engine_uses_that_engine(
    database_url: str, run: uuid.UUID
) -> None:
    url = make_url(database_url)
    dead = url.set(port=1)
    engine = create_engine(
        to_sqlalchemy_url(dead.render_as_string(hide_password=False)),
        connect_args={"port": url.port},
    )
    with PostgresSignalStore(engine, recheck_interval=3600) as store:
        _wakes_by_notification(store, run)
    engine.dispose()


def test_waits_wake_when_descriptors_run_past_1023(database_url: str, run: uuid.UUID) -> None:
    # select() cannot take a descriptor above 1023; the listener's thread died on it silently.
    pipes = [os.pipe() for _ in range(600)]
    try:
        with PostgresSignalStore(database_url, recheck_interval=3600) as store:
            _wakes_by_notification(store, run)
            assert store.listener is not None and store.listener.backend_pid is not None
    finally:
        for read_end, write_end in pipes:
            os.close(read_end)
            os.close(write_end)


@pytest.mark.parametrize(
    "options",
    [{"recheck_interval": 9e9}, {"listen": False, "poll_interval": 9e9}],
    ids=["listen", "polling"],
)
def test_the_longest_intervals_and_timeouts_still_wake(
    database_url: str, run: uuid.UUID, options: dict[str, Any]
) -> None:
    # Sleeps are bounded by threading.TIMEOUT_MAX (about 9.2e9 s); past it Event.wait and
    # time.sleep raise OverflowError. A polling wait this long only ends through its first read.
    with PostgresSignalStore(database_url, **options) as store:
        store.register_waiter(run, "a", "sig")
        if options.get("listen", True):
            waiting = Background(lambda: store.wait_for_signal(run, "a", timeout=1e12))
            time.sleep(0.2)
            assert store.deliver_signal(run, "sig", '"late"').delivered
        else:
            assert store.deliver_signal(run, "sig", '"late"').delivered
            waiting = Background(lambda: store.wait_for_signal(run, "a", timeout=timedelta.max))
        assert waiting.result().payload_json == '"late"'


def test_a_busy_pool_never_stretches_a_waits_timeout(
    database_url: str, engine: Engine, run: uuid.UUID
) -> None:
    # Found by a breaker session: the store's only connection is held by a delivery queued
    # behind a caller's lock, and a wait with a 0.3 s timeout sat out the pool's whole
    # pool_timeout instead. Here that would be two minutes: far past the patience of Call.
    with PostgresSignalStore(database_url, max_connections=1, pool_timeout=120) as store:
        store.register_waiter(run, "held", "h")
        store.register_waiter(run, "w", "s")
        with admin_connection(database_url) as admin, engine.connect() as conn:
            store.deliver_signal(run, "h", "1", conn=conn)
            queued = Call(lambda: store.deliver_signal(run, "h", "2"))
            wait_until(lambda: lock_waiters(admin, "flowsignals"), "the delivery to queue")
            waiting = Call(lambda: store.wait_for_signal(run, "w", timeout=0.3))
            with pytest.raises(WaitTimeoutError):
                waiting.result()
            conn.commit()
        assert queued.result().status is DeliveryStatus.ALREADY_DELIVERED
