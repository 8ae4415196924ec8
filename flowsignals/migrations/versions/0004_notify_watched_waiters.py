"""Remember which waiters a LISTEN wait is watching, so only those are notified.

Revision ID: fs_0004
Revises: fs_0003
Create Date: 2026-12-03

A transaction that sends NOTIFY commits under a cluster-wide lock held until its commit is
flushed, so notifying every delivery made deliveries commit one at a time. Deliveries, removals
and claims now notify only waiters on which a wait has begun (``watched_at``). Adding a
nullable column without a default changes only the catalog.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "fs_0004"
down_revision: str | Sequence[str] | None = "fs_0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "flow_signal_waiters"


def _schema() -> str | None:
    # As in fs_0001: from the migration context, so a host application's env.py can pass
    # context.configure(flowsignals_schema=...), or nothing for the search_path.
    schema = op.get_context().opts.get("flowsignals_schema")
    return schema if isinstance(schema, str) else None


def upgrade() -> None:
    op.add_column(
        TABLE, sa.Column("watched_at", sa.DateTime(timezone=True), nullable=True), schema=_schema()
    )


def downgrade() -> None:
    op.drop_column(TABLE, "watched_at", schema=_schema())
