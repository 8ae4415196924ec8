"""The demo's readable report: workload, outcomes, latency, throughput and invariants."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from flowsignals.demo.execution import Execution
from flowsignals.demo.plan import LATE_DEADLINE_SECONDS, STEPS, Plan, SendKind, WaiterKey
from flowsignals.demo.verification import Check
from flowsignals.results import DeliveryStatus


def render_report(
    plan: Plan, execution: Execution, checks: Sequence[Check], *, color: bool = False
) -> str:
    """Return the readable summary: workload, outcomes, latency, throughput and invariants."""
    lines: list[str] = []
    sends = plan.sends
    racing = _racing_overlap(execution)
    kinds = Counter(send.kind for send in sends)
    late_runs = len({w.run_id for w in plan.waiters if w.deadline_seconds is not None})
    low, high = LATE_DEADLINE_SECONDS
    lines += [
        "Workload",
        *_table(
            [],
            [
                ["waiters registered", str(len(plan.waiters)), f"{len(STEPS)} steps per run"],
                ["on-time signals", str(kinds[SendKind.ON_TIME] + len(plan.pairs)), ""],
                [
                    "  sent twice, racing",
                    str(len(plan.pairs)),
                    f"pairs released by a barrier; {racing} overlapped in time",
                ],
                [
                    "late signals",
                    str(kinds[SendKind.LATE]),
                    f"{late_runs} runs with a {low:g}-{high:g} s deadline",
                ],
                ["unknown-run signals", str(kinds[SendKind.UNKNOWN]), ""],
                ["re-registrations", str(len(plan.reregistered)), "while signals are sent"],
            ],
            indent=2,
        ),
        "",
    ]

    columns = list(SendKind)
    counts = Counter((o.send.kind, o.status) for o in execution.outcomes)
    statuses: list[DeliveryStatus | None] = [
        DeliveryStatus.DELIVERED,
        DeliveryStatus.ALREADY_DELIVERED,
        DeliveryStatus.EXPIRED,
        DeliveryStatus.NOT_FOUND,
    ]
    if any(o.result is None for o in execution.outcomes):
        statuses.append(None)
    outcome_rows = [
        [
            "  " + ("ERROR" if status is None else status.name),
            *(str(counts[(kind, status)]) for kind in columns),
            str(sum(counts[(kind, status)] for kind in columns)),
        ]
        for status in statuses
    ]
    lines += [
        *_table(["Delivery outcomes", *(k.value for k in columns), "total"], outcome_rows),
        "",
    ]

    latency_rows = []
    total_calls = 0
    for operation, samples in execution.latencies.items():
        total_calls += len(samples)
        latency_rows.append(
            [
                "  " + operation,
                str(len(samples)),
                _ms(_percentile(samples, 50)),
                _ms(_percentile(samples, 99)),
                _ms(max(samples, default=math.nan)),
            ]
        )
    lines += [*_table(["Latency", "calls", "p50 ms", "p99 ms", "max ms"], latency_rows), ""]

    seconds = execution.work_seconds
    rate = total_calls / seconds if seconds > 0 else math.nan
    lines += [
        f"Throughput: {total_calls:,} store calls in {seconds:.2f} s = {rate:,.0f} ops/s "
        f"(not counting {execution.waited_seconds:.2f} s spent waiting for deadlines)",
        "",
        "Invariants",
    ]
    check_rows = []
    for check in checks:
        verdict = "PASS" if check.passed else "FAIL"
        if color:
            verdict = f"\033[{32 if check.passed else 31}m{verdict}\033[0m"
        check_rows.append(["  " + verdict, check.description, f"{check.held}/{check.total}"])
    lines += _table([], check_rows)
    for check in checks:
        lines += [f"    FAIL {check.description}: {failure}" for failure in check.failures]
    failed = sum(not check.passed for check in checks)
    lines += [
        "",
        f"Result: all {len(checks)} invariants PASS"
        if not failed
        else f"Result: {failed} of {len(checks)} invariants FAIL",
    ]
    return "\n".join(lines)


def _racing_overlap(execution: Execution) -> int:
    """How many racing pairs had their two delivery calls in flight at the same time."""
    spans: dict[WaiterKey, list[tuple[float, float]]] = {}
    for outcome in execution.outcomes:
        if outcome.send.kind is SendKind.RACING:
            spans.setdefault(outcome.send.key, []).append(outcome.span)
    return sum(
        len(pair) == 2 and max(pair[0][0], pair[1][0]) < min(pair[0][1], pair[1][1])
        for pair in spans.values()
    )


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, indent: int = 0) -> list[str]:
    """Align columns: the first and text columns to the left, numeric columns to the right."""
    body = [list(row) for row in rows]
    everything = [list(headers), *body] if headers else body
    if not everything:
        return []
    count = len(everything[0])
    widths = [max(len(_visible(row[i])) for row in everything) for i in range(count)]
    right = [i > 0 and all(_is_number(row[i]) for row in body) for i in range(count)]
    lines = []
    for row in everything:
        cells = []
        for i, cell in enumerate(row):
            pad = " " * (widths[i] - len(_visible(cell)))
            cells.append(pad + cell if right[i] else cell + pad)
        lines.append(" " * indent + "  ".join(cells).rstrip())
    return lines


def _visible(cell: str) -> str:
    # Colour escapes take no room on screen.
    for code in ("\033[31m", "\033[32m", "\033[0m"):
        cell = cell.replace(code, "")
    return cell


def _is_number(cell: str) -> bool:
    return cell == "-" or cell.replace(".", "", 1).replace(",", "").replace("/", "", 1).isdigit()


def _percentile(samples: Sequence[float], percent: float) -> float:
    """Nearest-rank percentile; NaN for no samples."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    rank = max(1, math.ceil(percent / 100 * len(ordered)))
    return ordered[rank - 1]


def _ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1000:.2f}"
