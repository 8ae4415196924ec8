"""Integration fixtures: every test gets its own database, cloned from a migrated template.

Migrating once and cloning with ``CREATE DATABASE ... TEMPLATE`` is much faster than running
the migrations per test, and no test can see another's rows.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import Engine, create_engine

from flowsignals import InMemorySignalStore, PostgresSignalStore, SignalStore, migrations
from flowsignals.urls import to_sqlalchemy_url

if TYPE_CHECKING:
    from tests.conftest import Databases


#: A schema name that needs quoting: a quote, a space, a ';', and a '%s' that psycopg's pyformat
#: placeholders must not take for a parameter.
QUOTED_SCHEMA = 'Tenant "A" %s; x'


def _template(databases: Databases, schema: str | None) -> Iterator[str]:
    # Unique per run, so two runs against one external server do not collide.
    name = databases.create("fs_template")
    try:
        migrations.upgrade(databases.url(name), schema=schema)
        databases.execute(f'ALTER DATABASE "{name}" WITH IS_TEMPLATE true ALLOW_CONNECTIONS false')
        yield name
    finally:
        databases.drop(name)


@pytest.fixture(scope="session")
def template_database(databases: Databases) -> Iterator[str]:
    """Name of a database migrated to head, used only as a template (no connections allowed)."""
    yield from _template(databases, None)


@pytest.fixture(scope="session")
def quoted_schema_template_database(databases: Databases) -> Iterator[str]:
    """Like :func:`template_database`, migrated into :data:`QUOTED_SCHEMA` instead."""
    yield from _template(databases, QUOTED_SCHEMA)


@pytest.fixture
def database_url(databases: Databases, template_database: str) -> Iterator[str]:
    """URL of a fresh database at the head revision, dropped after the test."""
    name = databases.create("fs_test", template=template_database)
    try:
        yield databases.url(name)
    finally:
        databases.drop(name)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """SQLAlchemy engine (psycopg 3) on :func:`database_url`, disposed after the test."""
    engine = create_engine(to_sqlalchemy_url(database_url))
    yield engine
    engine.dispose()


@pytest.fixture
def pg_store(database_url: str) -> Iterator[PostgresSignalStore]:
    """A PostgresSignalStore built from the test database's URL, as a user builds one."""
    with PostgresSignalStore(database_url) as store:
        yield store


@pytest.fixture(params=["memory", "postgres", "postgres-quoted-schema"])
def store(request: pytest.FixtureRequest) -> Iterator[SignalStore]:
    """Each store the contract holds for: the model, and PostgreSQL (plain and quoted schema).

    A module that needs another set (polling waits, a payload limit) defines its own.
    """
    if request.param == "memory":
        yield InMemorySignalStore()
    elif request.param == "postgres":
        yield request.getfixturevalue("pg_store")
    else:
        yield request.getfixturevalue("quoted_schema_pg_store")


@pytest.fixture
def run() -> uuid.UUID:
    """A fresh run id."""
    return uuid.uuid4()


@pytest.fixture
def quoted_schema_pg_store(
    databases: Databases, quoted_schema_template_database: str
) -> Iterator[PostgresSignalStore]:
    """A PostgresSignalStore on a fresh database whose table is in :data:`QUOTED_SCHEMA`.

    The search_path does not include that schema, so only the store's quoting finds the table.
    """
    name = databases.create("fs_test", template=quoted_schema_template_database)
    try:
        with PostgresSignalStore(
            databases.url(name), schema=QUOTED_SCHEMA, verify_schema=True
        ) as store:
            yield store
    finally:
        databases.drop(name)
