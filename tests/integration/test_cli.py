"""The ``flowsignals`` command line, run as a separate process against a real server.

Each command prints exactly one JSON object and exits with a code naming the outcome; bad input
exits 2 with a one-line message naming the argument, before any connection is attempted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import make_url

from flowsignals.embedded import EmbeddedPostgres

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
    env = {name: value for name, value in os.environ.items() if name != URL_ENV}
    if env_url is not None:
        env[URL_ENV] = env_url
    completed = subprocess.run(
        [*program, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert "Traceback" not in completed.stderr, completed.stderr
    return Result(completed)


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
        "3  deliver: NOT_FOUND; get, remove: no such waiter",
        "4  deliver: ALREADY_DELIVERED",
        "5  deliver: EXPIRED",
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
    }

    payload = '{"by": "amira",  "ok": true}'
    delivered = flowsignals(*url, "deliver", run, "approved", payload)
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
        },
    )

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
        (["frobnicate"], "argument COMMAND: invalid choice: 'frobnicate'"),
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
        {"status": "upgraded", "schema": None, "from_revision": None, "to_revision": "fs_0002"},
    )
    second = flowsignals("migrate", "--revision", "head", env_url=empty_database_url)
    assert (second.code, second.json) == (
        0,
        {
            "status": "up_to_date",
            "schema": None,
            "from_revision": "fs_0002",
            "to_revision": "fs_0002",
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
    assert "fs_0002" in result.stdout


def test_migrate_check_exits_1_until_the_database_is_at_head(empty_database_url: str) -> None:
    before = flowsignals("migrate", "--check", env_url=empty_database_url)
    assert (before.code, before.json) == (
        1,
        {
            "status": "behind",
            "schema": None,
            "current_revision": None,
            "head_revision": "fs_0002",
        },
    )
    assert before.stderr == (
        "flowsignals: the schema is at no revision (not installed), not at fs_0002: "
        "run 'flowsignals migrate'\n"
    )
    assert flowsignals("migrate", env_url=empty_database_url).code == 0
    after = flowsignals("migrate", "--check", env_url=empty_database_url)
    assert (after.code, after.json["status"], after.stderr) == (0, "at_head", "")
    # --check never migrates: another schema there is still not installed.
    other = flowsignals("--schema", "other", "migrate", "--check", env_url=empty_database_url)
    assert (other.code, other.json["current_revision"]) == (1, None)
