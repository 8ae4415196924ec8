"""The commands over the whole table and its schema: ``claim-expired``, ``purge``, ``ls``,
``stats``, ``migrate``, and the ``demo`` that checks the store's guarantees.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from datetime import datetime

from alembic.util import CommandError
from sqlalchemy import URL, func, select

from flowsignals import migrations
from flowsignals.cli.database import database_url, open_store
from flowsignals.cli.diagnostics import UsageError, first_line
from flowsignals.cli.exit_codes import EXIT_ERROR, EXIT_OK
from flowsignals.cli.output import print_json, print_text, waiter_table, waiter_to_json
from flowsignals.results import WaiterState


def claim_expired(args: argparse.Namespace) -> int:
    """``flowsignals claim-expired``: claim waiters whose deadline passed, and print them."""
    with open_store(args) as store:
        claimed = store.claim_expired(limit=args.limit)
    print_json({"claimed": [waiter_to_json(waiter) for waiter in claimed], "count": len(claimed)})
    return EXIT_OK


def purge(args: argparse.Namespace) -> int:
    """``flowsignals purge``: delete waiters finished longer ago than ``--older-than``."""
    with open_store(args) as store:
        purged = store.purge(
            older_than=args.older_than, limit=args.limit, batch_size=args.batch_size
        )
    print_json({"purged": purged})
    return EXIT_OK


def ls(args: argparse.Namespace) -> int:
    """``flowsignals ls``: one page of waiters, as a table or JSON, with the next page's token."""
    limit: int = args.limit
    filters = {"run_id": args.run, "signal_name": args.signal, "state": args.state}
    # One transaction: now() is the same instant in every statement, so the state shown for
    # each waiter agrees with the --state filter, and the look-ahead sees the same rows.
    with open_store(args) as store, store.engine.begin() as conn:
        now: datetime = conn.execute(select(func.now())).scalar_one()
        page = store.list_waiters(**filters, limit=limit, after=args.after, conn=conn)
        # A full page has a next one only if a waiter follows: look one ahead.
        more = len(page) == limit and bool(
            store.list_waiters(**filters, limit=1, after=page[-1], conn=conn)
        )
    next_token = page[-1].cursor.token() if more else None
    if args.json:
        waiters = [{**waiter_to_json(w), "state": w.state_at(now).value} for w in page]
        print_json({"waiters": waiters, "next": next_token})
        return EXIT_OK
    print_text(waiter_table(page, now))
    if next_token is not None:
        print_text([f"next page: --after {shlex.quote(next_token)}"])
    return EXIT_OK


def stats(args: argparse.Namespace) -> int:
    """``flowsignals stats``: count waiters by state and in total."""
    with open_store(args) as store:
        counts = store.count_waiters(run_id=args.run, signal_name=args.signal)
    by_state = {state.value: counts[state] for state in WaiterState}
    if args.json:
        print_json({**by_state, "total": counts.total})
        return EXIT_OK
    width = len(str(counts.total))
    print_text(
        f"{name:<10} {count:>{width}}"
        for name, count in [*by_state.items(), ("total", counts.total)]
    )
    return EXIT_OK


def migrate(args: argparse.Namespace) -> int:
    """``flowsignals migrate``: upgrade the schema, print its SQL (``--sql``) or check it."""
    schema: str | None = args.schema
    revision: str = args.revision
    try:
        if args.sql:
            sys.stdout.write(migrations.sql(schema=schema, revision=revision))
            return EXIT_OK
        url = database_url(args)
        if args.check:
            return _check_migrated(url, schema)
        before = migrations.current(url, schema)
        migrations.upgrade(url, schema, revision)
        after = migrations.current(url, schema)
    except CommandError as exc:
        raise UsageError("--revision", first_line(str(exc))) from exc
    print_json(
        {
            "status": "up_to_date" if before == after else "upgraded",
            "schema": schema,
            "from_revision": before,
            "to_revision": after,
        }
    )
    return EXIT_OK


def _check_migrated(url: URL, schema: str | None) -> int:
    current, head = migrations.check(url, schema)
    print_json(
        {
            "status": "at_head" if current == head else "behind",
            "schema": schema,
            "current_revision": current,
            "head_revision": head,
        }
    )
    if current != head:
        print(
            f"flowsignals: the schema is at {current or 'no revision (not installed)'}, "
            f"not at {head}: run 'flowsignals migrate'",
            file=sys.stderr,
        )
        return EXIT_ERROR
    return EXIT_OK


def demo(args: argparse.Namespace) -> int:
    """``flowsignals demo``: run the approval-flow workload (see :mod:`flowsignals.demo`)."""
    # Imported here: the signal commands should not pay for the demo's imports.
    from flowsignals.demo import run_demo

    url = None if args.database_url is None else database_url(args)
    return run_demo(url, schema=args.schema, runs=args.runs, threads=args.threads, seed=args.seed)
