"""The blocking wait's loop: read the table, then sleep until a hint, a re-check or a deadline.

The table is the truth; a notification only ends a sleep early. Each read is its own transaction
on a pooled connection, so a wait holds neither a connection nor a snapshot while it sleeps.
"""

from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta

from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from flowsignals.errors import WaiterExpiredError, WaiterNotFoundError, WaitTimeoutError
from flowsignals.executor import Executor
from flowsignals.results import SignalWaiter
from flowsignals.statements import Statements, waiter_from_row

#: Pause before reading again after a wait's read failed on a lost connection (seconds).
_RETRY_AFTER_CONNECTION_ERROR = 0.25

#: Pause before marking a waiter watched again, when its row was locked (seconds).
_RETRY_AFTER_LOCKED = 0.02

#: A wait wakes this long after a deadline, so the server's clock has surely passed it.
_PAST_DEADLINE = timedelta(milliseconds=2)


def wait_for_delivery(
    executor: Executor,
    statements: Statements,
    run: uuid.UUID,
    step: str,
    timeout: float,
    deadline: float,
    event: threading.Event | None,
    interval: float,
) -> SignalWaiter:
    """Read the waiter until it is delivered, then return it; raise once it cannot be.

    Args:
        executor: Runs each read as its own transaction.
        statements: The store's compiled SQL.
        run: The workflow run.
        step: The step within the run.
        timeout: The caller's timeout in seconds, for the error message.
        deadline: ``time.monotonic()`` value after which the wait gives up.
        event: Set by the listener when a notification for this waiter arrives (or when it
            reconnects); ``None`` when polling.
        interval: Longest sleep between reads.

    Raises:
        WaitTimeoutError: ``deadline`` passed with the waiter still pending.
        WaiterNotFoundError: There is no such waiter, or it was removed while waiting.
        WaiterExpiredError: Its deadline passed (server clock) undelivered, or it was claimed.
    """
    params = {"run": run, "step": step}
    # With a listener the first read also marks the waiter watched, so that deliveries notify
    # it (only watched waiters are notified); later reads are plain.
    watching = event is not None
    # Set when a plain read showed the deadline passed: only a read under a lock may say so.
    confirming = False
    while True:
        if event is not None:
            # Cleared before the read: a notification landing during it sets it again.
            event.clear()
        if confirming:
            read = statements.confirm
        else:
            read = statements.watch if watching else statements.poll
        pause = interval
        try:
            # The pool's wait for a free connection counts against the caller's timeout too.
            left = max(0.0, deadline - time.monotonic())
            rows, _ = executor.execute(None, read, params, pool_timeout=left)
        except (OperationalError, PoolTimeoutError) as exc:
            # The server went away (restart, terminated backend): the pool reconnects. Or
            # every connection is busy: a long wait outlasts that too.
            lost: SQLAlchemyError | None = exc
            pause = min(interval, _RETRY_AFTER_CONNECTION_ERROR)
        else:
            lost = None
            if not rows:
                raise WaiterNotFoundError(run, step)
            *columns, server_now, locked = rows[0]
            waiter = waiter_from_row(columns)
            # Delivered and claimed are final, whoever holds the row now.
            if waiter.delivered_at is not None:
                return waiter
            if waiter.claimed_at is not None:
                raise WaiterExpiredError(waiter)
            if read is statements.watch and locked:
                watching = False
            expires_at = waiter.expires_at
            confirming = expires_at is not None and expires_at <= server_now
            if confirming and locked:
                # Read under a lock past its deadline: any delivery that takes the row from
                # now on judges the deadline later still, and finds it passed too.
                raise WaiterExpiredError(waiter)
            if confirming and read is statements.poll:
                continue  # confirm at once, even with no time left
            if read is not statements.poll and not locked:
                # Another transaction holds the row (a delivery in flight, a caller's open
                # transaction): read again soon, not at the re-check.
                pause = min(pause, _RETRY_AFTER_LOCKED)
            elif expires_at is not None:
                until_expiry = expires_at - server_now + _PAST_DEADLINE
                pause = min(pause, until_expiry.total_seconds())
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise WaitTimeoutError(run, step, timeout) from lost
        pause = min(pause, remaining)
        if event is not None:
            event.wait(pause)
        else:
            time.sleep(pause)
