"""Turn the samples into ``docs/benchmarks.md`` and PNG plots (matplotlib, Agg backend)."""

from __future__ import annotations

import os
import platform
import statistics
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import psycopg

from bench.expiry import Rate
from bench.workloads import OPS, ContentionSamples, CycleSamples, SizeSamples, percentile

CYCLE_TARGET = 1.3
THROUGHPUT_TARGET = 0.8
SIZE_TARGET = 1.2
WAKE_TARGET_P99_MS = 10.0


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
    claim: Rate | None = None
    purge: Rate | None = None
    expiry_rows: int = 0
    missing: list[str] = field(default_factory=list)
    seconds: float = 0.0


def load_average() -> str:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "unknown"
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


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
        postgres = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
        settings = {
            name: str(conn.execute(f"SHOW {name}").fetchone()[0])  # type: ignore[index]
            for name in ("fsync", "synchronous_commit", "shared_buffers", "max_connections")
        }
    versions = {}
    for dist in ("flowsignals", "psycopg", "psycopg-binary", "SQLAlchemy", "matplotlib"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    versions["psycopg implementation"] = psycopg.pq.__impl__
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


def size_ratios(run: Run) -> tuple[float, float]:
    small, large = (run.sizes[rows] for rows in sorted(run.sizes))
    return (
        statistics.median(large.deliver) / statistics.median(small.deliver),
        statistics.median(large.get) / statistics.median(small.get),
    )


def summary(run: Run) -> str:
    """A few lines for the terminal: the ratios the report claims."""
    lines = [
        f"cycle ratio (durable)        {cycle_ratio(run, 'durable'):.2f}x",
        f"cycle ratio (no commit wait) {cycle_ratio(run, 'no-flush'):.2f}x",
        "throughput ratios            "
        + ", ".join(f"{n}: {r:.2f}" for n, r in throughput_ratios(run).items()),
        "table size p50 ratios        deliver {:.2f}x, get {:.2f}x".format(*size_ratios(run)),
    ]
    for name, c in run.contention.items():
        lines.append(f"contention {name:<17} {dict(c.outcomes)}; bad rounds {c.bad_rounds}")
    if run.missing:
        lines.append("not measured (not in this build): " + ", ".join(run.missing))
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
        " as a user builds it (its own pooled engine, defaults).",
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
    small, large = sorted(run.sizes)
    out.append(
        f"| deliver p50, {large:,} / {small:,} waiters | ≤ {SIZE_TARGET}x "
        f"| {deliver_ratio:.2f}x | {_met(deliver_ratio <= SIZE_TARGET)} |"
    )
    out.append(
        f"| get p50, {large:,} / {small:,} waiters | ≤ {SIZE_TARGET}x "
        f"| {get_ratio:.2f}x | {_met(get_ratio <= SIZE_TARGET)} |"
    )
    ours = run.contention["flowsignals"]
    out.append(
        f"| contention: rounds with exactly one DELIVERED | all {ours.rounds} "
        f"| {ours.rounds - ours.bad_rounds} | {_met(ours.bad_rounds == 0)} |"
    )
    if "LISTEN/NOTIFY" in run.wakeup:
        p99 = percentile(run.wakeup["LISTEN/NOTIFY"], 0.99) * 1e3
        out.append(
            f"| wait_for_signal wake-up p99 | ≤ {WAKE_TARGET_P99_MS:.0f} ms | {p99:.2f} ms "
            f"| {_met(p99 <= WAKE_TARGET_P99_MS)} |"
        )
    if run.claim is not None and run.purge is not None:
        for label, rate in (("claim_expired", run.claim), ("purge", run.purge)):
            ratio = rate.per_second("flowsignals") / rate.per_second("floor")
            out.append(f"| {label} rows/s, flowsignals / floor | — | {ratio:.2f}x | |")
    for name in run.missing:
        out.append(f"| {name} | — | not measured: not in this build | |")

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
        " elapsed. The floor gets one connection per thread; flowsignals is one shared store"
        f" (`engine_options={{'pool_size': {max(run.throughput['floor'])}}}`). Floor and"
        " flowsignals alternate at each thread count; medians of the repeats. Both run in one"
        " Python process, so both share the GIL, as a user's threads would.",
        "",
        "| threads | floor ops/s | flowsignals ops/s | flowsignals / floor |",
        "|---:|---:|---:|---:|",
    ]
    for n, ratio in ratios.items():
        out.append(
            f"| {n} | {statistics.median(run.throughput['floor'][n]):,.0f} "
            f"| {statistics.median(run.throughput['flowsignals'][n]):,.0f} | **{ratio:.2f}x** |"
        )
    out += ["", f"![throughput against threads](img/{files['throughput']})"]

    out += [
        "",
        "## Latency against table size",
        "",
        f"Two copies of the table in their own schemas, loaded with `COPY` ({small:,} and"
        f" {large:,} waiters: half pending, half holding a delivery; `VACUUM ANALYZE` after the"
        " load), probed alternately, round by round. Each probe delivers to a different pending"
        " waiter picked at random across the whole table, then reads a random waiter.",
        "",
        "| waiters | load time | deliver p50 | deliver p99 | get p50 | get p99 |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for rows in sorted(run.sizes):
        s2 = run.sizes[rows]
        out.append(
            f"| {rows:,} | {run.load_seconds.get(rows, 0):.1f} s "
            f"| {_us(percentile(s2.deliver, 0.5))} | {_us(percentile(s2.deliver, 0.99))} "
            f"| {_us(percentile(s2.get, 0.5))} | {_us(percentile(s2.get, 0.99))} |"
        )
    out += [
        "",
        f"p50 ratio, {large:,} / {small:,}: deliver **{deliver_ratio:.2f}x**,"
        f" get **{get_ratio:.2f}x**. That every operation's plan uses an index is checked by"
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
    if run.wakeup:
        out += [
            "A thread waits on a fresh waiter; 5-20 ms later the main thread delivers (autocommit,"
            " so the commit is done when `deliver_signal` returns). Latency = the waiter's return"
            " minus that moment.",
            "",
            "| mode | waits | p50 | p99 | max |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, values in run.wakeup.items():
            out.append(
                f"| {name} | {len(values)} | {_ms(percentile(values, 0.5))} "
                f"| {_ms(percentile(values, 0.99))} | {_ms(max(values))} |"
            )
        out += ["", f"![wake-up latency](img/{files['wakeup']})"]
    else:
        out.append("Not measured: this build has no `wait_for_signal`.")
    out += ["", "## claim_expired and purge", ""]
    if run.claim is not None and run.purge is not None:
        out += [
            f"Two copies of the table, each loaded with {run.expiry_rows:,} expired, undelivered"
            " waiters. The floor (hand-written `UPDATE ... FOR UPDATE SKIP LOCKED` and batched"
            " `DELETE`, one prepared statement each) and the store work through their copy in"
            " interleaved batches of 1,000 rows until none are left.",
            "",
            "| operation | floor rows/s | flowsignals rows/s | flowsignals / floor |",
            "|---|---:|---:|---:|",
        ]
        for label, rate in (("claim_expired", run.claim), ("purge", run.purge)):
            f, o = rate.per_second("floor"), rate.per_second("flowsignals")
            out.append(f"| {label} | {f:,.0f} | {o:,.0f} | **{o / f:.2f}x** |")
    else:
        out.append("Not measured: this build has no `claim_expired` / `purge`.")
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
