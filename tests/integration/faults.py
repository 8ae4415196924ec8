"""Helpers that break things on purpose: terminate backends, hold row locks, watch for waits."""

from __future__ import annotations

import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import datetime, timedelta, tzinfo
from types import TracebackType
from typing import Any

import psycopg
import pytest
from sqlalchemy import make_url

from flowsignals.urls import to_sqlalchemy_url

_WAIT_SECONDS = 10.0

#: How long :meth:`Call.result` waits for its call before failing the test.
_CALL_PATIENCE = 30.0


class Call:
    """Runs ``call`` on a thread; :meth:`result` returns its value or raises its error."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self._outcome: list[Any] = []
        self._thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self._thread.start()

    def _run(self, call: Callable[[], Any]) -> None:
        try:
            self._outcome.append(call())
        except BaseException as exc:
            self._outcome.append(exc)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def result(self) -> Any:
        self._thread.join(_CALL_PATIENCE)
        assert not self._thread.is_alive(), "the call did not return"
        (outcome,) = self._outcome
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


class OffsetOutOfRange(tzinfo):
    """A tzinfo whose offset (25 hours) Python refuses to apply: datetime raises ValueError."""

    def utcoffset(self, dt: datetime | None) -> timedelta:
        return timedelta(hours=25)

    def dst(self, dt: datetime | None) -> None:
        return None

    def tzname(self, dt: datetime | None) -> str:
        return "+25"


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


class ReplyDropper:
    """A TCP proxy in front of the test server that can swallow the server's next reply.

    After :meth:`drop_next_reply`, the first bytes the server sends on any connection are
    discarded and that connection is closed both ways. The server has by then executed the
    statement and, in autocommit, committed it (PostgreSQL flushes a reply at Sync, after the
    commit); the client only sees a lost connection: the ambiguous failure a retry must handle.
    """

    def __init__(self, url: str) -> None:
        target = make_url(to_sqlalchemy_url(url))
        host = target.host or ""
        if not host or host.startswith("/") or "host" in target.query:
            pytest.skip("the reply-dropping proxy needs a server on TCP")
        self._target = (host, target.port or 5432)
        self._server = socket.create_server(("127.0.0.1", 0))
        port = self._server.getsockname()[1]
        #: The URL to connect through the proxy.
        self.url = target.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
        #: How many replies were dropped.
        self.dropped = 0
        self._armed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def drop_next_reply(self) -> None:
        """Swallow the next bytes the server sends, and cut that connection."""
        self._armed.set()

    def __enter__(self) -> ReplyDropper:
        self._spawn(self._accept)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            _close(sock)
        for thread in self._threads:
            thread.join(_WAIT_SECONDS)

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return  # closed by __exit__
            server = socket.create_connection(self._target)
            with self._lock:
                self._sockets += [client, server]
            self._spawn(self._pump, client, server, False)
            self._spawn(self._pump, server, client, True)

    def _pump(self, source: socket.socket, sink: socket.socket, replies: bool) -> None:
        try:
            while data := source.recv(65536):
                if replies and self._armed.is_set():
                    self._armed.clear()
                    self.dropped += 1
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            _close(source)
            _close(sink)


def _close(sock: socket.socket) -> None:
    with suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
