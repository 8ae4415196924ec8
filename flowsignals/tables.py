"""Table definitions: the single source of truth for the schema.

The Alembic revisions in :mod:`flowsignals.migrations` build exactly this; a migration test
diffs the migrated database against this metadata.
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    DateTime,
    Index,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    Uuid,
    and_,
    func,
)

#: Stable constraint names, so migrations and ``alembic check`` never see renames.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: Longest step key or signal name, in characters (``varchar(256)``).
NAME_MAX_LENGTH = 256

TABLE_NAME = "flow_signal_waiters"

#: Alembic version table of flowsignals' own lineage; never the host's ``alembic_version``.
VERSION_TABLE = "flowsignals_alembic_version"


def build_metadata(schema: str | None = None) -> MetaData:
    """Return a fresh MetaData holding the waiter table, optionally in ``schema``."""
    metadata = MetaData(naming_convention=NAMING_CONVENTION, schema=schema)
    table = Table(
        TABLE_NAME,
        metadata,
        Column("run_id", Uuid(as_uuid=True), nullable=False),
        # Names compare and sort byte for byte (code point order), whatever the database's
        # default collation: the documented orders must not depend on it.
        Column("step_key", String(NAME_MAX_LENGTH, collation="C"), nullable=False),
        Column("signal_name", String(NAME_MAX_LENGTH, collation="C"), nullable=False),
        Column(
            "created_at",
            DateTime(timezone=True),
            nullable=False,
            server_default=func.now(),
        ),
        Column("expires_at", DateTime(timezone=True), nullable=True),
        Column("delivered_at", DateTime(timezone=True), nullable=True),
        Column("payload_json", Text, nullable=True),
        Column("claimed_at", DateTime(timezone=True), nullable=True),
        # When a LISTEN wait last began on this waiter. Only watched waiters are notified:
        # NOTIFY serialises the commits of every notifying transaction in the cluster.
        Column("watched_at", DateTime(timezone=True), nullable=True),
        # The caller's key for the delivery that filled this waiter: a retry with the same key
        # finds it here and delivers nothing more.
        Column("idempotency_key", String(NAME_MAX_LENGTH, collation="C"), nullable=True),
        # The signal that delivery was for. Re-registering may change signal_name afterwards;
        # a key belongs to the (run, signal) it was delivered with.
        Column("delivered_signal_name", String(NAME_MAX_LENGTH, collation="C"), nullable=True),
        PrimaryKeyConstraint("run_id", "step_key"),
        # Serves deliver_signal: all waiters of one (run, signal), read in creation order.
        Index(None, "run_id", "signal_name", "created_at"),
        # Serves list_waiters: keyset pages in (created_at, run_id, step_key) order.
        Index(None, "created_at", "run_id", "step_key"),
    )
    c = table.c
    # The partial indexes below hold only the rows their operation looks for, so claim_expired
    # and purge never scan the table, and a delivery leaves the "due" index instead of growing it.
    # claim_expired: unfinished waiters that have a deadline, in deadline order.
    Index(
        None,
        c.expires_at,
        postgresql_where=and_(
            c.expires_at.is_not(None), c.delivered_at.is_(None), c.claimed_at.is_(None)
        ),
    )
    # purge: finished waiters by finish time (a waiter is delivered or claimed, never both).
    Index(None, c.delivered_at, postgresql_where=c.delivered_at.is_not(None))
    Index(None, c.claimed_at, postgresql_where=c.claimed_at.is_not(None))
    return metadata


metadata = build_metadata()
waiters = metadata.tables[TABLE_NAME]
