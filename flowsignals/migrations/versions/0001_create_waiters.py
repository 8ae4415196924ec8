"""Create the flow_signal_waiters table.

Revision ID: fs_0001
Revises:
Create Date: 2024-06-01

Frozen copy of ``flowsignals.tables`` at this revision: later changes to ``tables.py`` get new
revisions, never edits here.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "fs_0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = ("flowsignals",)
depends_on: str | Sequence[str] | None = None

TABLE = "flow_signal_waiters"
INDEX = "ix_flow_signal_waiters_run_id_signal_name_created_at"


def _schema() -> str | None:
    # Read from the migration context, not from our env.py: a host application's env.py runs
    # these revisions too, and passes context.configure(flowsignals_schema=...) or nothing.
    schema = op.get_context().opts.get("flowsignals_schema")
    return schema if isinstance(schema, str) else None


def upgrade() -> None:
    schema = _schema()
    op.create_table(
        TABLE,
        sa.Column("run_id", sa.Uuid(as_uuid=True), nullable=False),
        sa.Column("step_key", sa.String(256), nullable=False),
        sa.Column("signal_name", sa.String(256), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("payload_json", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("run_id", "step_key", name="pk_flow_signal_waiters"),
        schema=schema,
    )
    op.create_index(
        INDEX, TABLE, ["run_id", "signal_name", "created_at"], unique=False, schema=schema
    )


def downgrade() -> None:
    schema = _schema()
    op.drop_index(INDEX, table_name=TABLE, schema=schema)
    op.drop_table(TABLE, schema=schema)
