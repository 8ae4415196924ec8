"""Helpers that break things on purpose: terminate backends, hold row locks, watch for waits."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from sqlalchemy import make_url

from flowsignals.urls import to_sqlalchemy_url

_WAIT_SECONDS = 10.0


def libpq_url(url: str) -> str:
    """The libpq form of any URL the suite is given, for plain psycopg connections."""
    sa_url = to_sqlalchemy_url(url)
    return make_url(sa_url).set(drivername="postgresql").render_as_string(hide_password=False)


@contextmanager
def admin_connection(url: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit psycopg connection outside every pool under test."""
    with psycopg.connect(libpq_url(url), autocommit=True, application_name="fs-admin") as conn:
        yield conn


def backends(admin: psycopg.Connection[Any], application_name: str) -> list[int]:
    """PIDs of the backends whose client reported ``application_name``."""
    rows = admin.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND pid <> pg_backend_pid()",
        (application_name,),
    ).fetchall()
    return [pid for (pid,) in rows]


def terminate(admin: psycopg.Connection[Any], application_name: str) -> int:
    """Terminate the backends of ``application_name``; wait until gone; return how many."""
    pids = backends(admin, application_name)
    for pid in pids:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    wait_until(lambda: not backends(admin, application_name), "terminated backends to exit")
    return len(pids)


def wait_until(condition: Any, what: str, timeout: float = _WAIT_SECONDS) -> None:
    """Poll ``condition`` until it is true; fail the test (never hang) after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def lock_waiters(admin: psycopg.Connection[Any], application_name: str) -> list[int]:
    """PIDs of ``application_name`` backends blocked on a heavyweight lock."""
    rows = admin.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND wait_event_type = 'Lock'",
        (application_name,),
    ).fetchall()
    return [pid for (pid,) in rows]


@contextmanager
def random_kills(url: str, application_name: str) -> Iterator[Counter[str]]:
    """Terminate the backends of ``application_name`` every 5 to 30 ms while the block runs.

    Yields the running count of terminations (key ``"terminated"``).
    """
    stop = threading.Event()
    kills = Counter[str]()

    def killer() -> None:
        with admin_connection(url) as own:
            while not stop.is_set():
                for pid in backends(own, application_name):
                    own.execute("SELECT pg_terminate_backend(%s)", (pid,))
                    kills["terminated"] += 1
                stop.wait(random.uniform(0.005, 0.03))

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        yield kills
    finally:
        stop.set()
        thread.join(15)
