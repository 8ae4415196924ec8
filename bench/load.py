"""Bulk-load waiters with COPY, into a schema of their own, migrated like any other."""

from __future__ import annotations

import psycopg
from psycopg import sql

from bench.workloads import PAYLOAD, SIGNAL, STEP, run_uuid
from flowsignals import migrations

_CHUNK = 20_000
_PAST = "2000-01-01 00:00:00+00"
_DELIVERED_AT = "2026-01-01 00:00:00+00"


def migrated_schema(url: str, schema: str) -> None:
    """Drop ``schema`` if it exists and build it afresh with flowsignals' migrations."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    migrations.upgrade(url, schema=schema)


def load_waiters(url: str, schema: str, rows: int, *, expired: bool = False) -> None:
    """COPY ``rows`` waiters into ``schema``, then VACUUM ANALYZE it.

    Row ``i`` belongs to run :func:`bench.workloads.run_uuid` ``(i, rows)``. By default the even
    rows are pending (no deadline) and the odd ones already hold a delivery, as in a table that
    has lived a while. With ``expired=True`` every row is pending with a deadline in the past.
    """
    table = sql.Identifier(schema, "flow_signal_waiters")
    copy = sql.SQL(
        "COPY {} (run_id, step_key, signal_name, expires_at, delivered_at, payload_json) FROM STDIN"
    ).format(table)
    pending = "\\N\t\\N\t\\N\n" if not expired else f"{_PAST}\t\\N\t\\N\n"
    delivered = f"\\N\t{_DELIVERED_AT}\t{PAYLOAD}\n" if not expired else pending
    prefix = f"\t{STEP}\t{SIGNAL}\t"
    with psycopg.connect(url, autocommit=True) as conn:
        with conn.cursor() as cur, cur.copy(copy) as out:
            for start in range(0, rows, _CHUNK):
                lines = [
                    f"{run_uuid(i, rows)}{prefix}{pending if i % 2 == 0 else delivered}"
                    for i in range(start, min(rows, start + _CHUNK))
                ]
                out.write("".join(lines))
        conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(table))
