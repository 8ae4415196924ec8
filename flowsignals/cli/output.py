"""What the commands print on stdout: one JSON object, or a readable table."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from typing import Any, TextIO

from flowsignals.results import SignalWaiter

#: Widest a name is shown in the ``ls`` table; longer ones end with an ellipsis.
_NAME_COLUMN_WIDTH = 24


def waiter_to_json(waiter: SignalWaiter) -> dict[str, Any]:
    """Return a waiter as a JSON-ready dict; times are ISO 8601 in UTC.

    ``payload_json`` is the stored JSON text exactly as delivered (a string, not re-parsed).
    """
    return {
        "run_id": str(waiter.run_id),
        "step_key": waiter.step_key,
        "signal_name": waiter.signal_name,
        "created_at": iso(waiter.created_at),
        "expires_at": iso(waiter.expires_at),
        "delivered_at": iso(waiter.delivered_at),
        "payload_json": waiter.payload_json,
        "claimed_at": iso(waiter.claimed_at),
        "idempotency_key": waiter.idempotency_key,
    }


def iso(value: datetime | None) -> str | None:
    """``value`` as ISO 8601 in UTC; ``None`` stays ``None`` (JSON null)."""
    return None if value is None else value.astimezone(timezone.utc).isoformat()


def print_json(document: dict[str, Any], stream: TextIO | None = None) -> None:
    """Print ``document`` as one line of JSON (on stdout unless ``stream`` is given)."""
    print(json.dumps(document), file=stream or sys.stdout, flush=True)


def print_text(lines: Iterable[str]) -> None:
    """Print ``lines`` on stdout; characters it cannot encode are shown as escapes."""
    if isinstance(sys.stdout, io.TextIOWrapper):
        # A terminal or pipe that cannot encode a name (or the ellipsis) shows an escape.
        sys.stdout.reconfigure(errors="backslashreplace")
    for line in lines:
        print(line)
    sys.stdout.flush()


def waiter_table(waiters: Sequence[SignalWaiter], now: datetime) -> list[str]:
    """The lines of the ``ls`` table, each waiter's state judged at ``now``."""
    if not waiters:
        return ["no waiters"]
    header = ("RUN_ID", "STEP_KEY", "SIGNAL", "STATE", "CREATED", "EXPIRES", "DELIVERED")
    rows = [header] + [
        (
            str(w.run_id),
            _cell(w.step_key),
            _cell(w.signal_name),
            w.state_at(now).value,
            _compact_time(w.created_at),
            _compact_time(w.expires_at),
            _compact_time(w.delivered_at),
        )
        for w in waiters
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def _cell(name: str) -> str:
    # Names may hold tabs, newlines or other control characters: escaped, they cannot break
    # the table's lines or columns.
    shown = "".join(
        char if char.isprintable() else char.encode("unicode_escape").decode("ascii")
        for char in name
    )
    if len(shown) > _NAME_COLUMN_WIDTH:
        return shown[: _NAME_COLUMN_WIDTH - 1] + "\u2026"
    return shown


def _compact_time(value: datetime | None) -> str:
    if value is None:
        return "-"
    utc = value.astimezone(timezone.utc).replace(tzinfo=None)
    return utc.isoformat(timespec="seconds") + "Z"
