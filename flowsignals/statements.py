"""The SQL of every operation, built with SQLAlchemy Core against :mod:`flowsignals.tables`.

Each operation is exactly one statement. They are compiled once per schema into plain SQL text
with named parameters (:func:`for_schema`), so the hot path pays neither statement construction
nor SQLAlchemy's compiled-cache lookup, and psycopg can prepare each one server-side. Parameters
are always bound, never formatted in; identifiers are quoted by SQLAlchemy's compiler. Bind names
differ from column names on purpose: SQLAlchemy would otherwise read a parameter named like a
column as a value to SET.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    ClauseElement,
    ColumnElement,
    Integer,
    Interval,
    Select,
    Table,
    Text,
    and_,
    bindparam,
    case,
    cast,
    delete,
    exists,
    false,
    func,
    literal_column,
    null,
    or_,
    select,
    true,
    tuple_,
    union_all,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import insert
from typing_extensions import Unpack

from flowsignals.results import SignalWaiter, WaiterState
from flowsignals.tables import TABLE_NAME, build_metadata

#: LISTEN/NOTIFY channel of the waiter table on the search_path (see :func:`notify_channel`).
CHANNEL = "flowsignals"

#: Outcome codes in the first column of :attr:`Statements.deliver`'s single row.
OUTCOME_DELIVERED = 0
OUTCOME_ALREADY_DELIVERED = 1
OUTCOME_EXPIRED = 2

_DIALECT = postgresql.psycopg.dialect()  # type: ignore[no-untyped-call]
_ONE: ColumnElement[Any] = literal_column("1")


@dataclass(frozen=True, slots=True)
class Statements:
    """The compiled SQL text of each operation, for one schema."""

    register: str
    deliver: str
    get: str
    remove: str
    claim_expired: str
    purge_batch: str
    count: str
    count_run: str
    count_run_signal: str
    count_signal: str
    poll: str
    watch: str
    confirm: str


@lru_cache(maxsize=32)
def for_schema(schema: str | None) -> Statements:
    """Return the statements for the waiter table in ``schema`` (None: the search_path)."""
    table = _table(schema)
    c = table.c
    return Statements(
        register=_compile(_register(table)),
        deliver=_compile(_deliver(table)),
        get=_compile(select_waiter(table)),
        remove=_compile(_remove(table)),
        claim_expired=_compile(_claim_expired(table)),
        purge_batch=_compile(_purge_batch(table)),
        count=_compile(_count(table)),
        count_run=_compile(_count(table, c.run_id == _run(table))),
        count_run_signal=_compile(
            _count(table, c.run_id == _run(table), c.signal_name == _signal(table))
        ),
        count_signal=_compile(_count(table, c.signal_name == _signal(table))),
        poll=_compile(
            select(*waiter_columns(table), func.statement_timestamp(), false()).where(
                c.run_id == _run(table), c.step_key == _step(table)
            )
        ),
        watch=_compile(_watch(table)),
        confirm=_compile(_confirm(table)),
    )


@lru_cache(maxsize=256)
def list_waiters(
    schema: str | None,
    *,
    by_run: bool,
    by_signal: bool,
    state: WaiterState | None,
    after: bool,
) -> str:
    """The list_waiters query for one combination of filters (binds: run, signal, limit...).

    Each combination is its own statement rather than one with ``(:x IS NULL OR ...)``
    conditions, so every one gets a plan that uses the matching index. The row comparison on
    (created_at, run_id, step_key) is a keyset seek on the index in that order.
    """
    table = _table(schema)
    c = table.c
    query = select(*waiter_columns(table))
    if by_run:
        query = query.where(c.run_id == _run(table))
    if by_signal:
        query = query.where(c.signal_name == _signal(table))
    if state is not None:
        query = query.where(state_condition(table, state))
    if after:
        query = query.where(
            tuple_(c.created_at, c.run_id, c.step_key)
            > tuple_(
                bindparam("after_created", type_=c.created_at.type),
                bindparam("after_run", type_=c.run_id.type),
                bindparam("after_step", type_=c.step_key.type),
            )
        )
    query = query.order_by(c.created_at, c.run_id, c.step_key).limit(
        bindparam("limit", type_=Integer)
    )
    return _compile(query)


def notify_channel(schema: str | None) -> str:
    """The LISTEN/NOTIFY channel of the waiter table in ``schema``.

    ``flowsignals``, or ``flowsignals:<schema>`` so stores of different schemas in one database
    do not wake each other; a schema too long for a channel name (63 bytes) is hashed instead.
    """
    if schema is None:
        return CHANNEL
    channel = f"{CHANNEL}:{schema}"
    if len(channel.encode("utf-8")) <= 63:
        return channel
    return f"{CHANNEL}:{hashlib.sha256(schema.encode('utf-8')).hexdigest()[:32]}"


def state_condition(table: Table, state: WaiterState) -> ColumnElement[bool]:
    """The SQL condition for a waiter being in ``state``, by the server's clock."""
    c = table.c
    unfinished = and_(c.delivered_at.is_(None), c.claimed_at.is_(None))
    if state is WaiterState.DELIVERED:
        return c.delivered_at.is_not(None)
    if state is WaiterState.CLAIMED:
        return and_(c.delivered_at.is_(None), c.claimed_at.is_not(None))
    if state is WaiterState.EXPIRED:
        return and_(unfinished, c.expires_at <= func.statement_timestamp())
    return and_(unfinished, or_(c.expires_at.is_(None), c.expires_at > func.statement_timestamp()))


def _table(schema: str | None) -> Table:
    return build_metadata(schema).tables[
        f"{schema}.{TABLE_NAME}" if schema is not None else TABLE_NAME
    ]


def _run(table: Table) -> ColumnElement[Any]:
    return bindparam("run", type_=table.c.run_id.type)


def _step(table: Table) -> ColumnElement[Any]:
    return bindparam("step", type_=table.c.step_key.type)


def _signal(table: Table) -> ColumnElement[Any]:
    return bindparam("signal", type_=table.c.signal_name.type)


def _notify(table: Table) -> ColumnElement[Any]:
    """Notify the waiter's channel, if a LISTEN wait has begun on it (see :func:`_watch`).

    A transaction that notifies takes a cluster-wide lock from its commit until the commit is
    flushed, so notifying transactions commit one at a time: notifying every delivery capped
    throughput under concurrency at a third of the raw driver's. Only identifiers are sent,
    never the payload: a NOTIFY payload is limited to 8000 bytes, and the table is the truth
    anyway. A uuid's text is always 36 characters, so the split is exact.
    """
    c = table.c
    identifiers = cast(c.run_id, Text).concat(literal_column("' '", Text)).concat(c.step_key)
    notify = func.pg_notify(bindparam("channel", type_=Text), identifiers)
    return case((c.watched_at.is_not(None), notify), else_=null()).label("notified")


def _watch(table: Table) -> ClauseElement:
    """A LISTEN wait's read that marks the waiter watched: its row, the server's now, marked.

    The mark is written under the row lock, for the race with a delivery: once it is
    committed, a delivery's locking read sees it and notifies; a delivery that committed first
    shows in the row returned. A row locked by someone else (a delivery in flight, a caller's
    open transaction) is skipped, never waited for, so a wait's timeout holds: the row is then
    returned as this statement's snapshot saw it, with ``marked`` false, and the wait tries
    again shortly.
    """
    c = table.c
    is_key = and_(c.run_id == _run(table), c.step_key == _step(table))
    locked = (
        select(c.run_id, c.step_key)
        .where(is_key)
        .with_for_update(key_share=True, skip_locked=True)
        .cte("locked")
    )
    marked = (
        table.update()
        .where(c.run_id == locked.c.run_id, c.step_key == locked.c.step_key)
        .values(watched_at=func.statement_timestamp())
        .returning(*waiter_columns(table))
        .cte("marked")
    )
    return union_all(
        select(*marked.c, func.statement_timestamp(), true()),
        select(*waiter_columns(table), func.statement_timestamp(), false()).where(
            is_key, ~exists(select(locked.c.run_id))
        ),
    )


def _confirm(table: Table) -> ClauseElement:
    """A wait's read under a share lock, before it may call an undelivered waiter expired.

    A plain read cannot tell a waiter nobody touches from one whose delivery holds the row and
    has not committed (a caller's open transaction, a delivery in flight): that delivery was
    decided, with the row locked, before the deadline. FOR SHARE conflicts with every lock
    the store's writers take. A locked row is skipped, never waited for, and returned as this
    statement's snapshot saw it with ``locked`` false: undecided, read again shortly. A row
    read under the lock is its newest committed version; a delivery that locks it afterwards
    judges the deadline by a later clock, so it too finds the waiter expired.
    """
    c = table.c
    is_key = and_(c.run_id == _run(table), c.step_key == _step(table))
    locked = (
        select(*waiter_columns(table)).where(is_key).with_for_update(read=True, skip_locked=True)
    ).cte("locked")
    return union_all(
        select(*locked.c, func.statement_timestamp(), true()),
        select(*waiter_columns(table), func.statement_timestamp(), false()).where(
            is_key, ~exists(select(locked.c.run_id))
        ),
    )


def waiter_columns(table: Table) -> tuple[ColumnElement[object], ...]:
    """The columns of a waiter, in the order :func:`waiter_from_row` reads."""
    c = table.c
    return (
        c.run_id,
        c.step_key,
        c.signal_name,
        c.created_at,
        c.expires_at,
        c.delivered_at,
        c.payload_json,
        c.claimed_at,
        c.idempotency_key,
    )


def waiter_from_row(row: Sequence[Any]) -> SignalWaiter:
    """Build a SignalWaiter from a row of :func:`waiter_columns`, its datetimes in UTC."""
    run_id, step_key, signal_name, created_at, expires_at, delivered_at, payload, claimed, key = row
    return SignalWaiter(
        run_id=run_id,
        step_key=step_key,
        signal_name=signal_name,
        created_at=created_at.astimezone(timezone.utc),
        expires_at=as_utc(expires_at),
        delivered_at=as_utc(delivered_at),
        payload_json=payload,
        claimed_at=as_utc(claimed),
        idempotency_key=key,
    )


def as_utc(value: datetime | None) -> datetime | None:
    # psycopg returns the session's time zone; results are always in UTC whatever it is.
    return None if value is None else value.astimezone(timezone.utc)


def select_waiter(table: Table) -> Select[Unpack[tuple[Any, ...]]]:
    """The primary-key lookup of one waiter."""
    c = table.c
    return select(*waiter_columns(table)).where(
        c.run_id == bindparam("run", type_=c.run_id.type),
        c.step_key == bindparam("step", type_=c.step_key.type),
    )


def _compile(statement: ClauseElement) -> str:
    return str(statement.compile(dialect=_DIALECT))


def _register(table: Table) -> ClauseElement:
    # Upsert on the primary key: a repeat changes only the signal name and the deadline, so
    # created_at and any recorded delivery survive; ON CONFLICT makes concurrent repeats safe.
    c = table.c
    stmt = insert(table).values(
        run_id=bindparam("run", type_=c.run_id.type),
        step_key=bindparam("step", type_=c.step_key.type),
        signal_name=bindparam("signal", type_=c.signal_name.type),
        expires_at=bindparam("deadline", type_=c.expires_at.type),
    )
    return stmt.on_conflict_do_update(
        index_elements=[c.run_id, c.step_key],
        set_={"signal_name": stmt.excluded.signal_name, "expires_at": stmt.excluded.expires_at},
    )


def _remove(table: Table) -> ClauseElement:
    # Notifies (on commit) so that a wait on the removed waiter ends at once.
    c = table.c
    return (
        delete(table)
        .where(
            c.run_id == bindparam("run", type_=c.run_id.type),
            c.step_key == bindparam("step", type_=c.step_key.type),
        )
        .returning(_notify(table))
    )


def _claim_expired(table: Table) -> ClauseElement:
    """claim_expired: a queue, so locked rows are skipped, never waited on.

    ``due`` locks up to ``limit`` unfinished waiters past their deadline (server clock) with
    FOR UPDATE SKIP LOCKED: a row another claimer or a delivery holds is someone else's. After
    taking a lock, READ COMMITTED re-evaluates the WHERE clause on the row's newest committed
    version, so a delivery or claim committed since this statement's snapshot excludes it; the
    UPDATE repeats the condition so that stays true even if the plan changes. Each claimed
    waiter notifies its own waits, which then end with WaiterExpiredError.
    """
    c = table.c
    due = (
        select(c.run_id, c.step_key)
        .where(
            c.expires_at.is_not(None),
            c.expires_at <= func.statement_timestamp(),
            c.delivered_at.is_(None),
            c.claimed_at.is_(None),
        )
        .order_by(c.expires_at, c.run_id, c.step_key)
        .limit(bindparam("limit", type_=Integer))
        .with_for_update(skip_locked=True)
        .cte("due")
    )
    return (
        table.update()
        .where(
            c.run_id == due.c.run_id,
            c.step_key == due.c.step_key,
            c.delivered_at.is_(None),
            c.claimed_at.is_(None),
        )
        .values(claimed_at=func.statement_timestamp())
        .returning(*waiter_columns(table), _notify(table))
    )


def _purge_batch(table: Table) -> ClauseElement:
    """One purge batch: delete up to ``batch`` waiters finished more than ``age`` ago.

    SKIP LOCKED: a purge never waits for a row and so never holds its locks for long nor
    deadlocks with a delivery that locks a run's waiters in creation order; a row skipped now
    is purged next time. Only delivered or claimed rows qualify, and neither state is ever
    undone, so a pending waiter is never deleted.
    """
    c = table.c
    cutoff = func.statement_timestamp() - bindparam("age", type_=Interval())
    doomed = (
        select(c.run_id, c.step_key)
        .where(or_(c.delivered_at < cutoff, c.claimed_at < cutoff))
        .limit(bindparam("batch", type_=Integer))
        .with_for_update(skip_locked=True)
        .cte("doomed")
    )
    return delete(table).where(c.run_id == doomed.c.run_id, c.step_key == doomed.c.step_key)


def _count(table: Table, *where: ColumnElement[bool]) -> ClauseElement:
    counts = [
        func.count().filter(state_condition(table, state)).label(state.value)
        for state in WaiterState
    ]
    return select(*counts).select_from(table).where(*where)


def _deliver(table: Table) -> ClauseElement:
    """deliver_signal, in one statement that decides and reports every outcome.

    1. ``matching`` locks every waiter of (run, signal) in creation order and waits for the
       locks; it never skips. A locking read in READ COMMITTED returns each row's newest
       committed version (re-checked after the wait), so a delivery committed by a racing
       caller is seen here even though it is newer than this statement's snapshot: a loser is
       never misinformed. Locking in one order keeps racing deliveries from deadlocking. A
       LIMIT 1 here would be wrong: when the one locked row turns out to be taken, the scan
       would return nothing instead of moving on to the next pending waiter.
    2. ``delivered`` updates the oldest of them that is neither delivered, claimed nor expired,
       and notifies the waiter's channel (sent on commit, never on rollback). The deadline is
       judged by ``clock_timestamp()`` as each row comes out of its lock, not by the
       statement's start: a delivery that queued behind a lock past a deadline must not deliver
       to a waiter that a wait (:func:`_confirm`) or a claim has meanwhile found expired. A
       claim holds the row lock too, so a delivery racing a claim sees either the claim
       (EXPIRED) or takes the row first (and the claim then skips it).
    3. The outer query reports, in priority order: what was delivered; else the latest earlier
       delivery; else the oldest expired waiter. No row at all means NOT_FOUND.

    With an idempotency key that a delivery of this (run, signal) already holds, nothing is
    updated and that delivery is reported as DELIVERED again: a retry of a delivery whose
    outcome was lost. The key is looked for among the locked waiters (their newest versions,
    so a racing copy that committed first is seen) and, for a delivered waiter re-registered
    to another signal since, in this statement's snapshot of the run; both by the signal it
    was delivered with. A NULL key equals nothing, so without one this never applies.
    """
    c = table.c
    run = bindparam("run", type_=c.run_id.type)
    signal = bindparam("signal", type_=c.signal_name.type)
    key = bindparam("key", type_=c.idempotency_key.type)
    matching = (
        select(
            c.step_key,
            c.created_at,
            c.expires_at,
            c.delivered_at,
            c.claimed_at,
            c.idempotency_key,
            c.delivered_signal_name,
        )
        .where(c.run_id == run, c.signal_name == signal)
        .order_by(c.created_at, c.step_key)
        .with_for_update(key_share=True)
        .cte("matching")
    )
    m = matching.c
    pending = and_(
        m.delivered_at.is_(None),
        m.claimed_at.is_(None),
        or_(m.expires_at.is_(None), m.expires_at > func.clock_timestamp()),
    )
    keyed = union_all(
        select(m.step_key, m.delivered_at, m.created_at).where(
            m.idempotency_key == key, m.delivered_signal_name == signal
        ),
        select(c.step_key, c.delivered_at, c.created_at).where(
            key.is_not(None),
            c.run_id == run,
            c.idempotency_key == key,
            c.delivered_signal_name == signal,
        ),
    ).subquery("keyed")
    repeated = (
        select(keyed.c.step_key, keyed.c.delivered_at)
        .order_by(keyed.c.created_at, keyed.c.step_key)
        .limit(_ONE)
    )
    target = (
        select(m.step_key)
        .where(pending, ~exists(repeated))
        .order_by(m.created_at, m.step_key)
        .limit(_ONE)
    ).scalar_subquery()
    delivered = (
        table.update()
        .where(c.run_id == run, c.step_key == target)
        .values(
            delivered_at=func.statement_timestamp(),
            payload_json=bindparam("payload", type_=c.payload_json.type),
            idempotency_key=key,
            delivered_signal_name=signal,
        )
        .returning(c.step_key, c.delivered_at, _notify(table))
        .cte("delivered")
    )

    def branch(outcome: int, query: Select[Any]) -> Select[Any]:
        sub = query.subquery()
        return select(
            literal_column(str(outcome), Integer).label("outcome"),
            sub.c.step_key,
            sub.c.delivered_at,
        )

    outcomes = union_all(
        branch(OUTCOME_DELIVERED, select(delivered.c.step_key, delivered.c.delivered_at)),
        branch(OUTCOME_DELIVERED, repeated),
        branch(
            OUTCOME_ALREADY_DELIVERED,
            select(m.step_key, m.delivered_at)
            .where(m.delivered_at.is_not(None))
            .order_by(m.delivered_at.desc(), m.step_key)
            .limit(_ONE),
        ),
        branch(
            OUTCOME_EXPIRED,
            select(m.step_key, cast(null(), c.delivered_at.type).label("delivered_at"))
            .where(m.delivered_at.is_(None))
            .order_by(m.created_at, m.step_key)
            .limit(_ONE),
        ),
    ).subquery("outcomes")
    return (
        select(outcomes.c.outcome, outcomes.c.step_key, outcomes.c.delivered_at)
        .order_by(outcomes.c.outcome)
        .limit(_ONE)
    )
