"""The SQL of every operation, built with SQLAlchemy Core against :mod:`flowsignals.tables`.

Each operation is exactly one statement. They are compiled once per schema into plain SQL text
with named parameters (:func:`for_schema`), so the hot path pays neither statement construction
nor SQLAlchemy's compiled-cache lookup, and psycopg can prepare each one server-side. Parameters
are always bound, never formatted in; identifiers are quoted by SQLAlchemy's compiler. Bind names
differ from column names on purpose: SQLAlchemy would otherwise read a parameter named like a
column as a value to SET.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    ClauseElement,
    ColumnElement,
    Integer,
    Select,
    Table,
    and_,
    bindparam,
    cast,
    delete,
    func,
    literal_column,
    null,
    or_,
    select,
    union_all,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import insert
from typing_extensions import Unpack

from flowsignals.tables import TABLE_NAME, build_metadata

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


@lru_cache(maxsize=32)
def for_schema(schema: str | None) -> Statements:
    """Return the statements for the waiter table in ``schema`` (None: the search_path)."""
    table = build_metadata(schema).tables[
        f"{schema}.{TABLE_NAME}" if schema is not None else TABLE_NAME
    ]
    return Statements(
        register=_compile(_register(table)),
        deliver=_compile(_deliver(table)),
        get=_compile(select_waiter(table)),
        remove=_compile(_remove(table)),
    )


def waiter_columns(table: Table) -> tuple[ColumnElement[object], ...]:
    """The columns of a waiter, in the order :func:`flowsignals.store.waiter_from_row` reads."""
    c = table.c
    return (
        c.run_id,
        c.step_key,
        c.signal_name,
        c.created_at,
        c.expires_at,
        c.delivered_at,
        c.payload_json,
    )


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
    c = table.c
    return delete(table).where(
        c.run_id == bindparam("run", type_=c.run_id.type),
        c.step_key == bindparam("step", type_=c.step_key.type),
    )


def _deliver(table: Table) -> ClauseElement:
    """deliver_signal, in one statement that decides and reports every outcome.

    1. ``matching`` locks every waiter of (run, signal) in creation order and waits for the
       locks; it never skips. A locking read in READ COMMITTED returns each row's newest
       committed version (re-checked after the wait), so a delivery committed by a racing
       caller is seen here even though it is newer than this statement's snapshot: a loser is
       never misinformed. Locking in one order keeps racing deliveries from deadlocking. A
       LIMIT 1 here would be wrong: when the one locked row turns out to be taken, the scan
       would return nothing instead of moving on to the next pending waiter.
    2. ``delivered`` updates the oldest of them that is neither delivered nor expired, by the
       server's clock.
    3. The outer query reports, in priority order: what was delivered; else the latest earlier
       delivery; else the oldest expired waiter. No row at all means NOT_FOUND.
    """
    c = table.c
    run = bindparam("run", type_=c.run_id.type)
    matching = (
        select(c.step_key, c.created_at, c.expires_at, c.delivered_at)
        .where(c.run_id == run, c.signal_name == bindparam("signal", type_=c.signal_name.type))
        .order_by(c.created_at, c.step_key)
        .with_for_update(key_share=True)
        .cte("matching")
    )
    m = matching.c
    pending = and_(m.delivered_at.is_(None), or_(m.expires_at.is_(None), m.expires_at > func.now()))
    target = (
        select(m.step_key).where(pending).order_by(m.created_at, m.step_key).limit(_ONE)
    ).scalar_subquery()
    delivered = (
        table.update()
        .where(c.run_id == run, c.step_key == target)
        .values(
            delivered_at=func.now(),
            payload_json=bindparam("payload", type_=c.payload_json.type),
        )
        .returning(c.step_key, c.delivered_at)
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
