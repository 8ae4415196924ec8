"""Remember each delivery's idempotency key, so a retried delivery is delivered once.

Revision ID: fs_0005
Revises: fs_0004
Create Date: 2026-12-04

A delivery whose connection is lost after the server committed cannot know what happened; with
several pending waiters of one signal, retrying it blindly would fill the next waiter too. The
delivered waiter now keeps the caller's key, and a delivery that finds its key among the
signal's waiters reports that delivery instead of making another. The signal a delivery was
for is kept beside the key, since re-registering may rename the waiter's signal afterwards.
Nullable columns without a default change only the catalog.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "fs_0005"
down_revision: str | Sequence[str] | None = "fs_0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "flow_signal_waiters"


def _schema() -> str | None:
    # As in fs_0001: from the migration context, so a host application's env.py can pass
    # context.configure(flowsignals_schema=...), or nothing for the search_path.
    schema = op.get_context().opts.get("flowsignals_schema")
    return schema if isinstance(schema, str) else None


def upgrade() -> None:
    for column in ("idempotency_key", "delivered_signal_name"):
        op.add_column(
            TABLE, sa.Column(column, sa.String(256, collation="C"), nullable=True), schema=_schema()
        )


def downgrade() -> None:
    for column in ("delivered_signal_name", "idempotency_key"):
        op.drop_column(TABLE, column, schema=_schema())
