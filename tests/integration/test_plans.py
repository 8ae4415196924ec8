"""Every operation's SQL is planned with an index, never a sequential scan of the waiter table.

A plan, not a timing: on a table large enough for the planner to care, with fresh statistics,
``EXPLAIN (FORMAT JSON)`` of each statement exactly as the store sends it
(``statements.for_schema(None)``) must reach ``flow_signal_waiters`` through an index only.
This is what keeps deliver and get flat as the table grows (the benchmark measures that).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql as pgsql

from flowsignals import statements
from flowsignals.statements import CHANNEL

ROWS = 20_000
TABLE = "flow_signal_waiters"


def _scans(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every plan node, depth first."""
    yield plan
    for child in plan.get("Plans", []):
        yield from _scans(child)


@pytest.fixture
def loaded(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection on a database holding ROWS waiters, freshly analysed."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        # Half pending, half delivered, a few signal names per run: a lived-in table.
        conn.execute(
            f"INSERT INTO {TABLE} (run_id, step_key, signal_name, delivered_at, payload_json)"
            " SELECT gen_random_uuid(), 'step-' || i, 'signal-' || mod(i, 4),"
            "        CASE WHEN mod(i, 2) = 0 THEN now() END, CASE WHEN mod(i, 2) = 0 THEN '{}' END"
            " FROM generate_series(1, %s) AS i",
            (ROWS,),
        )
        conn.execute(f"VACUUM (ANALYZE) {TABLE}")
        yield conn


def _params(name: str) -> dict[str, object]:
    run = uuid.uuid4()
    return {
        "register": {"run": run, "step": "step-1", "signal": "signal-1", "deadline": None},
        "deliver": {
            "run": run,
            "signal": "signal-1",
            "payload": "{}",
            "key": "delivery-1",
            "channel": CHANNEL,
        },
        "get": {"run": run, "step": "step-1"},
        "remove": {"run": run, "step": "step-1", "channel": CHANNEL},
    }[name]


def _explain(
    conn: psycopg.Connection[Any], sql: str, params: dict[str, object], mode: str
) -> dict[str, Any]:
    """EXPLAIN the statement as a server-side prepared statement, the way the store runs it."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    prepared = re.sub(r"%\((\w+)\)s", number, sql)
    conn.execute(f"SET plan_cache_mode = {mode}")
    conn.execute(f"PREPARE fs_plan AS {prepared}")
    try:
        # Values as literals: EXECUTE's arguments take the prepared statement's parameter types.
        arguments = pgsql.SQL(", ").join(pgsql.Literal(params[name]) for name in names)
        explain = pgsql.SQL("EXPLAIN (FORMAT JSON) EXECUTE fs_plan({})").format(arguments)
        row = conn.execute(explain).fetchone()
    finally:
        conn.execute("DEALLOCATE fs_plan")
        conn.execute("RESET plan_cache_mode")
    assert row is not None
    plan: dict[str, Any] = row[0][0]["Plan"]
    return plan


@pytest.mark.parametrize("name", ["register", "deliver", "get", "remove"])
@pytest.mark.parametrize("mode", ["force_custom_plan", "force_generic_plan"])
def test_operation_reaches_the_table_only_through_an_index(
    loaded: psycopg.Connection[Any], name: str, mode: str
) -> None:
    # The store prepares its statements, and PostgreSQL may switch a prepared statement to a
    # generic plan (no parameter values known) after five runs: both plans must use an index.
    sql: str = getattr(statements.for_schema(None), name)
    plan = _explain(loaded, sql, _params(name), mode)
    nodes = list(_scans(plan))
    node_types = [node["Node Type"] for node in nodes if node.get("Relation Name") == TABLE]
    assert "Seq Scan" not in node_types, node_types
    if name == "register":
        # An INSERT reads nothing; its conflict check goes through the primary key's index.
        assert plan["Node Type"] == "ModifyTable"
        assert plan.get("Conflict Arbiter Indexes") == [f"pk_{TABLE}"]
    else:
        scans = [t for t in node_types if t != "ModifyTable"]
        assert scans, node_types
        assert set(scans) <= {"Index Scan", "Index Only Scan", "Bitmap Heap Scan"}, scans
        if "Bitmap Heap Scan" in scans:
            assert any(node["Node Type"] == "Bitmap Index Scan" for node in nodes), node_types
