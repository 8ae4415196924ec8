"""Running the plan: store calls on a thread pool, each timed; racing pairs released together."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TypeVar

from sqlalchemy import func, select

from flowsignals.demo.interrupts import DeferredInterrupt
from flowsignals.demo.plan import Plan, RacingPair, Send, Task, WaiterKey, WaiterPlan
from flowsignals.results import DeliveryResult, DeliveryStatus, SignalWaiter
from flowsignals.store import PostgresSignalStore

#: Extra wait after a deadline before its late signal, on top of the measured clock offset.
_DEADLINE_MARGIN_SECONDS = 0.05
#: How long one sender of a racing pair waits for the other before giving up the race.
_BARRIER_TIMEOUT_SECONDS = 30.0

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class SendOutcome:
    """What one send got back: a result, or the error it raised."""

    send: Send
    result: DeliveryResult | None
    error: str | None = None
    #: ``time.perf_counter()`` when the call started and ended.
    span: tuple[float, float] = (math.nan, math.nan)

    @property
    def status(self) -> DeliveryStatus | None:
        """The delivery's status; ``None`` if the call raised."""
        return None if self.result is None else self.result.status


@dataclass(slots=True)
class Execution:
    """What happened when the plan ran.

    Attributes:
        outcomes: One per send.
        latencies: Seconds per store call, by operation (``register``, ``deliver``, ``get``).
        work_seconds: Wall time of the phases that call the store.
        waited_seconds: Time spent only waiting for the late runs' deadlines to pass.
        created_before: ``created_at`` of each re-registered step, read before re-registering.
        waiters: Every planned waiter as read back at the end (``None``: not found).
        errors: Messages of store calls that raised.
    """

    outcomes: list[SendOutcome] = field(default_factory=list)
    latencies: dict[str, list[float]] = field(
        default_factory=lambda: {"register": [], "deliver": [], "get": []}
    )
    work_seconds: float = 0.0
    waited_seconds: float = 0.0
    created_before: dict[WaiterKey, datetime | None] = field(default_factory=dict)
    waiters: dict[WaiterKey, SignalWaiter | None] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


class _Runner:
    """Runs store calls on a thread pool, timing each one."""

    def __init__(self, store: PostgresSignalStore, executor: ThreadPoolExecutor) -> None:
        self._store = store
        self._executor = executor
        self._lock = threading.Lock()
        self._barriers: list[threading.Barrier] = []
        self.execution = Execution()
        self.clock_offset = _server_clock_offset(store)

    def server_now(self) -> datetime:
        """The database server's time, estimated from this machine's clock."""
        return datetime.now(timezone.utc) + self.clock_offset

    def timed(self, operation: str, call: Callable[[], T]) -> T:
        started = time.perf_counter()
        try:
            return call()
        finally:
            elapsed = time.perf_counter() - started
            with self._lock:
                self.execution.latencies[operation].append(elapsed)

    def register(self, waiter: WaiterPlan) -> datetime | None:
        expires_at = None
        if waiter.deadline_seconds is not None:
            expires_at = self.server_now() + timedelta(seconds=waiter.deadline_seconds)
        self._guard(
            lambda: self.timed(
                "register",
                lambda: self._store.register_waiter(
                    waiter.run_id, waiter.step.key, waiter.step.signal_name, expires_at
                ),
            )
        )
        return expires_at

    def get(self, key: WaiterKey) -> SignalWaiter | None:
        return self._guard(lambda: self.timed("get", lambda: self._store.get_waiter(*key)))

    def deliver(self, send: Send, barrier: threading.Barrier | None = None) -> SendOutcome:
        if barrier is not None:
            # A broken barrier means the partner never came (or we are stopping): send alone.
            with suppress(threading.BrokenBarrierError):
                barrier.wait()
        started = time.perf_counter()
        try:
            result = self.timed(
                "deliver",
                lambda: self._store.deliver_signal(
                    send.run_id, send.signal_name, send.payload_json
                ),
            )
        except Exception as exc:
            self._record_error(exc)
            return SendOutcome(send, None, f"{type(exc).__name__}: {exc}")
        return SendOutcome(send, result, span=(started, time.perf_counter()))

    def submit_task(self, task: Task) -> list[Future[SendOutcome | None]]:
        if isinstance(task, Send):
            return [self._executor.submit(self.deliver, task)]
        if isinstance(task, RacingPair):
            # Submitted back to back, so the partner is always the next task a free thread
            # takes: with at least two threads the pair cannot deadlock.
            barrier = threading.Barrier(2, timeout=_BARRIER_TIMEOUT_SECONDS)
            self._barriers.append(barrier)
            return [
                self._executor.submit(self.deliver, task.first, barrier),
                self._executor.submit(self.deliver, task.second, barrier),
            ]
        return [self._executor.submit(self._reregister, task.waiter)]

    def abort(self) -> None:
        for barrier in self._barriers:
            barrier.abort()

    def _reregister(self, waiter: WaiterPlan) -> None:
        self.register(waiter)
        return None

    def _guard(self, call: Callable[[], T]) -> T | None:
        try:
            return call()
        except Exception as exc:
            self._record_error(exc)
            return None

    def _record_error(self, exc: Exception) -> None:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        with self._lock:
            self.execution.errors.append(f"{type(exc).__name__}: {message}")


def execute(plan: Plan, store: PostgresSignalStore, threads: int) -> Execution:
    """Run ``plan`` on ``store`` with ``threads`` concurrent callers.

    Phases: register every waiter; read ``created_at`` of the steps to re-register; send the
    on-time signals (with the races, the unknown runs and the re-registrations); wait for the
    last short deadline; send the late signals; read every waiter back.

    Raises:
        KeyboardInterrupt: Ctrl-C or SIGTERM, raised between steps (see
            :mod:`flowsignals.demo.interrupts`): queued calls are cancelled, waiting racers
            released, and the pool's threads have ended.
    """
    with DeferredInterrupt() as interrupt:
        executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="flowsignals-demo")
        runner = _Runner(store, executor)
        execution = runner.execution
        try:
            started = time.perf_counter()
            deadlines = interrupt.results(
                [executor.submit(runner.register, w) for w in plan.waiters]
            )
            for waiter in plan.reregistered:
                interrupt.check()
                created = runner.get(waiter.key)
                execution.created_before[waiter.key] = (
                    None if created is None else created.created_at
                )

            futures = [future for task in plan.on_time for future in runner.submit_task(task)]
            execution.outcomes += [o for o in interrupt.results(futures) if o is not None]
            execution.work_seconds += time.perf_counter() - started

            # The deadlines are the server's; wait until the last one has passed by its clock.
            last = max((d for d in deadlines if d is not None), default=None)
            if last is not None:
                remaining = (last - runner.server_now()).total_seconds()
                remaining += _DEADLINE_MARGIN_SECONDS
                if remaining > 0:
                    interrupt.sleep(remaining)
                    execution.waited_seconds = remaining

            started = time.perf_counter()
            late = [executor.submit(runner.deliver, send) for send in plan.late]
            execution.outcomes += interrupt.results(late)
            reads = [executor.submit(runner.get, w.key) for w in plan.waiters]
            for waiter, read in zip(plan.waiters, interrupt.results(reads), strict=True):
                execution.waiters[waiter.key] = read
            execution.work_seconds += time.perf_counter() - started
        except BaseException:
            runner.abort()
            executor.shutdown(wait=True, cancel_futures=True)
            raise
        executor.shutdown(wait=True)
    return execution


def _server_clock_offset(store: PostgresSignalStore) -> timedelta:
    """How far the database server's clock is ahead of this machine's (deadlines are its)."""
    before = datetime.now(timezone.utc)
    with store.engine.connect() as conn:
        server_now: datetime = conn.execute(select(func.now())).scalar_one()
    after = datetime.now(timezone.utc)
    return server_now - (before + (after - before) / 2)
