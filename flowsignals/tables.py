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
    Table(
        TABLE_NAME,
        metadata,
        Column("run_id", Uuid(as_uuid=True), nullable=False),
        Column("step_key", String(NAME_MAX_LENGTH), nullable=False),
        Column("signal_name", String(NAME_MAX_LENGTH), nullable=False),
        Column(
            "created_at",
            DateTime(timezone=True),
            nullable=False,
            server_default=func.now(),
        ),
        Column("expires_at", DateTime(timezone=True), nullable=True),
        Column("delivered_at", DateTime(timezone=True), nullable=True),
        Column("payload_json", Text, nullable=True),
        PrimaryKeyConstraint("run_id", "step_key"),
        # Serves deliver_signal: all waiters of one (run, signal), read in creation order.
        Index(None, "run_id", "signal_name", "created_at"),
    )
    return metadata


metadata = build_metadata()
waiters = metadata.tables[TABLE_NAME]
