"""The floor: what the same operations cost when written by hand on the raw driver.

Raw psycopg 3, one autocommit connection per thread, every statement prepared server-side, the
minimal SQL for each operation. The benchmark workloads give each run one waiter per signal,
so the floor's plain conditional UPDATE delivers to exactly the waiter flowsignals would.

:class:`ExactSqlClient` runs flowsignals' own compiled SQL the same way: the difference between
it and :class:`FloorClient` is what our SQL costs on the server (mostly deliver's CTE, which
reports every outcome); the difference between it and the store is our Python-side cost.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import psycopg

from flowsignals import statements

REGISTER = (
    "INSERT INTO flow_signal_waiters (run_id, step_key, signal_name, expires_at)"
    " VALUES (%s, %s, %s, %s)"
    " ON CONFLICT (run_id, step_key)"
    " DO UPDATE SET signal_name = excluded.signal_name, expires_at = excluded.expires_at"
)
DELIVER = (
    "UPDATE flow_signal_waiters SET delivered_at = now(), payload_json = %s"
    " WHERE run_id = %s AND signal_name = %s AND delivered_at IS NULL"
    " AND (expires_at IS NULL OR expires_at > now())"
    " RETURNING step_key, delivered_at"
)
GET = (
    "SELECT run_id, step_key, signal_name, created_at, expires_at, delivered_at, payload_json"
    " FROM flow_signal_waiters WHERE run_id = %s AND step_key = %s"
)
REMOVE = "DELETE FROM flow_signal_waiters WHERE run_id = %s AND step_key = %s"


class FloorClient:
    """Hand-written SQL on one raw autocommit psycopg connection (use one per thread)."""

    name = "floor"

    def __init__(self, conninfo: str) -> None:
        self._conn = psycopg.connect(conninfo, autocommit=True)

    def register(
        self, run_id: uuid.UUID, step_key: str, signal_name: str, expires_at: datetime | None
    ) -> None:
        self._conn.execute(REGISTER, (run_id, step_key, signal_name, expires_at), prepare=True)

    def deliver(self, run_id: uuid.UUID, signal_name: str, payload_json: str) -> bool:
        cur = self._conn.execute(DELIVER, (payload_json, run_id, signal_name), prepare=True)
        return cur.fetchone() is not None

    def get(self, run_id: uuid.UUID, step_key: str) -> tuple[Any, ...] | None:
        return self._conn.execute(GET, (run_id, step_key), prepare=True).fetchone()

    def remove(self, run_id: uuid.UUID, step_key: str) -> bool:
        return self._conn.execute(REMOVE, (run_id, step_key), prepare=True).rowcount == 1

    def close(self) -> None:
        self._conn.close()


class ExactSqlClient:
    """flowsignals' exact SQL (``statements.for_schema``) on a raw autocommit connection."""

    name = "exact-sql"

    def __init__(self, conninfo: str, schema: str | None = None) -> None:
        self._conn = psycopg.connect(conninfo, autocommit=True)
        self._sql = statements.for_schema(schema)
        self._channel = statements.notify_channel(schema)

    def register(
        self, run_id: uuid.UUID, step_key: str, signal_name: str, expires_at: datetime | None
    ) -> None:
        params = {"run": run_id, "step": step_key, "signal": signal_name, "deadline": expires_at}
        self._conn.execute(self._sql.register, params, prepare=True)

    def deliver(self, run_id: uuid.UUID, signal_name: str, payload_json: str) -> bool:
        params = {
            "run": run_id,
            "signal": signal_name,
            "payload": payload_json,
            "key": None,
            "channel": self._channel,
        }
        row = self._conn.execute(self._sql.deliver, params, prepare=True).fetchone()
        return row is not None and row[0] == statements.OUTCOME_DELIVERED

    def get(self, run_id: uuid.UUID, step_key: str) -> tuple[Any, ...] | None:
        params = {"run": run_id, "step": step_key}
        return self._conn.execute(self._sql.get, params, prepare=True).fetchone()

    def remove(self, run_id: uuid.UUID, step_key: str) -> bool:
        params = {"run": run_id, "step": step_key, "channel": self._channel}
        return self._conn.execute(self._sql.remove, params, prepare=True).rowcount == 1

    def close(self) -> None:
        self._conn.close()
