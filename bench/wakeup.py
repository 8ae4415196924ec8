"""Wake-up latency of ``wait_for_signal``: from the delivery's commit to the waiter's return.

A thread waits on a fresh waiter; a few milliseconds later the main thread delivers. The delivery
runs in autocommit, so its commit is done when ``deliver_signal`` returns: the latency is the
waiter's return time minus that moment (a waiter woken while the deliverer is still reading the
reply can come out slightly negative; it counts as such). Measured with LISTEN/NOTIFY (the
default) and with ``listen=False`` (polling), on the same server.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from typing import Any

from bench.workloads import PAYLOAD, SIGNAL, STEP
from flowsignals import PostgresSignalStore


def available() -> bool:
    """Whether this build of flowsignals has ``wait_for_signal`` (issue 4)."""
    return hasattr(PostgresSignalStore, "wait_for_signal")


def wake_up_latencies(store: PostgresSignalStore, *, rounds: int, seed: int = 7) -> list[float]:
    """Return ``rounds`` wake-up latencies (seconds) measured on ``store``."""
    rng = random.Random(seed)
    wait: Any = getattr(store, "wait_for_signal")  # noqa: B009 (absent before issue 4)
    latencies: list[float] = []
    for _ in range(rounds):
        run_id = uuid.uuid4()
        store.register_waiter(run_id, STEP, SIGNAL)
        latencies.append(_one_wake_up(store, wait, run_id, rng.uniform(0.005, 0.020)))
        store.remove_waiter(run_id, STEP)
    return latencies


def _one_wake_up(store: PostgresSignalStore, wait: Any, run_id: uuid.UUID, delay: float) -> float:
    woke: list[float] = []
    errors: list[BaseException] = []
    waiting = threading.Event()

    def waiter() -> None:
        try:
            waiting.set()
            wait(run_id, STEP, timeout=30.0)
            woke.append(time.perf_counter())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=waiter)
    thread.start()
    waiting.wait()
    time.sleep(delay)
    if not store.deliver_signal(run_id, SIGNAL, PAYLOAD).delivered:
        raise RuntimeError("the waiter's signal was not DELIVERED")
    committed = time.perf_counter()
    thread.join()
    if errors:
        raise errors[0]
    return woke[0] - committed
