"""Bulk-load waiters with COPY, into a schema of their own, migrated like any other."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import psycopg
from psycopg import sql

from bench.workloads import PAYLOAD, SIGNAL, STEP, run_uuid
from flowsignals import migrations

_CHUNK = 20_000
_DELIVERED_AT = "2026-01-01 00:00:00+00"
#: Expired waiters' deadlines are spread over whole seconds from this moment on.
_PAST = datetime(2000, 1, 1, tzinfo=timezone.utc)
#: Odd, and coprime with every table size used, so deadline order is unrelated to key order.
_DEADLINE_STRIDE = 7_919


def migrated_schema(url: str, schema: str) -> None:
    """Drop ``schema`` if it exists and build it afresh with flowsignals' migrations."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    migrations.upgrade(url, schema=schema)


def load_waiters(url: str, schema: str, rows: int, *, expired: bool = False) -> None:
    """COPY ``rows`` waiters into ``schema``, then VACUUM ANALYZE it.

    Row ``i`` belongs to run :func:`bench.workloads.run_uuid` ``(i, rows)``. By default the even
    rows are pending (no deadline) and the odd ones already hold a delivery, as in a table that
    has lived a while. With ``expired=True`` every row is pending with a deadline in the past,
    the deadlines all different and in an order unrelated to the primary key (as waiters
    parked at different times with different timeouts would be). The same ``rows`` always
    produce the same table, row for row.
    """
    table = sql.Identifier(schema, "flow_signal_waiters")
    copy = sql.SQL(
        "COPY {} (run_id, step_key, signal_name, expires_at, delivered_at, payload_json) FROM STDIN"
    ).format(table)
    pending = "\\N\t\\N\t\\N\n"
    delivered = f"\\N\t{_DELIVERED_AT}\t{PAYLOAD}\n"
    prefix = f"\t{STEP}\t{SIGNAL}\t"
    days = [(_PAST + timedelta(days=d)).strftime("%Y-%m-%d") for d in range(rows // 86_400 + 2)]

    def line(i: int) -> str:
        if not expired:
            return f"{run_uuid(i, rows)}{prefix}{pending if i % 2 == 0 else delivered}"
        second = i * _DEADLINE_STRIDE % rows
        day, rest = divmod(second, 86_400)
        hour, rest = divmod(rest, 3_600)
        deadline = f"{days[day]} {hour:02d}:{rest // 60:02d}:{rest % 60:02d}+00"
        return f"{run_uuid(i, rows)}{prefix}{deadline}\t\\N\t\\N\n"

    with psycopg.connect(url, autocommit=True) as conn:
        with conn.cursor() as cur, cur.copy(copy) as out:
            for start in range(0, rows, _CHUNK):
                out.write("".join(line(i) for i in range(start, min(rows, start + _CHUNK))))
        conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(table))
