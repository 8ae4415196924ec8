"""Step keys and signal names compare byte for byte: COLLATE "C".

Revision ID: fs_0003
Revises: fs_0002
Create Date: 2026-12-03

Names are identifiers, compared exactly, and the documented orders (delivery to the oldest
waiter with the step key breaking ties; listing by created_at, run_id, step_key) are by code
point, as InMemorySignalStore sorts. Under a database's linguistic default collation (say
en_US.UTF-8 or an ICU locale) PostgreSQL would order "B", "a", "b" as "a", "b", "B" instead.
Changing a column's collation rebuilds the indexes on it (the primary key among them) under an
exclusive lock; on a large table, run this in a quiet moment.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "fs_0003"
down_revision: str | Sequence[str] | None = "fs_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "flow_signal_waiters"
NAMES = ("step_key", "signal_name")


def _schema() -> str | None:
    # As in fs_0001: from the migration context, so a host application's env.py can pass
    # context.configure(flowsignals_schema=...), or nothing for the search_path.
    schema = op.get_context().opts.get("flowsignals_schema")
    return schema if isinstance(schema, str) else None


def upgrade() -> None:
    for column in NAMES:
        op.alter_column(
            TABLE,
            column,
            type_=sa.String(256, collation="C"),
            existing_type=sa.String(256),
            existing_nullable=False,
            schema=_schema(),
        )


def downgrade() -> None:
    for column in NAMES:
        op.alter_column(
            TABLE,
            column,
            type_=sa.String(256),
            existing_type=sa.String(256, collation="C"),
            existing_nullable=False,
            schema=_schema(),
        )
