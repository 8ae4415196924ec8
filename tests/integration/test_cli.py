"""The ``flowsignals`` command line, run as a separate process against a real server.

Each command prints exactly one JSON object (``ls`` and ``stats``: a table unless ``--json``)
and exits with a code naming the outcome; bad input exits 2 with a one-line message naming the
argument, before any connection is attempted.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, make_url, text

from flowsignals import PostgresSignalStore
from flowsignals.cli import parse_duration
from flowsignals.embedded import EmbeddedPostgres
from flowsignals.urls import to_sqlalchemy_url

URL_ENV = "FLOWSIGNALS_DATABASE_URL"
#: Nothing listens on port 1: a command that gets that far fails fast with "refused".
UNREACHABLE_URL = "postgresql://postgres@127.0.0.1:1/nowhere"


class Result:
    """A finished command: exit code, stdout parsed as one JSON object if it is one, stderr."""

    def __init__(self, completed: subprocess.CompletedProcess[str]) -> None:
        self.code = completed.returncode
        self.stdout = completed.stdout
        self.stderr = completed.stderr

    @property
    def json(self) -> dict[str, Any]:
        lines = self.stdout.splitlines()
        assert len(lines) == 1, self.stdout
        document: dict[str, Any] = json.loads(lines[0])
        return document


def flowsignals(
    *args: str,
    env_url: str | None = None,
    stdin: str | None = None,
    program: tuple[str, ...] = (sys.executable, "-m", "flowsignals"),
) -> Result:
    """Run the command with ``FLOWSIGNALS_DATABASE_URL`` set to ``env_url`` (unset if None)."""
    completed = subprocess.run(
        [*program, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=_environment(env_url),
        timeout=120,
        check=False,
    )
    assert "Traceback" not in completed.stderr, completed.stderr
    return Result(completed)


def start(*args: str) -> subprocess.Popen[str]:
    """Start the command without waiting for it (see :func:`finish`)."""
    return subprocess.Popen(
        [sys.executable, "-m", "flowsignals", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_environment(None),
    )


def finish(process: subprocess.Popen[str]) -> Result:
    stdout, stderr = process.communicate(timeout=120)
    completed = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    assert "Traceback" not in stderr, stderr
    return Result(completed)


def _environment(env_url: str | None) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name != URL_ENV}
    if env_url is not None:
        env[URL_ENV] = env_url
    return env


def await_backend(
    engine: Engine, process: subprocess.Popen[str], application_name: str, query: str = "%"
) -> None:
    """Return once a backend of ``application_name`` whose last query is like ``query`` is
    connected to the test database: the command has got that far."""
    deadline = time.monotonic() + 60
    with engine.connect() as conn:
        while time.monotonic() < deadline:
            assert process.poll() is None, finish(process).stderr
            found = conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND application_name = :name AND query LIKE :query"
                ),
                {"name": application_name, "query": query},
            ).scalar_one()
            conn.rollback()  # a new snapshot of pg_stat_activity on the next read
            if found:
                return
            time.sleep(0.02)
    pytest.fail(f"no {application_name!r} backend running {query!r}")


def compact(value: datetime | None) -> str:
    """A time as the ls table shows it."""
    if value is None:
        return "-"
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: object) -> datetime:
    assert isinstance(value, str)
    parsed = datetime.fromisoformat(value)
    assert parsed.utcoffset() == timezone.utc.utcoffset(None), value
    return parsed


def test_help_documents_every_exit_code() -> None:
    # The installed console script, not only ``python -m``.
    script = Path(sys.executable).with_name("flowsignals")
    result = flowsignals("--help", program=(str(script),))
    assert result.code == 0
    for line in (
        "0  success",
        "1  unexpected error",
        "2  usage error or invalid argument",
        "3  deliver: NOT_FOUND; get, remove, wait: no such waiter",
        "4  deliver: ALREADY_DELIVERED",
        "5  deliver: EXPIRED; wait: the deadline passed undelivered, or the waiter was claimed",
        "6  wait: the timeout passed with the waiter still pending",
    ):
        assert line in result.stdout
    assert "FLOWSIGNALS_DATABASE_URL" in result.stdout


def test_every_outcome_of_every_command(database_url: str) -> None:
    run = str(uuid.uuid4())
    url = ("--database-url", database_url)

    registered = flowsignals(*url, "register", run.upper(), "approve", "approved")
    assert (registered.code, registered.json) == (
        0,
        {
            "status": "registered",
            "run_id": run,
            "step_key": "approve",
            "signal_name": "approved",
            "expires_at": None,
        },
    )

    pending = flowsignals(*url, "get", run, "approve")
    assert pending.code == 0
    created_at = parse_time(pending.json["created_at"])
    assert pending.json == {
        "status": "found",
        "run_id": run,
        "step_key": "approve",
        "signal_name": "approved",
        "created_at": created_at.isoformat(),
        "expires_at": None,
        "delivered_at": None,
        "payload_json": None,
        "claimed_at": None,
        "idempotency_key": None,
    }

    payload = '{"by": "amira",  "ok": true}'
    delivered = flowsignals(*url, "deliver", run, "approved", payload, "--idempotency-key", "m-1")
    assert delivered.code == 0
    delivered_at = parse_time(delivered.json["delivered_at"])
    assert delivered.json == {
        "status": "delivered",
        "run_id": run,
        "signal_name": "approved",
        "step_key": "approve",
        "delivered_at": delivered_at.isoformat(),
    }

    found = flowsignals(*url, "get", run, "approve")
    assert (found.code, found.json) == (
        0,
        {
            **pending.json,
            "delivered_at": delivered_at.isoformat(),
            "payload_json": payload,
            "idempotency_key": "m-1",
        },
    )

    # A retry of the same delivery: the same outcome, exit 0, nothing written.
    repeat = flowsignals(*url, "deliver", run, "approved", "{}", "--idempotency-key", "m-1")
    assert (repeat.code, repeat.json) == (0, delivered.json)
    assert flowsignals(*url, "get", run, "approve").json == found.json

    again = flowsignals(*url, "deliver", run, "approved", '{"by": "chen"}')
    assert (again.code, again.json) == (4, {**delivered.json, "status": "already_delivered"})

    unknown_run = str(uuid.uuid4())
    missing = flowsignals(*url, "deliver", unknown_run, "approved", "{}")
    assert (missing.code, missing.json) == (
        3,
        {
            "status": "not_found",
            "run_id": unknown_run,
            "signal_name": "approved",
            "step_key": None,
            "delivered_at": None,
        },
    )

    removed = flowsignals(*url, "remove", run, "approve")
    assert (removed.code, removed.json) == (
        0,
        {"status": "removed", "run_id": run, "step_key": "approve"},
    )
    gone = {"status": "not_found", "run_id": run, "step_key": "approve"}
    removed_again = flowsignals(*url, "remove", run, "approve")
    assert (removed_again.code, removed_again.json) == (3, gone)
    got_nothing = flowsignals(*url, "get", run, "approve")
    assert (got_nothing.code, got_nothing.json) == (3, gone)
    for result in (registered, delivered, again, missing, removed, removed_again, got_nothing):
        assert result.stderr == ""


def test_deadlines_and_expired_delivery(database_url: str) -> None:
    run = str(uuid.uuid4())
    url = ("--database-url", database_url)

    past = flowsignals(
        *url, "register", run, "sign", "signed", "--expires-at", "2000-01-02T03:04:05Z"
    )
    assert past.code == 0
    assert past.json["expires_at"] == "2000-01-02T03:04:05+00:00"

    expired = flowsignals(*url, "deliver", run, "signed", "{}")
    assert (expired.code, expired.json) == (
        5,
        {
            "status": "expired",
            "run_id": run,
            "signal_name": "signed",
            "step_key": "sign",
            "delivered_at": None,
        },
    )
    stored = flowsignals(*url, "get", run, "sign")
    assert stored.json["expires_at"] == "2000-01-02T03:04:05+00:00"
    assert stored.json["payload_json"] is None

    before = datetime.now(timezone.utc)
    later = flowsignals(*url, "register", run, "later", "later", "--expires-in", "3600")
    expires_at = parse_time(later.json["expires_at"])
    assert later.code == 0
    assert 3590 < (expires_at - before).total_seconds() < 3660
    # With an offset other than UTC, the deadline is reported in UTC.
    offset = flowsignals(
        *url, "register", run, "other", "other", "--expires-at", "2030-01-01T12:00:00+02:00"
    )
    assert offset.json["expires_at"] == "2030-01-01T10:00:00+00:00"


def test_payload_from_stdin_is_stored_exactly(database_url: str) -> None:
    run = str(uuid.uuid4())
    url = ("--database-url", database_url)
    flowsignals(*url, "register", run, "review", "reviewed")
    payload = '{"comments": ["looks good", "ship it \\u2713"], "score": 9.5}\n'
    delivered = flowsignals(*url, "deliver", run, "reviewed", "-", stdin=payload)
    assert delivered.code == 0
    assert flowsignals(*url, "get", run, "review").json["payload_json"] == payload


def test_url_from_environment_in_every_accepted_form(
    database_url: str, pg_server: EmbeddedPostgres | None
) -> None:
    parsed = make_url(database_url)
    forms = [database_url, "postgresql+psycopg" + database_url[database_url.index(":") :]]
    if pg_server is not None:
        forms.append(
            f"postgresql://postgres@/{parsed.database}?host={pg_server.socket_dir}"
            f"&port={pg_server.port}"
        )
    for form in forms:
        run = str(uuid.uuid4())
        registered = flowsignals("register", run, "step", "go", env_url=form)
        assert registered.code == 0, (form, registered.stderr)
        found = flowsignals("get", run, "step", env_url=form)
        assert (found.code, found.json["run_id"]) == (0, run)
    # --database-url wins over the environment.
    run = str(uuid.uuid4())
    chosen = flowsignals(
        "--database-url", database_url, "register", run, "s", "go", env_url=UNREACHABLE_URL
    )
    assert chosen.code == 0, chosen.stderr


def test_missing_database_url_exits_2() -> None:
    result = flowsignals("get", str(uuid.uuid4()), "step")
    assert result.code == 2
    assert result.stdout == ""
    assert result.stderr == (
        "flowsignals: error: no database URL: pass --database-url or set FLOWSIGNALS_DATABASE_URL\n"
    )


RUN = "6f1b5c38-9a43-4d5e-8a61-0e3f2b7c9d10"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["register", "not-a-uuid", "s", "go"], "argument RUN: must be a UUID"),
        (["get", RUN, " padded"], "argument STEP: must not have leading or trailing"),
        (["register", RUN, "s", ""], "argument SIGNAL: must not be empty"),
        (["deliver", RUN, "go", "{bad"], "argument PAYLOAD_JSON: must be valid JSON"),
        (["deliver", RUN, "go", "NaN"], "argument PAYLOAD_JSON: must be valid JSON"),
        (
            ["register", RUN, "s", "go", "--expires-at", "2030-01-01T00:00:00"],
            "argument --expires-at: must include a UTC offset",
        ),
        (
            ["register", RUN, "s", "go", "--expires-at", "2030-01-01+00:00"],
            "argument --expires-at: must be an ISO 8601 date and time",
        ),
        (
            ["register", RUN, "s", "go", "--expires-at", "tomorrow"],
            "argument --expires-at: must be an ISO 8601 date and time",
        ),
        (
            ["register", RUN, "s", "go", "--expires-in", "-1"],
            "argument --expires-in: must be finite and not negative",
        ),
        (
            ["register", RUN, "s", "go", "--expires-in", "1", "--expires-at", "2030-01-01T00:00Z"],
            "argument --expires-at: not allowed with argument --expires-in",
        ),
        (["--schema", "", "get", RUN, "s"], "argument --schema: must not be empty"),
        (
            ["--database-url", "mysql://x@h/d", "get", RUN, "s"],
            "argument --database-url: must use the postgresql://",
        ),
        (["demo", "--runs", "0"], "argument --runs: must be at least 1"),
        (["demo", "--threads", "1"], "argument --threads: must be at least 2"),
        (["get", RUN], "the following arguments are required: STEP"),
        (["wait", RUN, "s"], "the following arguments are required: --timeout"),
        (["wait", RUN, "s", "--timeout", "soon"], "argument --timeout: must be a duration"),
        (["wait", RUN, "s", "--timeout=-1s"], "argument --timeout: must be finite and not"),
        (["wait", RUN, "s", "--timeout", "5 m"], "argument --timeout: must be a duration"),
        (["wait", "nope", "s", "--timeout", "1"], "argument RUN: must be a UUID"),
        (
            ["wait", RUN, "s", "--timeout", "1", "--poll-interval", "0"],
            "argument --poll-interval: must be more than 0",
        ),
        (["purge"], "the following arguments are required: --older-than"),
        (["purge", "--older-than", "7w"], "argument --older-than: must be a duration"),
        (["purge", "--older-than=-7d"], "argument --older-than: must be finite and not"),
        (["purge", "--older-than", "9e9d"], "argument --older-than: must be a duration"),
        (["purge", "--older-than", "99999999999d"], "argument --older-than: must be shorter"),
        (["purge", "--older-than", "7d", "--limit", "0"], "argument --limit: must be at least 1"),
        (
            ["purge", "--older-than", "7d", "--batch-size", "10001"],
            "argument --batch-size: must be at most 10000",
        ),
        (["claim-expired", "--limit", "x"], "argument --limit: must be an integer"),
        (["ls", "--state", "done"], "argument --state: invalid choice: 'done'"),
        (["ls", "--after", "garbage"], "argument --after: must be a token printed by"),
        (
            ["ls", "--after", f"2030-01-01T00:00:00/{RUN}/s"],
            "argument --after: must be a token printed by",
        ),
        (
            ["ls", "--after", f"2030-01-01T00:00:00+00:00/{RUN}/ s"],
            "argument --after: must be a token printed by",
        ),
        (["ls", "--limit", "10001"], "argument --limit: must be at most 10000"),
        (["ls", "--run", "nope"], "argument --run: must be a UUID"),
        (["stats", "--signal", " x"], "argument --signal: must not have leading or trailing"),
        (
            ["register", RUN, "s", "go", "--expires-in", "99999999d"],
            "argument --expires-in: must end before the year 9999",
        ),
        (["frobnicate"], "argument COMMAND: invalid choice: 'frobnicate'"),
        (
            ["wait", RUN, "s", "--timeout", "1", "--poll-interval", "999999d"],
            "argument --poll-interval: must be at most 9223372036 seconds",
        ),
        (
            ["--database-url", "postgresql://u:secret@localhost:abc/db", "get", RUN, "s"],
            "argument --database-url: must have a numeric port",
        ),
        (["migrate", "--sql", "--schema", " x"], "argument --schema: must not have leading"),
    ],
)
def test_bad_input_exits_2_naming_the_argument(args: list[str], message: str) -> None:
    # The URL is unreachable: a check that passed it would fail with exit 1 instead.
    result = flowsignals(*args, env_url=UNREACHABLE_URL)
    assert result.code == 2, result.stderr
    assert result.stdout == ""
    assert message in result.stderr
    assert result.stderr.splitlines()[-1].startswith(("flowsignals: error: ", "flowsignals "))


def test_unreachable_database_is_one_line_exit_1() -> None:
    result = flowsignals("get", RUN, "step", env_url=UNREACHABLE_URL)
    assert result.code == 1
    assert result.stdout == ""
    assert result.stderr.startswith("flowsignals: error: cannot use the database: ")
    assert result.stderr.count("\n") == 1


def test_version_is_the_installed_distributions() -> None:
    from importlib import metadata

    result = flowsignals("--version")
    assert (result.code, result.stdout) == (0, f"flowsignals {metadata.version('flowsignals')}\n")


def test_migrate_where_the_hosts_alembic_owns_our_schema_is_one_line_exit_1(
    empty_database_url: str,
) -> None:
    # The host's alembic_version records our revision: our own lineage must not run here.
    engine = create_engine(to_sqlalchemy_url(empty_database_url))
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)"))
        conn.execute(text("INSERT INTO alembic_version VALUES ('fs_0004')"))
    engine.dispose()
    result = flowsignals("migrate", env_url=empty_database_url)
    assert result.code == 1
    assert result.stderr.startswith(
        "flowsignals: error: flowsignals' revision 'fs_0004' is recorded in the host"
    )
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_a_purge_age_beyond_any_finish_time_purges_nothing(
    database_url: str, pg_store: PostgresSignalStore
) -> None:
    run = uuid.uuid4()
    pg_store.register_waiter(run, "a", "sig")
    assert pg_store.deliver_signal(run, "sig", "1").delivered
    result = flowsignals("purge", "--older-than", "9999999d", env_url=database_url)
    assert (result.code, result.json) == (0, {"purged": 0}), result.stderr
    assert pg_store.count_waiters().delivered == 1


def test_unmigrated_database_says_to_migrate(empty_database_url: str) -> None:
    result = flowsignals("get", RUN, "step", env_url=empty_database_url)
    assert result.code == 1
    assert result.stderr.startswith("flowsignals: error: flowsignals' table is missing")
    assert result.stderr.endswith("run 'flowsignals migrate' first\n")
    assert result.stderr.count("\n") == 1


def test_migrate(empty_database_url: str) -> None:
    first = flowsignals("migrate", env_url=empty_database_url)
    assert (first.code, first.json) == (
        0,
        {"status": "upgraded", "schema": None, "from_revision": None, "to_revision": "fs_0005"},
    )
    second = flowsignals("migrate", "--revision", "head", env_url=empty_database_url)
    assert (second.code, second.json) == (
        0,
        {
            "status": "up_to_date",
            "schema": None,
            "from_revision": "fs_0005",
            "to_revision": "fs_0005",
        },
    )

    tenant = flowsignals("--schema", "tenant_a", "migrate", env_url=empty_database_url)
    assert tenant.json["schema"] == "tenant_a"
    run = str(uuid.uuid4())
    in_schema = ("--schema", "tenant_a")
    assert flowsignals(*in_schema, "register", run, "s", "go", env_url=empty_database_url).code == 0
    assert flowsignals("get", run, "s", env_url=empty_database_url).code == 3
    assert flowsignals(*in_schema, "get", run, "s", env_url=empty_database_url).code == 0

    unknown = flowsignals("migrate", "--revision", "nope", env_url=empty_database_url)
    assert unknown.code == 2
    assert unknown.stderr.startswith("flowsignals: error: argument --revision: ")


def test_migrate_sql_needs_no_database() -> None:
    result = flowsignals("migrate", "--sql")
    assert result.code == 0, result.stderr
    assert "CREATE TABLE" in result.stdout
    assert "fs_0005" in result.stdout


def test_migrate_check_exits_1_until_the_database_is_at_head(empty_database_url: str) -> None:
    before = flowsignals("migrate", "--check", env_url=empty_database_url)
    assert (before.code, before.json) == (
        1,
        {
            "status": "behind",
            "schema": None,
            "current_revision": None,
            "head_revision": "fs_0005",
        },
    )
    assert before.stderr == (
        "flowsignals: the schema is at no revision (not installed), not at fs_0005: "
        "run 'flowsignals migrate'\n"
    )
    assert flowsignals("migrate", env_url=empty_database_url).code == 0
    after = flowsignals("migrate", "--check", env_url=empty_database_url)
    assert (after.code, after.json["status"], after.stderr) == (0, "at_head", "")
    # --check never migrates: another schema there is still not installed.
    other = flowsignals("--schema", "other", "migrate", "--check", env_url=empty_database_url)
    assert (other.code, other.json["current_revision"]) == (1, None)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0),
        ("30", 30),
        ("0.5", 0.5),
        (".25", 0.25),
        ("30s", 30),
        ("5m", 300),
        ("1.5h", 5400),
        ("2h", 7200),
        ("7d", 604800),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


def test_expires_in_takes_a_duration(database_url: str) -> None:
    before = datetime.now(timezone.utc)
    result = flowsignals(
        "--database-url", database_url, "register", str(uuid.uuid4()), "s", "go",
        "--expires-in", "2h",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    assert 7190 < (parse_time(result.json["expires_at"]) - before).total_seconds() < 7260


def test_wait_returns_a_delivery_made_while_it_waits(
    database_url: str, engine: Engine, pg_store: PostgresSignalStore
) -> None:
    run = str(uuid.uuid4())
    pg_store.register_waiter(run, "approve", "approved")
    # Exact text: odd spacing, non-ASCII, and longer than a NOTIFY payload may be.
    payload = '{"by": "amira",  "note": "' + "\u20ac" * 3000 + '", "pad": "' + "x" * 9000 + '"}'
    waiting = start("--database-url", database_url, "wait", run, "approve", "--timeout", "2m")
    # The wait is blocked on its LISTEN: the delivery comes after the wait started.
    await_backend(engine, waiting, "flowsignals-cli-listener", "LISTEN%")
    assert pg_store.deliver_signal(run, "approved", payload).delivered
    result = finish(waiting)
    waiter = pg_store.get_waiter(run, "approve")
    assert waiter is not None and waiter.delivered_at is not None
    assert (result.code, result.json, result.stderr) == (
        0,
        {
            "status": "delivered",
            "run_id": run,
            "step_key": "approve",
            "signal_name": "approved",
            "created_at": waiter.created_at.isoformat(),
            "expires_at": None,
            "delivered_at": waiter.delivered_at.isoformat(),
            "payload_json": payload,
            "claimed_at": None,
            "idempotency_key": None,
        },
        "",
    )


def test_wait_by_polling_sees_a_delivery_from_another_process(
    database_url: str, engine: Engine
) -> None:
    run = str(uuid.uuid4())
    url = ("--database-url", database_url)
    assert flowsignals(*url, "register", run, "review", "reviewed").code == 0
    waiting = start(*url, "wait", run, "review", "--timeout", "120s", "--poll-interval", "0.05")
    await_backend(engine, waiting, "flowsignals-cli")
    with engine.connect() as conn:
        listeners = conn.execute(
            text("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE '%listener'")
        ).scalar_one()
    assert listeners == 0
    assert flowsignals(*url, "deliver", run, "reviewed", "[1, 2]").code == 0
    result = finish(waiting)
    assert (result.code, result.json["status"], result.json["payload_json"]) == (
        0,
        "delivered",
        "[1, 2]",
    )


def test_every_outcome_of_wait(database_url: str, pg_store: PostgresSignalStore) -> None:
    run = str(uuid.uuid4())
    url = ("--database-url", database_url)
    pg_store.register_waiter(run, "done", "finished")
    pg_store.deliver_signal(run, "finished", '{"ok": true}')
    pg_store.register_waiter(run, "pending", "later")
    past = datetime(2000, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    pg_store.register_waiter(run, "expired", "too_late", past)
    pg_store.register_waiter(run, "claimed", "way_too_late", past - timedelta(days=1))
    assert [w.step_key for w in pg_store.claim_expired(limit=1)] == ["claimed"]

    # Already delivered: at once, even with no time to wait.
    done = flowsignals(*url, "wait", run, "done", "--timeout", "0")
    assert (done.code, done.json["status"], done.json["payload_json"]) == (
        0,
        "delivered",
        '{"ok": true}',
    )

    timed_out = flowsignals(*url, "wait", run, "pending", "--timeout", "0.2s")
    assert (timed_out.code, timed_out.json) == (
        6,
        {"status": "timeout", "run_id": run, "step_key": "pending", "timeout_seconds": 0.2},
    )
    assert timed_out.stderr == (
        f"flowsignals: waiter ({run}, 'pending') received no signal within 0.2 s\n"
    )

    unknown = flowsignals(*url, "wait", run, "nobody", "--timeout", "5")
    assert (unknown.code, unknown.json) == (
        3,
        {"status": "not_found", "run_id": run, "step_key": "nobody"},
    )
    assert unknown.stderr == f"flowsignals: no waiter ({run}, 'nobody')\n"

    expired = flowsignals(*url, "wait", run, "expired", "--timeout", "5")
    stored = pg_store.get_waiter(run, "expired")
    assert stored is not None
    assert (expired.code, expired.json) == (
        5,
        {
            "status": "expired",
            "run_id": run,
            "step_key": "expired",
            "signal_name": "too_late",
            "created_at": stored.created_at.isoformat(),
            "expires_at": "2000-01-02T03:04:05+00:00",
            "delivered_at": None,
            "payload_json": None,
            "claimed_at": None,
            "idempotency_key": None,
        },
    )
    assert expired.stderr == (
        f"flowsignals: waiter ({run}, 'expired') expired at its deadline"
        " 2000-01-02T03:04:05+00:00\n"
    )

    claimed = flowsignals(*url, "wait", run, "claimed", "--timeout", "5")
    tombstone = pg_store.get_waiter(run, "claimed")
    assert tombstone is not None and tombstone.claimed_at is not None
    assert (claimed.code, claimed.json["status"], claimed.json["claimed_at"]) == (
        5,
        "expired",
        tombstone.claimed_at.isoformat(),
    )


def test_wait_on_an_unreachable_database_is_an_error_not_a_timeout() -> None:
    result = flowsignals("wait", RUN, "step", "--timeout", "0.5", env_url=UNREACHABLE_URL)
    assert (result.code, result.stdout) == (1, "")
    lines = result.stderr.splitlines()
    assert lines[-1].startswith("flowsignals: error: cannot use the database: ")
    # The listener's failed attempts, said once rather than once per retry.
    assert all(line.startswith("flowsignals: warning: ") for line in lines[:-1])
    assert len(lines) <= 2


def test_claim_expired_claims_exactly_the_expired_once(
    database_url: str, pg_store: PostgresSignalStore
) -> None:
    run = str(uuid.uuid4())
    url = ("--database-url", database_url)
    for day, step in ((3, "third"), (1, "first"), (2, "second")):
        pg_store.register_waiter(run, step, "s", datetime(2000, 1, day, tzinfo=timezone.utc))
    pg_store.register_waiter(run, "future", "s", datetime(2100, 1, 1, tzinfo=timezone.utc))
    pg_store.register_waiter(run, "forever", "s")
    pg_store.register_waiter(run, "delivered", "d")
    pg_store.deliver_signal(run, "d", "{}")

    def claimed_steps(result: Result) -> list[str]:
        assert result.code == 0, result.stderr
        assert result.json["count"] == len(result.json["claimed"])
        return [waiter["step_key"] for waiter in result.json["claimed"]]

    first = flowsignals(*url, "claim-expired", "--limit", "1")
    assert claimed_steps(first) == ["first"]
    stored = pg_store.get_waiter(run, "first")
    assert stored is not None and stored.claimed_at is not None
    assert first.json == {
        "claimed": [
            {
                "run_id": run,
                "step_key": "first",
                "signal_name": "s",
                "created_at": stored.created_at.isoformat(),
                "expires_at": "2000-01-01T00:00:00+00:00",
                "delivered_at": None,
                "payload_json": None,
                "claimed_at": stored.claimed_at.isoformat(),
                "idempotency_key": None,
            }
        ],
        "count": 1,
    }
    assert claimed_steps(flowsignals(*url, "claim-expired")) == ["second", "third"]
    assert flowsignals(*url, "claim-expired").json == {"claimed": [], "count": 0}
    counts = pg_store.count_waiters(run_id=run)
    assert (counts.claimed, counts.pending, counts.delivered, counts.expired) == (3, 2, 1, 0)


def test_purge_counts(database_url: str, engine: Engine, pg_store: PostgresSignalStore) -> None:
    run = str(uuid.uuid4())
    url = ("--database-url", database_url)
    finished_days_ago = {"d8": 8, "d9": 9, "d6": 6, "c10": 10}
    for step in [*finished_days_ago, "pending", "expired"]:
        expires = datetime(2000, 1, 1, tzinfo=timezone.utc) if step in ("c10", "expired") else None
        pg_store.register_waiter(run, step, step, expires)
    for step in ("d8", "d9", "d6"):
        assert pg_store.deliver_signal(run, step, "{}").delivered
    pg_store.claim_expired(limit=1)  # c10: the earliest deadline, created first
    with engine.begin() as conn:
        for step, days in finished_days_ago.items():
            column = "claimed_at" if step.startswith("c") else "delivered_at"
            conn.execute(
                text(
                    f"UPDATE flow_signal_waiters SET {column} ="
                    " now() - make_interval(days => :days) WHERE run_id = :run AND step_key = :step"
                ),
                {"days": days, "run": run, "step": step},
            )

    def purged(*args: str) -> int:
        result = flowsignals(*url, "purge", *args)
        assert result.code == 0, result.stderr
        assert list(result.json) == ["purged"]
        count: int = result.json["purged"]
        return count

    assert purged("--older-than", "30d") == 0
    assert purged("--older-than", "7d", "--limit", "2", "--batch-size", "1") == 2
    assert purged("--older-than", "168h", "--batch-size", "1") == 1
    assert purged("--older-than", "7d") == 0
    assert purged("--older-than", "0") == 1  # d6
    remaining = {w.step_key for w in pg_store.list_waiters(run_id=run)}
    assert remaining == {"pending", "expired"}


def test_ls_pages_with_the_token_return_every_waiter_once_in_order(
    database_url: str, pg_store: PostgresSignalStore
) -> None:
    run = str(uuid.uuid4())
    url = ("--database-url", database_url)
    # Step keys with a space and a quote: the printed token must survive the shell.
    steps = [f"step {i}'s" for i in range(5)]
    for step in steps:
        pg_store.register_waiter(run, step, "go")
    pg_store.register_waiter(uuid.uuid4(), "other run", "go")

    first = flowsignals(*url, "ls", "--run", run, "--limit", "3", "--json")
    assert first.code == 0, first.stderr
    assert [w["step_key"] for w in first.json["waiters"]] == steps[:3]
    token = first.json["next"]
    second = flowsignals(*url, "ls", "--run", run, "--limit", "3", "--after", token, "--json")
    assert [w["step_key"] for w in second.json["waiters"]] == steps[3:]
    assert second.json["next"] is None
    # A page that is full but last has no next page.
    exact = flowsignals(*url, "ls", "--run", run, "--limit", "2", "--after", token, "--json")
    assert ([w["step_key"] for w in exact.json["waiters"]], exact.json["next"]) == (
        steps[3:],
        None,
    )

    # The table's last line is the option to paste for the next page.
    table = flowsignals(*url, "ls", "--run", run, "--limit", "3")
    assert table.code == 0
    *rows, more = table.stdout.splitlines()
    assert len(rows) == 4
    assert more.startswith("next page: --after ")
    assert shlex.split(more.removeprefix("next page: ")) == ["--after", token]
    rest = flowsignals(*url, "ls", "--run", run, "--limit", "3", *shlex.split(more[11:]))
    assert [line.split("  ")[1].strip() for line in rest.stdout.splitlines()[1:]] == steps[3:]


def test_ls_table_and_json(database_url: str, pg_store: PostgresSignalStore) -> None:
    url = ("--database-url", database_url)
    run_a, run_b = str(uuid.uuid4()), str(uuid.uuid4())
    long_step = "a-very-long-step-key-that-goes-on-and-on"
    pg_store.register_waiter(run_a, "approve", "approved")
    pg_store.deliver_signal(run_a, "approved", '{"ok": true}')
    deadline = datetime(2030, 1, 1, tzinfo=timezone.utc)
    pg_store.register_waiter(run_a, long_step, "tab\there", deadline)
    pg_store.register_waiter(
        run_b, "sign", "signed", datetime(2000, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    )
    approve, long, sign = pg_store.list_waiters()

    table = flowsignals(*url, "ls")
    assert (table.code, table.stderr) == (0, "")
    header = ["RUN_ID", "STEP_KEY", "SIGNAL", "STATE", "CREATED", "EXPIRES", "DELIVERED"]
    rows = [
        header,
        [run_a, "approve", "approved", "delivered", compact(approve.created_at), "-",
         compact(approve.delivered_at)],
        [run_a, "a-very-long-step-key-th\u2026", "tab\\there", "pending",
         compact(long.created_at), "2030-01-01T00:00:00Z", "-"],
        [run_b, "sign", "signed", "expired", compact(sign.created_at), "2000-01-02T03:04:05Z",
         "-"],
    ]  # fmt: skip
    widths = [36, 24, 9, 9, 20, 20, 20]
    expected = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    assert table.stdout.splitlines() == expected

    as_json = flowsignals(*url, "ls", "--state", "pending", "--json")
    assert (as_json.code, as_json.json) == (
        0,
        {
            "waiters": [
                {
                    "run_id": run_a,
                    "step_key": long_step,
                    "signal_name": "tab\there",
                    "created_at": long.created_at.isoformat(),
                    "expires_at": "2030-01-01T00:00:00+00:00",
                    "delivered_at": None,
                    "payload_json": None,
                    "claimed_at": None,
                    "idempotency_key": None,
                    "state": "pending",
                }
            ],
            "next": None,
        },
    )
    for state, steps in (
        ("delivered", ["approve"]),
        ("expired", ["sign"]),
        ("claimed", []),
    ):
        listed = flowsignals(*url, "ls", "--state", state, "--json")
        assert [w["step_key"] for w in listed.json["waiters"]] == steps, state
    by_signal = flowsignals(*url, "ls", "--signal", "signed", "--json")
    assert [w["step_key"] for w in by_signal.json["waiters"]] == ["sign"]
    nothing = flowsignals(*url, "ls", "--state", "claimed")
    assert (nothing.code, nothing.stdout) == (0, "no waiters\n")


def test_stats(database_url: str, pg_store: PostgresSignalStore) -> None:
    url = ("--database-url", database_url)
    run = str(uuid.uuid4())
    past = datetime(2000, 1, 1, tzinfo=timezone.utc)
    for i in range(12):
        pg_store.register_waiter(run, f"p{i}", "wait")
    pg_store.register_waiter(run, "d", "done")
    pg_store.deliver_signal(run, "done", "{}")
    pg_store.register_waiter(run, "e1", "late", past)
    pg_store.register_waiter(run, "e2", "late", past)
    pg_store.register_waiter(run, "c", "claimed", past - timedelta(days=1))
    pg_store.claim_expired(limit=1)
    pg_store.register_waiter(uuid.uuid4(), "elsewhere", "late")

    readable = flowsignals(*url, "stats", "--run", run)
    assert (readable.code, readable.stderr) == (0, "")
    assert readable.stdout.splitlines() == [
        "pending    12",
        "delivered   1",
        "expired     2",
        "claimed     1",
        "total      16",
    ]
    everything = flowsignals(*url, "stats", "--json")
    assert (everything.code, everything.json) == (
        0,
        {"pending": 13, "delivered": 1, "expired": 2, "claimed": 1, "total": 17},
    )
    late = flowsignals(*url, "stats", "--signal", "late", "--json")
    assert late.json == {"pending": 1, "delivered": 0, "expired": 2, "claimed": 0, "total": 3}
    both = flowsignals(*url, "stats", "--run", run, "--signal", "late", "--json")
    assert both.json == {"pending": 0, "delivered": 0, "expired": 2, "claimed": 0, "total": 2}
