"""The measured workloads. Each returns raw samples; :mod:`bench.report` turns them into claims.

Noise on a shared machine is handled the same way everywhere: the contenders run in short
interleaved blocks (A B A B ..., with the order rotated every round) so a burst of load from
elsewhere hits them alike, and the report uses medians over many samples.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from flowsignals import DeliveryStatus, PostgresSignalStore

OPS = ("register", "deliver", "get", "remove")
PAYLOAD = '{"approved": true, "by": "manager@example.com", "amount": 1250}'
SIGNAL = "approval"
STEP = "approve"


class Client(Protocol):
    """The four operations of one cycle, as each contender implements them."""

    name: str

    def register(
        self, run_id: uuid.UUID, step_key: str, signal_name: str, expires_at: datetime | None
    ) -> None: ...

    def deliver(self, run_id: uuid.UUID, signal_name: str, payload_json: str) -> bool: ...

    def get(self, run_id: uuid.UUID, step_key: str) -> tuple[Any, ...] | object | None: ...

    def remove(self, run_id: uuid.UUID, step_key: str) -> bool: ...

    def close(self) -> None: ...


class StoreClient:
    """flowsignals through its public API (the store is shared; this only forwards)."""

    name = "flowsignals"

    def __init__(self, store: PostgresSignalStore) -> None:
        self.store = store

    def register(
        self, run_id: uuid.UUID, step_key: str, signal_name: str, expires_at: datetime | None
    ) -> None:
        self.store.register_waiter(run_id, step_key, signal_name, expires_at)

    def deliver(self, run_id: uuid.UUID, signal_name: str, payload_json: str) -> bool:
        return self.store.deliver_signal(run_id, signal_name, payload_json).delivered

    def get(self, run_id: uuid.UUID, step_key: str) -> object | None:
        return self.store.get_waiter(run_id, step_key)

    def remove(self, run_id: uuid.UUID, step_key: str) -> bool:
        return self.store.remove_waiter(run_id, step_key)

    def close(self) -> None:
        """The store belongs to the caller."""


# -- single-thread cycle ---------------------------------------------------------------------


@dataclass
class CycleSamples:
    """Per-cycle and per-operation wall times (seconds) of one contender."""

    cycles: list[float] = field(default_factory=list)
    ops: dict[str, list[float]] = field(default_factory=lambda: {op: [] for op in OPS})
    #: This contender's cycle over the floor's cycle of the same round (the floor: empty).
    pair_ratios: list[float] = field(default_factory=list)


def _one_cycle(client: Client, samples: CycleSamples) -> float:
    clock = time.perf_counter
    run_id = uuid.uuid4()
    t0 = clock()
    client.register(run_id, STEP, SIGNAL, None)
    t1 = clock()
    if not client.deliver(run_id, SIGNAL, PAYLOAD):
        raise RuntimeError(f"{client.name}: the delivery of a fresh waiter was not DELIVERED")
    t2 = clock()
    if client.get(run_id, STEP) is None:
        raise RuntimeError(f"{client.name}: the waiter vanished")
    t3 = clock()
    if not client.remove(run_id, STEP):
        raise RuntimeError(f"{client.name}: the waiter was not removed")
    t4 = clock()
    samples.cycles.append(t4 - t0)
    for op, seconds in zip(OPS, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
        samples.ops[op].append(seconds)
    return t4 - t0


def run_cycles(
    floor: Client, others: Sequence[Client], *, rounds: int, every: dict[str, int] | None = None
) -> dict[str, CycleSamples]:
    """Run register-deliver-get-remove cycles, interleaving the contenders cycle by cycle.

    Each round runs one cycle of every contender, in an order rotated every round, so the
    cycles compared were run within a few milliseconds of each other: the disk's flush latency
    on a shared machine drifts far more slowly than that.

    Args:
        floor: The reference every other contender is divided by.
        others: The other contenders.
        rounds: Number of rounds.
        every: Run a slow contender only every n-th round (``{"original": 10}``).
    """
    clients = [floor, *others]
    results = {client.name: CycleSamples() for client in clients}
    for client in clients:  # warm up: connect, prepare, fill caches
        for _ in range(20):
            _one_cycle(client, CycleSamples())
    for number in range(rounds):
        shift = number % len(clients)
        times: dict[str, float] = {}
        for client in clients[shift:] + clients[:shift]:
            if number % (every or {}).get(client.name, 1) == 0:
                times[client.name] = _one_cycle(client, results[client.name])
        for name, seconds in times.items():
            if name != floor.name:
                results[name].pair_ratios.append(seconds / times[floor.name])
    return results


# -- throughput against threads -------------------------------------------------------------


def run_throughput(
    make_client: Callable[[], Client], threads: int, seconds: float
) -> tuple[float, list[float]]:
    """Cycles from ``threads`` threads for ``seconds``; return (operations/s, cycle times).

    Each thread gets its own client from ``make_client`` (the floor: its own connection; the
    store: the one shared store) and works on its own runs.
    """
    clients = [make_client() for _ in range(threads)]
    barrier = threading.Barrier(threads + 1)
    done = threading.Event()
    counts = [0] * threads
    cycle_times: list[list[float]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []

    def work(index: int) -> None:
        samples = CycleSamples()
        try:
            barrier.wait()
            while not done.is_set():
                _one_cycle(clients[index], samples)
        except BaseException as exc:
            errors.append(exc)
        counts[index] = len(samples.cycles)
        cycle_times[index] = samples.cycles

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    barrier.wait()
    start = time.perf_counter()
    time.sleep(seconds)
    done.set()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - start
    for client in clients:
        client.close()
    if errors:
        raise errors[0]
    return len(OPS) * sum(counts) / elapsed, [t for times in cycle_times for t in times]


# -- latency against table size -------------------------------------------------------------


def run_uuid(index: int, rows: int) -> uuid.UUID:
    """The run id of loaded row ``index``: random-looking, but ascending for a fast load."""
    stride = (1 << 128) // rows
    jitter = (index * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) % stride
    return uuid.UUID(int=index * stride + jitter)


@dataclass
class SizeSamples:
    """deliver and get latencies (seconds) on a table of ``rows`` waiters."""

    rows: int
    deliver: list[float] = field(default_factory=list)
    get: list[float] = field(default_factory=list)
    #: The floor's hand-written UPDATE and SELECT on the same table, probed the same way.
    floor_deliver: list[float] = field(default_factory=list)
    floor_get: list[float] = field(default_factory=list)


def run_size_probes(
    stores: dict[int, PostgresSignalStore],
    floors: dict[int, Client],
    *,
    rounds: int,
    per_round: int,
    seed: int = 5,
) -> dict[int, SizeSamples]:
    """Deliver to and read pending loaded waiters, alternating between the tables each round.

    Every delivery goes to a different pending waiter (even row indexes are pending), picked at
    random across the whole table, so each one is a real index lookup and a real write. The
    floor probes each table the same way, in the same rounds, so what the server itself pays
    for a larger table (a deeper index, fewer cached pages) shows beside the store's figures.
    """
    rng = random.Random(seed)
    results = {rows: SizeSamples(rows) for rows in stores}
    used: dict[int, set[int]] = {rows: set() for rows in stores}
    clock = time.perf_counter

    def pending(rows: int) -> uuid.UUID:
        index = 2 * rng.randrange(rows // 2)
        while index in used[rows]:
            index = 2 * rng.randrange(rows // 2)
        used[rows].add(index)
        return run_uuid(index, rows)

    order = sorted(stores)
    for _ in range(rounds):
        for rows in order:
            store, floor, samples = stores[rows], floors[rows], results[rows]
            for _ in range(per_round):
                t0 = clock()
                result = store.deliver_signal(pending(rows), SIGNAL, PAYLOAD)
                t1 = clock()
                waiter = store.get_waiter(run_uuid(rng.randrange(rows), rows), STEP)
                t2 = clock()
                delivered = floor.deliver(pending(rows), SIGNAL, PAYLOAD)
                t3 = clock()
                row = floor.get(run_uuid(rng.randrange(rows), rows), STEP)
                t4 = clock()
                if not (result.delivered and delivered) or waiter is None or row is None:
                    raise RuntimeError(f"a loaded waiter of the {rows:,}-row table was missing")
                samples.deliver.append(t1 - t0)
                samples.get.append(t2 - t1)
                samples.floor_deliver.append(t3 - t2)
                samples.floor_get.append(t4 - t3)
        order.reverse()
    return results


# -- contention -----------------------------------------------------------------------------


@dataclass
class ContentionSamples:
    """Outcomes and latencies of ``threads`` simultaneous deliveries to one waiter."""

    threads: int
    rounds: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    #: Rounds that did not end with exactly one DELIVERED.
    bad_rounds: int = 0
    latencies: list[float] = field(default_factory=list)


def run_contention(
    register: Callable[[uuid.UUID], None],
    deliver: Callable[[uuid.UUID], DeliveryStatus],
    *,
    threads: int,
    rounds: int,
) -> ContentionSamples:
    """Register one waiter, then release ``threads`` deliveries to it at once; repeat."""
    samples = ContentionSamples(threads)
    barrier = threading.Barrier(threads)
    for _ in range(rounds):
        run_id = uuid.uuid4()
        register(run_id)
        statuses, latencies = _contention_round(barrier, run_id, deliver, threads)
        samples.rounds += 1
        counted = Counter(status.name for status in statuses)
        samples.outcomes.update(counted)
        if counted["DELIVERED"] != 1:
            samples.bad_rounds += 1
        samples.latencies.extend(latencies)
    return samples


def _contention_round(
    barrier: threading.Barrier,
    run_id: uuid.UUID,
    deliver: Callable[[uuid.UUID], DeliveryStatus],
    threads: int,
) -> tuple[list[DeliveryStatus], list[float]]:
    statuses: list[DeliveryStatus] = [DeliveryStatus.NOT_FOUND] * threads
    latencies = [0.0] * threads
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            barrier.wait()
            start = time.perf_counter()
            statuses[index] = deliver(run_id)
            latencies[index] = time.perf_counter() - start
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if errors:
        raise errors[0]
    return statuses, latencies


# -- statistics -----------------------------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` quantile (nearest rank) of ``values``."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no samples")
    rank = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[rank]
