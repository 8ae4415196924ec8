"""Turn the samples into ``docs/benchmarks.md`` and PNG plots (matplotlib, Agg backend)."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import psycopg

from bench.expiry import CONTENDERS as EXPIRY_CONTENDERS
from bench.expiry import Rate
from bench.wakeup import WARM_UP as WAKE_WARM_UP
from bench.workloads import OPS, ContentionSamples, CycleSamples, SizeSamples, percentile
from flowsignals.store import DEFAULT_POLL_INTERVAL, DEFAULT_RECHECK_INTERVAL

CYCLE_TARGET = 1.3
THROUGHPUT_TARGET = 0.8
SIZE_TARGET = 1.2
WAKE_TARGET_P99_MS = 10.0
#: The polling mode's ``poll_interval``: the store's default, what ``listen=False`` users get.
POLL_INTERVAL = DEFAULT_POLL_INTERVAL


@dataclass
class Machine:
    cpu: str
    cores: int
    os: str
    python: str
    postgres: str
    settings: dict[str, str]
    versions: dict[str, str]
    load_before: str
    load_after: str = ""
    #: The load average as each section started.
    load_by_section: dict[str, str] = field(default_factory=dict)


@dataclass
class Run:
    """Everything one ``python -m bench`` measured."""

    mode: str
    server: str
    machine: Machine
    cycles: dict[str, dict[str, CycleSamples]] = field(default_factory=dict)
    throughput: dict[str, dict[int, list[float]]] = field(default_factory=dict)
    load_seconds: dict[int, float] = field(default_factory=dict)
    sizes: dict[int, SizeSamples] = field(default_factory=dict)
    contention: dict[str, ContentionSamples] = field(default_factory=dict)
    wakeup: dict[str, list[float]] = field(default_factory=dict)
    #: The same waits timed from the deliver call's start (an upper bound).
    wakeup_from_call: dict[str, list[float]] = field(default_factory=dict)
    claim: Rate | None = None
    purge: Rate | None = None
    expiry_rows: int = 0
    seconds: float = 0.0


def load_average() -> str:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "unknown"
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


def _source_revision() -> str:
    """The commit the library was measured at, and whether flowsignals/ had local changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "flowsignals"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"commit {commit}" + (" with local changes in flowsignals/" if dirty else "")


def machine(url: str) -> Machine:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    with psycopg.connect(url, autocommit=True) as conn:

        def show(name: str) -> str:
            row = conn.execute(f"SHOW {name}").fetchone()
            return "unknown" if row is None else str(row[0])

        postgres = show("server_version")
        settings = {
            name: show(name)
            for name in ("fsync", "synchronous_commit", "shared_buffers", "max_connections")
        }
    versions = {}
    for dist in ("flowsignals", "psycopg", "psycopg-binary", "SQLAlchemy", "matplotlib"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    versions["psycopg implementation"] = psycopg.pq.__impl__
    versions["flowsignals source"] = _source_revision()
    return Machine(
        cpu=cpu,
        cores=os.cpu_count() or 0,
        os=f"{platform.system()} {platform.release()}",
        python=f"{platform.python_implementation()} {sys.version.split()[0]}",
        postgres=postgres,
        settings=settings,
        versions=versions,
        load_before=load_average(),
    )


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:,.0f} µs"


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.2f} ms"


def _met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def cycle_ratio(run: Run, key: str, name: str = "flowsignals") -> float:
    samples = run.cycles[key]
    return statistics.median(samples[name].cycles) / statistics.median(samples["floor"].cycles)


def throughput_ratios(run: Run) -> dict[int, float]:
    floor, ours = run.throughput["floor"], run.throughput["flowsignals"]
    return {n: statistics.median(ours[n]) / statistics.median(floor[n]) for n in floor}


def size_ratios(run: Run, *, floor: bool = False) -> tuple[float, float]:
    """p50 at the large table over p50 at the small one: (deliver, get), ours or the floor's."""
    small, large = (run.sizes[rows] for rows in sorted(run.sizes))
    deliver, get = ("floor_deliver", "floor_get") if floor else ("deliver", "get")
    return (
        statistics.median(getattr(large, deliver)) / statistics.median(getattr(small, deliver)),
        statistics.median(getattr(large, get)) / statistics.median(getattr(small, get)),
    )


def expiry_ratio(rate: Rate) -> float:
    return rate.per_second("flowsignals") / rate.per_second("floor")


def summary(run: Run) -> str:
    """A few lines for the terminal: the ratios the report claims."""
    lines = [
        f"cycle ratio (durable)        {cycle_ratio(run, 'durable'):.2f}x",
        f"cycle ratio (no commit wait) {cycle_ratio(run, 'no-flush'):.2f}x",
        "throughput ratios            "
        + ", ".join(f"{n}: {r:.2f}" for n, r in throughput_ratios(run).items()),
        "table size p50 ratios        deliver {:.2f}x, get {:.2f}x".format(*size_ratios(run))
        + " (floor: deliver {:.2f}x, get {:.2f}x)".format(*size_ratios(run, floor=True)),
    ]
    for name, c in run.contention.items():
        lines.append(f"contention {name:<17} {dict(c.outcomes)}; bad rounds {c.bad_rounds}")
    for name, values in run.wakeup.items():
        lines.append(
            f"wake-up {name:<18} p50 {percentile(values, 0.5) * 1e3:.2f} ms,"
            f" p99 {percentile(values, 0.99) * 1e3:.2f} ms ({len(values)} waits)"
        )
    if run.claim is not None and run.purge is not None:
        lines.append(
            f"claim_expired / floor        {expiry_ratio(run.claim):.2f}x rows/s;"
            f" purge / floor {expiry_ratio(run.purge):.2f}x rows/s"
        )
    return "\n".join(lines)


# -- plots ----------------------------------------------------------------------------------


def _plots(run: Run, img: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    colors = {"floor": "#555555", "exact-sql": "#1f77b4", "flowsignals": "#d62728"}

    for key in run.cycles:
        fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharey=True)
        for ax, op in zip(axes.flat, OPS, strict=True):
            for name, color in colors.items():
                values = sorted(run.cycles[key][name].ops[op])
                ax.plot(
                    [v * 1e6 for v in values],
                    [(i + 1) / len(values) for i in range(len(values))],
                    label=name,
                    color=color,
                )
            ax.set_xscale("log")
            ax.set_title(op)
            ax.set_xlabel("latency (µs, log scale)")
            ax.grid(True, alpha=0.3)
        axes[0][0].set_ylabel("fraction of calls")
        axes[1][0].set_ylabel("fraction of calls")
        axes[0][0].legend()
        fig.suptitle(f"Per-operation latency, single thread ({key} commits): CDF")
        fig.tight_layout()
        name = f"latency_{key}.png"
        fig.savefig(img / name, dpi=110)
        plt.close(fig)
        files[f"latency_{key}"] = name

    if run.throughput:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, by_threads in run.throughput.items():
            threads = sorted(by_threads)
            ax.plot(
                threads,
                [statistics.median(by_threads[n]) for n in threads],
                marker="o",
                label=name,
                color=colors.get(name),
            )
        ax.set_xscale("log", base=2)
        ax.set_xticks(threads, [str(n) for n in threads])
        ax.set_xlabel("threads")
        ax.set_ylabel("operations / s (median)")
        ax.set_title("Throughput of register-deliver-get-remove cycles")
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(img / "throughput.png", dpi=110)
        plt.close(fig)
        files["throughput"] = "throughput.png"

    if run.sizes:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        rows = sorted(run.sizes)
        width = 0.35
        for i, (label, pick) in enumerate((("deliver", "deliver"), ("get", "get"))):
            p50 = [statistics.median(getattr(run.sizes[r], pick)) * 1e6 for r in rows]
            ax.bar([x + i * width for x in range(len(rows))], p50, width, label=f"{label} p50")
        ax.set_xticks([x + width / 2 for x in range(len(rows))], [f"{r:,} waiters" for r in rows])
        ax.set_ylabel("latency p50 (µs)")
        ax.set_title("flowsignals latency against table size")
        ax.legend()
        ax.grid(True, axis="y", alpha=0.3)
        fig.tight_layout()
        fig.savefig(img / "table_size.png", dpi=110)
        plt.close(fig)
        files["table_size"] = "table_size.png"

    if run.contention:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, samples in run.contention.items():
            ax.hist(
                [v * 1e3 for v in samples.latencies],
                bins=40,
                alpha=0.6,
                label=name,
                color=colors.get(name, "#2ca02c"),
            )
        ax.set_xlabel("deliver latency (ms)")
        ax.set_ylabel("calls")
        ax.set_title("16 threads delivering one signal at once")
        ax.legend()
        fig.tight_layout()
        fig.savefig(img / "contention.png", dpi=110)
        plt.close(fig)
        files["contention"] = "contention.png"

    if run.wakeup:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, values in run.wakeup.items():
            ordered = sorted(v * 1e3 for v in values)
            ax.plot(ordered, [(i + 1) / len(ordered) for i in range(len(ordered))], label=name)
        ax.set_xscale("symlog")
        ax.set_xlabel("wake-up latency after the delivery's commit (ms)")
        ax.set_ylabel("fraction of waits")
        ax.set_title("wait_for_signal wake-up latency: CDF")
        ax.legend()
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        fig.savefig(img / "wakeup.png", dpi=110)
        plt.close(fig)
        files["wakeup"] = "wakeup.png"
    return files


# -- markdown -------------------------------------------------------------------------------


def _cycle_table(run: Run, key: str) -> list[str]:
    samples = run.cycles[key]
    floor = statistics.median(samples["floor"].cycles)
    lines = [
        "| contender | cycles | median cycle | ratio of medians to floor"
        " | same-round ratio p25 / p50 / p75 |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, s in samples.items():
        if len(s.pair_ratios) > 1:
            q = statistics.quantiles(s.pair_ratios, n=4)
            spread = f"{q[0]:.2f} / {q[1]:.2f} / {q[2]:.2f}"
        else:
            spread = "-"
        lines.append(
            f"| {name} | {len(s.cycles):,} | {_us(statistics.median(s.cycles))} "
            f"| **{statistics.median(s.cycles) / floor:.2f}x** | {spread} |"
        )
    return lines


def _ops_table(run: Run, key: str) -> list[str]:
    samples = run.cycles[key]
    names = [n for n in ("floor", "exact-sql", "flowsignals") if n in samples]
    head = " | ".join(f"{n} p50 | {n} p99" for n in names)
    lines = [
        f"| operation | {head} | flowsignals / floor (p50) |",
        "|---|" + "---:|" * (2 * len(names) + 1),
    ]
    for op in OPS:
        cells = []
        for name in names:
            values = samples[name].ops[op]
            cells += [_us(percentile(values, 0.5)), _us(percentile(values, 0.99))]
        ratio = percentile(samples["flowsignals"].ops[op], 0.5) / percentile(
            samples["floor"].ops[op], 0.5
        )
        lines.append(f"| {op} | " + " | ".join(cells) + f" | {ratio:.2f}x |")
    return lines


def write(run: Run, output: Path) -> Path:
    """Write ``benchmarks.md`` and the plots under ``output``; return the markdown's path."""
    files = _plots(run, output / "img")
    m = run.machine
    out: list[str] = [
        "# flowsignals benchmarks",
        "",
        "Every figure below comes from one run of `python -m bench"
        + ("" if run.mode == "default" else f" {run.mode}")
        + f"` ({run.seconds / 60:.1f} minutes), written by the benchmark itself. The contenders"
        " ran on the same server in the same run, interleaved block by block (A B C A B C ...,"
        " order rotated each round) so that load from elsewhere hits them alike. **Ratios are"
        " the claims**; absolute times only describe this machine.",
        "",
        "Contenders:",
        "",
        "- **floor**: raw psycopg 3, one autocommit connection per thread, every statement"
        " prepared, the minimal hand-written SQL (the upsert, a conditional `UPDATE ...`"
        " `RETURNING`, the primary-key `SELECT`, the `DELETE`). Its deliver cannot tell"
        " ALREADY_DELIVERED, EXPIRED and NOT_FOUND apart; ours must.",
        "- **flowsignals**: `PostgresSignalStore(url)` through its public API, built from a URL"
        " as a user builds it: its defaults, so its operations run on its own lean pool of"
        " autocommit connections (`flowsignals/pool.py`) with statements prepared.",
        "- **exact-sql**: the floor's set-up running flowsignals' own compiled SQL"
        " (`statements.for_schema(None)`): it separates what our SQL costs on the server from"
        " what our Python costs.",
        "- **original**: the original design's pattern: a new connection per call, delivery as"
        " an `UPDATE` of a row picked `FOR UPDATE SKIP LOCKED`, and a second `SELECT` when that"
        " updates nothing.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        f"| CPU | {m.cpu}, {m.cores} cores (shared with other workloads while this ran) |",
        f"| load average (1/5/15 min) | before: {m.load_before}; after: {m.load_after} |",
        *(
            f"| load average as *{title}* started | {load} |"
            for title, load in m.load_by_section.items()
        ),
        f"| OS | {m.os} |",
        f"| PostgreSQL | {m.postgres}, {run.server} |",
        "| server settings | " + ", ".join(f"`{k}={v}`" for k, v in m.settings.items()) + " |",
        f"| Python | {m.python} |",
        "| libraries | " + ", ".join(f"{k} {v}" for k, v in m.versions.items()) + " |",
        "",
        "## Summary",
        "",
        "| claim | target | measured | |",
        "|---|---|---:|---|",
    ]
    durable = cycle_ratio(run, "durable")
    out.append(
        f"| single-thread cycle, flowsignals / floor (durable commits) | ≤ {CYCLE_TARGET}x "
        f"| {durable:.2f}x | {_met(durable <= CYCLE_TARGET)} |"
    )
    nowait = cycle_ratio(run, "no-flush")
    out.append(
        f"| same, `synchronous_commit=off` (client CPU exposed) | ≤ {CYCLE_TARGET}x "
        f"| {nowait:.2f}x | {_met(nowait <= CYCLE_TARGET)} |"
    )
    ratios = throughput_ratios(run)
    worst = min(ratios.values())
    out.append(
        f"| throughput, flowsignals / floor, 1-16 threads (worst) | ≥ {THROUGHPUT_TARGET}x "
        f"| {worst:.2f}x | {_met(worst >= THROUGHPUT_TARGET)} |"
    )
    deliver_ratio, get_ratio = size_ratios(run)
    floor_deliver, floor_get = size_ratios(run, floor=True)
    small, large = sorted(run.sizes)
    out.append(
        f"| deliver p50, {large:,} / {small:,} waiters | ≤ {SIZE_TARGET}x "
        f"| {deliver_ratio:.2f}x (the floor's: {floor_deliver:.2f}x)"
        f" | {_met(deliver_ratio <= SIZE_TARGET)} |"
    )
    out.append(
        f"| get p50, {large:,} / {small:,} waiters | ≤ {SIZE_TARGET}x "
        f"| {get_ratio:.2f}x (the floor's: {floor_get:.2f}x) | {_met(get_ratio <= SIZE_TARGET)} |"
    )
    ours = run.contention["flowsignals"]
    out.append(
        f"| contention: rounds with exactly one DELIVERED | all {ours.rounds} "
        f"| {ours.rounds - ours.bad_rounds} | {_met(ours.bad_rounds == 0)} |"
    )
    listen = run.wakeup["LISTEN/NOTIFY"]
    polled = run.wakeup["polling"]
    p99 = percentile(listen, 0.99) * 1e3
    out += [
        f"| `wait_for_signal` wake-up p99, LISTEN/NOTIFY ({len(listen)} waits)"
        f" | ≤ {WAKE_TARGET_P99_MS:.0f} ms | {p99:.2f} ms | {_met(p99 <= WAKE_TARGET_P99_MS)} |",
        f"| same, p50 | none set | {percentile(listen, 0.5) * 1e3:.2f} ms | |",
        f"| wake-up p50 / p99, polling (`listen=False`, `poll_interval={POLL_INTERVAL:g}` s,"
        f" {len(polled)} waits) | none set (reported beside LISTEN)"
        f" | {percentile(polled, 0.5) * 1e3:.0f} / {percentile(polled, 0.99) * 1e3:.0f} ms | |",
    ]
    if run.claim is not None and run.purge is not None:
        for label, rate in (("claim_expired", run.claim), ("purge", run.purge)):
            out.append(
                f"| `{label}` rows/s, flowsignals / floor, {run.expiry_rows:,} rows"
                f" | none set (issue 5 asks for the ratio) | {expiry_ratio(rate):.2f}x | |"
            )

    for key, title, how in (
        (
            "durable",
            "durable commits",
            "The server as configured (`fsync=on`, `synchronous_commit=on`): every write waits"
            " for its WAL flush, as in production. On this machine's disk that flush dominates"
            " the write operations and its noise is large.",
        ),
        (
            "no-flush",
            "`synchronous_commit=off`",
            "The same, with `synchronous_commit=off` set per session for every contender (libpq"
            " `options`), so commits do not wait for the disk. The cycle is then bound by CPU on"
            " both sides of the socket, which exposes client-side overhead: the hard case.",
        ),
    ):
        if key not in run.cycles:
            continue
        s = run.cycles[key]
        out += [
            "",
            f"## Single-thread cycle, {title}",
            "",
            how
            + " One cycle is register, deliver, get, remove of a fresh waiter (one waiter per run)."
            f" {len(s['floor'].cycles):,} rounds; each round runs one cycle of every contender"
            " back to back, in an order rotated every round (the original only every tenth"
            " round: it is slow); each call timed with `time.perf_counter`. The claim is the"
            " ratio of medians over all cycles; the last column is the distribution of each"
            " cycle's ratio to the floor's cycle of the same round.",
            "",
            *_cycle_table(run, key),
            "",
            "Per operation (same samples):",
            "",
            *_ops_table(run, key),
            "",
            f"![per-operation latency CDF](img/{files[f'latency_{key}']})",
        ]

    out += [
        "",
        "## Throughput against threads",
        "",
        "Each thread runs cycles on its own runs for a fixed time; operations/s = 4 x cycles /"
        " elapsed. The floor and exact-sql get one connection per thread; flowsignals is one"
        f" shared store (`max_connections={max(run.throughput['floor'])}`). The three"
        " alternate at each thread count, in an order rotated every repeat"
        f" ({len(run.throughput['floor'][1])} repeats of each); medians of the repeats."
        " All run in one Python"
        " process, so all share the GIL, as a user's threads would.",
        "",
        "| threads | floor ops/s | exact-sql ops/s | flowsignals ops/s | exact-sql / floor"
        " | flowsignals / floor |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    tp = {
        name: {n: statistics.median(v) for n, v in by.items()}
        for name, by in run.throughput.items()
    }
    for n, ratio in ratios.items():
        out.append(
            f"| {n} | {tp['floor'][n]:,.0f} | {tp['exact-sql'][n]:,.0f} "
            f"| {tp['flowsignals'][n]:,.0f} | {tp['exact-sql'][n] / tp['floor'][n]:.2f}x "
            f"| **{ratio:.2f}x** |"
        )
    exact_worst = min(tp["exact-sql"][n] / tp["floor"][n] for n in ratios)
    if worst < THROUGHPUT_TARGET and exact_worst < THROUGHPUT_TARGET:
        out += [
            "",
            f"Where flowsignals falls short, exact-sql (the store's own SQL on the floor's"
            f" connections, no flowsignals Python at all) falls short too (worst"
            f" {exact_worst:.2f}x): that part of the gap is on the server, in what the SQL"
            " does beyond the floor's. The one thing the store's deliver and remove do that"
            " serializes across sessions is the `pg_notify` that wakes waits: PostgreSQL"
            " lets only one transaction that has sent a notification commit at a time (a lock"
            " on 'database 0', so instance-wide, taken in `PreCommit_Notify` and held until the"
            " commit is flushed),"
            " so with durable commits those transactions cannot share a WAL flush the way"
            " the floor's do.",
        ]
    out += ["", f"![throughput against threads](img/{files['throughput']})"]

    out += [
        "",
        "## Latency against table size",
        "",
        f"Two copies of the table in their own schemas, loaded with `COPY` ({small:,} and"
        f" {large:,} waiters: half pending, half holding a delivery; `VACUUM ANALYZE` after the"
        " load), probed alternately, round by round. Each probe delivers to a different pending"
        " waiter picked at random across the whole table, then reads a random waiter; the floor"
        " (its hand-written UPDATE and primary-key SELECT, on a raw connection) probes the same"
        " tables the same way in the same rounds: its growth is what the server itself pays for"
        " the larger table (a deeper index, fewer of its pages in `shared_buffers`).",
        "",
        "| waiters | load time | deliver p50 | deliver p99 | get p50 | get p99"
        " | floor deliver p50 | floor get p50 |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for rows in sorted(run.sizes):
        s2 = run.sizes[rows]
        out.append(
            f"| {rows:,} | {run.load_seconds.get(rows, 0):.1f} s "
            f"| {_us(percentile(s2.deliver, 0.5))} | {_us(percentile(s2.deliver, 0.99))} "
            f"| {_us(percentile(s2.get, 0.5))} | {_us(percentile(s2.get, 0.99))} "
            f"| {_us(percentile(s2.floor_deliver, 0.5))} | {_us(percentile(s2.floor_get, 0.5))} |"
        )
    floor_deliver_ratio, floor_get_ratio = size_ratios(run, floor=True)
    out += [
        "",
        f"p50 ratio, {large:,} / {small:,}: deliver **{deliver_ratio:.2f}x**,"
        f" get **{get_ratio:.2f}x**; the floor's own: deliver {floor_deliver_ratio:.2f}x,"
        f" get {floor_get_ratio:.2f}x. That every operation's plan uses an index is checked by"
        " `tests/integration/test_plans.py` (EXPLAIN on a table with fresh statistics), not"
        " by timing.",
        "",
        f"![latency against table size](img/{files['table_size']})",
        "",
        "## Contention: 16 threads, one waiter",
        "",
        "Each round registers one waiter, then 16 threads released by a barrier deliver to it"
        " at once; latency is timed from the barrier to the call's return.",
        "",
        "| contender | rounds | DELIVERED | ALREADY_DELIVERED | NOT_FOUND | EXPIRED"
        " | rounds without exactly one DELIVERED | p50 | p99 | max |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, c in run.contention.items():
        out.append(
            f"| {name} | {c.rounds} | {c.outcomes['DELIVERED']} "
            f"| {c.outcomes['ALREADY_DELIVERED']} | {c.outcomes['NOT_FOUND']} "
            f"| {c.outcomes['EXPIRED']} | {c.bad_rounds} | {_ms(percentile(c.latencies, 0.5))} "
            f"| {_ms(percentile(c.latencies, 0.99))} | {_ms(max(c.latencies))} |"
        )
    out += [
        "",
        "flowsignals' deliver waits on the row lock and reports the racing delivery's outcome;"
        " the original skips the locked row and classifies with a second statement, so a loser"
        " that reads before the winner commits is told NOT_FOUND.",
        "",
        f"![contention latency](img/{files['contention']})",
        "",
        "## wait_for_signal wake-up latency",
        "",
    ]
    out += [
        "A thread waits on a fresh waiter; the main thread then delivers to it (autocommit, so"
        " the commit is done when `deliver_signal` returns). Latency = the waiter's return"
        " minus that moment, both read with `time.perf_counter` in one process (a wait woken"
        " before the deliverer has read its reply comes out slightly negative). The two modes"
        " alternate wait by wait, each on a store of its own, after"
        f" {WAKE_WARM_UP} discarded warm-up waits each (the first starts the listener):",
        "",
        "- **LISTEN/NOTIFY**: `PostgresSignalStore(url)`, defaults (a dedicated LISTEN"
        f" connection; `recheck_interval={DEFAULT_RECHECK_INTERVAL:g}` s as a safety net). The"
        " delivery comes 5-20 ms into the wait, after its first read of the table. The wake-up"
        " is the NOTIFY sent at commit, the listener thread setting the waiter's event, and"
        " the waiter's one read of the table to fetch the payload.",
        f"- **polling**: `PostgresSignalStore(url, listen=False, poll_interval={POLL_INTERVAL:g})`"
        " (the default interval). The delivery comes at a uniformly random point of one poll"
        f" interval (5 to {5 + POLL_INTERVAL * 1e3:.0f} ms into the wait), so the figures are"
        " what a delivery at a random moment sees: about half an interval at the median.",
        "",
        "| mode | waits | p50 | p99 | max | waits returned before `deliver_signal` did"
        " | p50 / p99 from the deliver call's start (upper bound) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, values in run.wakeup.items():
        upper = run.wakeup_from_call[name]
        out.append(
            f"| {name} | {len(values)} | {_ms(percentile(values, 0.5))} "
            f"| {_ms(percentile(values, 0.99))} | {_ms(max(values))} "
            f"| {sum(v < 0 for v in values)} "
            f"| {_ms(percentile(upper, 0.5))} / {_ms(percentile(upper, 0.99))} |"
        )
    out += ["", f"![wake-up latency](img/{files['wakeup']})"]
    out += ["", "## claim_expired and purge", ""]
    if run.claim is not None and run.purge is not None:
        batch = run.claim.batch
        out += [
            f"Each contender gets its own copy of the table, loaded by the same `COPY` with the"
            f" same {run.expiry_rows:,} expired, undelivered waiters (all deadlines different,"
            " in an order unrelated to the primary key), `VACUUM ANALYZE`d, with autovacuum off"
            " on every copy so that no vacuum lands on one contender's batches only. Both then"
            f" work through their copy in interleaved batches of {batch:,} rows (order rotated"
            " every round) until a batch comes back empty: first every row is claimed, then (after"
            " an untimed `VACUUM ANALYZE` of both copies, as autovacuum would have run after"
            " that many updates) every claimed tombstone is purged (`older_than=0`). Within a"
            " phase nothing is vacuumed, so each purge batch's scan also walks over the rows"
            " earlier batches deleted, alike for both. Rows/s = all rows over all"
            " the time spent, the last partial and empty batches included.",
            "",
            "- **floor**: raw psycopg, autocommit, prepared statements, the same work written by"
            " hand: `UPDATE ... SET claimed_at = now() WHERE (run_id, step_key) IN (SELECT ..."
            " WHERE expires_at <= now() AND delivered_at IS NULL AND claimed_at IS NULL ORDER BY"
            f" expires_at LIMIT {batch} FOR UPDATE SKIP LOCKED) RETURNING` the waiter's columns,"
            " and `DELETE ... WHERE (run_id, step_key) IN (SELECT ... WHERE delivered_at <"
            f" now() - $1 OR claimed_at < now() - $1 LIMIT {batch} FOR UPDATE SKIP LOCKED)`."
            " It sends no notifications (nothing waits on it).",
            f"- **flowsignals**: `store.claim_expired(limit={batch})` (which also notifies each"
            " claimed waiter's waits, and returns `SignalWaiter` objects sorted by deadline) and"
            f" `store.purge(older_than=timedelta(0), limit={batch}, batch_size={batch})`,"
            " one statement per call.",
            "",
            "| operation | floor rows/s | flowsignals rows/s | flowsignals / floor"
            " | median full batch: floor | flowsignals | ratio |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for label, rate in (("claim_expired", run.claim), ("purge", run.purge)):
            f, o = (rate.per_second(n) for n in EXPIRY_CONTENDERS)
            fb, ob = (rate.median_batch(n) for n in EXPIRY_CONTENDERS)
            out.append(
                f"| {label} | {f:,.0f} | {o:,.0f} | **{o / f:.2f}x** | {_ms(fb)} | {_ms(ob)} "
                f"| {ob / fb:.2f}x |"
            )
    else:
        out.append("Not measured in this run.")
    out += [
        "",
        "## Reproduce",
        "",
        "```",
        "pip install -e '.[test,bench]'",
        "python -m bench            # a few minutes; --quick: under two; --big: 10M waiters",
        "python -m bench --database-url postgresql://user@host/db   # on your own server",
        "```",
        "",
    ]
    path = output / "benchmarks.md"
    path.write_text("\n".join(out), encoding="utf-8")
    return path
