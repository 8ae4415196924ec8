"""Add claimed_at, and the indexes that claim_expired, purge and list_waiters need.

Revision ID: fs_0002
Revises: fs_0001
Create Date: 2024-07-01

Frozen copy of ``flowsignals.tables`` at this revision: later changes to ``tables.py`` get new
revisions, never edits here.

Adding a nullable column without a default changes only the catalog, so existing waiters are
kept as they are (every one of them unclaimed). The indexes are built in the migration's
transaction; on a very large table, build them beforehand with CREATE INDEX CONCURRENTLY under
the same names and this revision skips them.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "fs_0002"
down_revision: str | Sequence[str] | None = "fs_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "flow_signal_waiters"
LIST_INDEX = "ix_flow_signal_waiters_created_at_run_id_step_key"
DUE_INDEX = "ix_flow_signal_waiters_expires_at"
DELIVERED_INDEX = "ix_flow_signal_waiters_delivered_at"
CLAIMED_INDEX = "ix_flow_signal_waiters_claimed_at"


def _schema() -> str | None:
    # As in fs_0001: from the migration context, so a host application's env.py can pass
    # context.configure(flowsignals_schema=...), or nothing for the search_path.
    schema = op.get_context().opts.get("flowsignals_schema")
    return schema if isinstance(schema, str) else None


def upgrade() -> None:
    schema = _schema()
    op.add_column(
        TABLE, sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True), schema=schema
    )
    op.create_index(
        LIST_INDEX,
        TABLE,
        ["created_at", "run_id", "step_key"],
        schema=schema,
        if_not_exists=True,
    )
    op.create_index(
        DUE_INDEX,
        TABLE,
        ["expires_at"],
        schema=schema,
        postgresql_where=sa.text(
            "expires_at IS NOT NULL AND delivered_at IS NULL AND claimed_at IS NULL"
        ),
        if_not_exists=True,
    )
    op.create_index(
        DELIVERED_INDEX,
        TABLE,
        ["delivered_at"],
        schema=schema,
        postgresql_where=sa.text("delivered_at IS NOT NULL"),
        if_not_exists=True,
    )
    op.create_index(
        CLAIMED_INDEX,
        TABLE,
        ["claimed_at"],
        schema=schema,
        postgresql_where=sa.text("claimed_at IS NOT NULL"),
        if_not_exists=True,
    )


def downgrade() -> None:
    schema = _schema()
    for index in (CLAIMED_INDEX, DELIVERED_INDEX, DUE_INDEX, LIST_INDEX):
        op.drop_index(index, table_name=TABLE, schema=schema)
    op.drop_column(TABLE, "claimed_at", schema=schema)
