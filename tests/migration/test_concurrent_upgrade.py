"""Several processes upgrading at boot at once: the advisory lock makes them take turns."""

from __future__ import annotations

import subprocess
import sys
from typing import TYPE_CHECKING

from sqlalchemy import NullPool, create_engine, text

from flowsignals import migrations
from flowsignals.tables import VERSION_TABLE
from flowsignals.urls import to_sqlalchemy_url

if TYPE_CHECKING:
    from tests.conftest import Databases

ROUNDS = 5
UPGRADERS = 4


#: One upgrader process: says it is ready, waits for "go" on stdin, then upgrades.
UPGRADER = """
import sys
from flowsignals import migrations
print("ready", flush=True)
sys.stdin.readline()
migrations.upgrade(sys.argv[1], schema="tenant")
"""


def _upgrade_concurrently(url: str) -> list[tuple[int, str]]:
    """Run UPGRADERS processes released at once; return (exit code, stderr) of failures.

    Processes, not threads: Alembic's ``context``/``op`` proxies are process-global, and
    several processes upgrading at boot is the case the lock exists for.
    """
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", UPGRADER, url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(UPGRADERS)
    ]
    failures: list[tuple[int, str]] = []
    try:
        for process in processes:
            assert process.stdout is not None
            assert process.stdout.readline() == "ready\n"
        # The barrier: all are connected-ready and blocked on stdin; release them together.
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        for process in processes:
            _, stderr = process.communicate(timeout=60)
            if process.returncode != 0:
                failures.append((process.returncode, stderr))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()
    return failures


def test_concurrent_upgrades_all_succeed_and_apply_once(databases: Databases) -> None:
    for _ in range(ROUNDS):
        name = databases.create("fs_concurrent")
        try:
            url = databases.url(name)

            assert _upgrade_concurrently(url) == []

            engine = create_engine(to_sqlalchemy_url(url), poolclass=NullPool)
            try:
                with engine.connect() as conn:
                    rows = conn.execute(text(f"SELECT version_num FROM tenant.{VERSION_TABLE}"))
                    assert [tuple(row) for row in rows] == [(migrations.HEAD,)]
            finally:
                engine.dispose()
        finally:
            databases.drop(name)
