"""The LISTEN connection that wakes :meth:`PostgresSignalStore.wait_for_signal`.

One :class:`Listener` per store: a dedicated autocommit psycopg connection, outside the pool
(a pooled connection would be handed to other work, and a LISTEN lives as long as its session),
read by one background thread that serves any number of waiting threads.

A notification is only a hint that a waiter changed; the table is the truth. A waiting thread
registers its event *before* it reads the table, so a notification that arrives while it reads
is not lost: it sets the event and the next wait returns at once. Whatever the listener misses
while it has no connection (killed backend, server restart) is made up for on reconnection,
when every registered waiter is woken to read the table again; the waiters' own periodic
re-check bounds anything else.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
from psycopg import sql

__all__ = ["Listener"]

_log = logging.getLogger(__name__)

#: First and largest pause between reconnection attempts, in seconds.
_FIRST_BACKOFF = 0.05
_MAX_BACKOFF = 5.0

#: An idle listener sends a query this often (seconds), so a silently dropped network is
#: noticed and the connection replaced; a killed backend or a restart is noticed at once.
_HEARTBEAT = 15.0

_UUID_TEXT_LENGTH = 36

Key = tuple[uuid.UUID, str]


class Listener:
    """LISTENs on one channel and wakes the threads waiting on the waiters it names.

    Notification payloads are ``"<run_id> <step_key>"`` (see
    :func:`flowsignals.statements.notify_channel`). The thread starts on the first
    :meth:`subscribe` and runs until :meth:`stop`.

    Args:
        connect: Opens a new autocommit psycopg connection (called on every (re)connection).
        channel: The channel to LISTEN on.
    """

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]], channel: str) -> None:
        self._connect = connect
        self._channel = channel
        self._lock = threading.Lock()
        self._events: dict[Key, set[threading.Event]] = {}
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        # Written to by stop(), so the thread's select() returns at once.
        self._wake_r, self._wake_w = os.pipe()
        self._connections = 0
        self._backend_pid: int | None = None

    @property
    def backend_pid(self) -> int | None:
        """The server process id of the current listening connection, or ``None``."""
        return self._backend_pid

    @property
    def connections(self) -> int:
        """How many times the listener has connected (and issued LISTEN) so far."""
        return self._connections

    @contextlib.contextmanager
    def subscribe(self, run_id: uuid.UUID, step_key: str) -> Iterator[threading.Event]:
        """Register an event set whenever waiter (run_id, step_key) may have changed.

        Register before reading the table: then a change committed at any moment after the
        read sets the event. The event is also set whenever the listener (re)connects.
        """
        event = threading.Event()
        key = (run_id, step_key)
        with self._lock:
            self._events.setdefault(key, set()).add(event)
            self._start()
        try:
            yield event
        finally:
            with self._lock:
                events = self._events.get(key)
                if events is not None:
                    events.discard(event)
                    if not events:
                        del self._events[key]

    def stop(self) -> None:
        """Stop the thread, close the connection, and wake every waiter (idempotent)."""
        with self._lock:
            if self._stopping.is_set():
                return
            self._stopping.set()
            thread = self._thread
        os.write(self._wake_w, b"x")
        if thread is not None:
            thread.join()
        os.close(self._wake_r)
        os.close(self._wake_w)
        self._wake_all()

    def _start(self) -> None:
        # Called with the lock held.
        if self._thread is None and not self._stopping.is_set():
            self._thread = threading.Thread(
                target=self._run, name=f"flowsignals-listener:{self._channel}", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        backoff = _FIRST_BACKOFF
        while not self._stopping.is_set():
            try:
                with self._connect() as conn:
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
                    self._backend_pid = conn.info.backend_pid
                    self._connections += 1
                    backoff = _FIRST_BACKOFF
                    # Changes committed while nobody listened sent notifications to no one.
                    self._wake_all()
                    self._listen(conn)
            except psycopg.Error as exc:
                _log.warning("flowsignals listener lost its connection: %s", exc)
            except Exception:
                # Anything else must not end the thread silently: every wait would fall back
                # to its re-check. Log it, wake the waits, and start over.
                _log.exception("flowsignals listener failed; reconnecting")
                self._wake_all()
            finally:
                self._backend_pid = None
            if self._stopping.wait(backoff):
                break
            backoff = min(backoff * 2, _MAX_BACKOFF)

    def _listen(self, conn: psycopg.Connection[Any]) -> None:
        # poll(), not select(): select() cannot take a descriptor above 1023.
        poller = select.poll()
        poller.register(conn.fileno(), select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while not self._stopping.is_set():
            ready = {fd for fd, _ in poller.poll(_HEARTBEAT * 1000)}
            if self._wake_r in ready:
                return
            if not ready:
                conn.execute("SELECT 1")
            # Raises OperationalError when the server closed the connection.
            for notify in conn.notifies(timeout=0):
                self._dispatch(notify.payload)

    def _dispatch(self, payload: str) -> None:
        try:
            key = (uuid.UUID(payload[:_UUID_TEXT_LENGTH]), payload[_UUID_TEXT_LENGTH + 1 :])
        except ValueError:
            return  # someone else's message on our channel: not ours to act on
        with self._lock:
            events = list(self._events.get(key, ()))
        for event in events:
            event.set()

    def _wake_all(self) -> None:
        with self._lock:
            events = [event for events in self._events.values() for event in events]
        for event in events:
            event.set()
