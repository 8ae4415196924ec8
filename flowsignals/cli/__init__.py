"""The ``flowsignals`` command line: signals, waits, deadlines, inspection, migrations, a demo.

``register``, ``deliver``, ``get``, ``remove`` and ``claim-expired`` are each one transaction;
``wait`` reads the table until the waiter is delivered (each read its own transaction, woken by
LISTEN/NOTIFY); ``purge`` deletes in batches, each its own transaction; ``ls`` reads in one
transaction, so every state it shows is judged at one instant of the server's clock. The signal
commands print one JSON object on stdout; ``ls`` and ``stats`` print a readable table unless
given ``--json``. Times are ISO 8601 in UTC, as the database server recorded them.
Errors go to stderr as one line, never as a traceback.

Exit codes:

* 0: success (registered, DELIVERED, found, removed, migrated; wait: the signal arrived;
  claim-expired, purge, ls, stats done; demo invariants all PASS)
* 1: unexpected error (database unreachable, schema not migrated...); ``migrate --check``: not
  at the newest revision; ``demo``: an invariant FAILed
* 2: usage error or invalid argument (the message names the argument), or no database URL
* 3: ``deliver``: NOT_FOUND; ``get``/``remove``/``wait``: no such waiter
* 4: ``deliver``: ALREADY_DELIVERED
* 5: ``deliver``: EXPIRED; ``wait``: the deadline passed undelivered, or the waiter was claimed
* 6: ``wait``: the timeout passed with the waiter still pending
* 130: interrupted (Ctrl-C)

Durations (``--timeout``, ``--poll-interval``, ``--older-than``, ``--expires-in``) are seconds
(``30``, ``0.5``) or a number with a unit: ``30s``, ``5m`` (minutes), ``2h``, ``7d``.

The database URL comes from ``--database-url`` or else the ``FLOWSIGNALS_DATABASE_URL``
environment variable; ``postgresql://``, ``postgres://`` and ``postgresql+psycopg://`` are
accepted, including the unix socket forms.

The package, one concept a module: :mod:`.dispatch` (``main``: parse, run, turn failures into
exit codes), :mod:`.parser` (the argparse tree and its help), :mod:`.arguments` (argument
types), :mod:`.signals` (the per-waiter commands), :mod:`.admin` (the commands over the whole
table and its schema), :mod:`.database` (URL and store), :mod:`.output` (JSON and tables on
stdout), :mod:`.diagnostics` (stderr), :mod:`.exit_codes`.
"""

from __future__ import annotations

from flowsignals.cli.arguments import parse_duration
from flowsignals.cli.database import DATABASE_URL_ENV
from flowsignals.cli.dispatch import main
from flowsignals.cli.exit_codes import (
    EXIT_ALREADY_DELIVERED,
    EXIT_ERROR,
    EXIT_EXPIRED,
    EXIT_INTERRUPTED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_USAGE,
)

__all__ = [
    "DATABASE_URL_ENV",
    "EXIT_ALREADY_DELIVERED",
    "EXIT_ERROR",
    "EXIT_EXPIRED",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_TIMEOUT",
    "EXIT_USAGE",
    "main",
    "parse_duration",
]
