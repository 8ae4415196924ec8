"""Wake-up latency of ``wait_for_signal``: from the delivery's commit to the waiter's return.

A thread waits on a fresh waiter; a little later the main thread delivers. The delivery runs in
autocommit, so its commit is done when ``deliver_signal`` returns: the latency is the waiter's
return time minus that moment. A waiter woken while the deliverer is still reading the reply
can come out slightly negative; it counts as such.

The modes alternate wait by wait (LISTEN/NOTIFY on one store, polling with ``listen=False`` on
another), so both see the same machine load. With LISTEN the delivery comes 5-20 ms into the
wait, long after its first read of the table. Polling reads the table every ``poll_interval``
seconds, so its latency depends on where in that cycle the delivery lands: its delay is drawn
uniformly over one whole interval (after the same 5 ms), which makes the measured latencies
the distribution a delivery at a random moment sees.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from dataclasses import dataclass, field

from bench.workloads import PAYLOAD, SIGNAL, STEP
from flowsignals import PostgresSignalStore

#: Waits per mode run first and thrown away: the first one starts the store's listener.
WARM_UP = 5
_MIN_DELAY = 0.005
_LISTEN_MAX_DELAY = 0.020


@dataclass
class WakeMode:
    """One way of waiting: its store, how long after the wait starts to deliver, its samples."""

    store: PostgresSignalStore
    max_delay: float
    #: Wake-up latencies, seconds: from ``deliver_signal``'s return (its commit is done by then).
    latencies: list[float] = field(default_factory=list)
    #: The same waits from the moment ``deliver_signal`` was called: an upper bound, since the
    #: commit happened somewhere between the call and its return.
    from_call: list[float] = field(default_factory=list)


def listen_mode(store: PostgresSignalStore) -> WakeMode:
    """A store that waits with LISTEN/NOTIFY: delivery 5-20 ms into the wait."""
    return WakeMode(store, _LISTEN_MAX_DELAY)


def polling_mode(store: PostgresSignalStore, poll_interval: float) -> WakeMode:
    """A ``listen=False`` store: delivery at a uniformly random point of one poll interval."""
    return WakeMode(store, _MIN_DELAY + poll_interval)


def run_wake_ups(
    modes: dict[str, WakeMode], *, rounds: int, every: dict[str, int], seed: int = 7
) -> None:
    """Measure ``rounds`` rounds; mode ``m`` waits once in every ``every[m]``-th round.

    The order of the modes within a round is rotated every round.
    """
    rng = random.Random(seed)
    names = list(modes)
    for name in names:
        for _ in range(WARM_UP):
            _one_round(modes[name], rng)
    for mode in modes.values():
        mode.latencies.clear()
        mode.from_call.clear()
    for number in range(rounds):
        shift = number % len(names)
        for name in names[shift:] + names[:shift]:
            if number % every.get(name, 1) == 0:
                after_return, after_call = _one_round(modes[name], rng)
                modes[name].latencies.append(after_return)
                modes[name].from_call.append(after_call)


def _one_round(mode: WakeMode, rng: random.Random) -> tuple[float, float]:
    run_id = uuid.uuid4()
    mode.store.register_waiter(run_id, STEP, SIGNAL)
    try:
        return _one_wake_up(mode.store, run_id, rng.uniform(_MIN_DELAY, mode.max_delay))
    finally:
        mode.store.remove_waiter(run_id, STEP)


def _one_wake_up(
    store: PostgresSignalStore, run_id: uuid.UUID, delay: float
) -> tuple[float, float]:
    woke: list[float] = []
    errors: list[BaseException] = []
    started = threading.Event()

    def waiter() -> None:
        try:
            started.set()
            store.wait_for_signal(run_id, STEP, timeout=30.0)
            woke.append(time.perf_counter())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=waiter)
    thread.start()
    started.wait()
    time.sleep(delay)
    called = time.perf_counter()
    if not store.deliver_signal(run_id, SIGNAL, PAYLOAD).delivered:
        raise RuntimeError("the waiter's signal was not DELIVERED")
    committed = time.perf_counter()
    thread.join()
    if errors:
        raise errors[0]
    return woke[0] - committed, woke[0] - called
