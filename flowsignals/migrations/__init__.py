"""flowsignals' Alembic migrations, runnable from code without an ``alembic.ini``.

The revisions live in this package (``flowsignals:migrations``) on their own lineage, labelled
``flowsignals``, with their own version table ``flowsignals_alembic_version``: they never touch
a host application's ``alembic_version``.

Every function takes a URL string, an :class:`~sqlalchemy.engine.Engine` or a
:class:`~sqlalchemy.engine.Connection`:

* URL or Engine: the migration runs in one transaction of its own, committed at the end.
* Connection: the migration runs inside that connection's transaction (beginning one if none
  is open) and we never commit: the caller commits or rolls back.

Concurrent upgrades are serialised by a PostgreSQL advisory lock, so starting several
processes that all upgrade at boot is safe.

The revisions read their target schema from the migration context option
``flowsignals_schema`` and nothing else from our ``env.py``, so a host application can list
``flowsignals:migrations/versions`` in its own ``version_locations`` and run them there.
"""

from __future__ import annotations

import io
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import TextIO

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import URL, NullPool, create_engine
from sqlalchemy.engine import Connection, Engine

from flowsignals.errors import HostLineageError, SchemaNotAtHeadError
from flowsignals.tables import VERSION_TABLE
from flowsignals.urls import to_sqlalchemy_url
from flowsignals.validation import check_name

__all__ = [
    "BRANCH",
    "HEAD",
    "HOST_VERSION_TABLE",
    "SCRIPT_LOCATION",
    "alembic_config",
    "check",
    "current",
    "downgrade",
    "sql",
    "upgrade",
    "verify",
]

#: Where Alembic finds env.py and the revisions, as a package resource.
SCRIPT_LOCATION = "flowsignals:migrations"

#: The newest revision this version of flowsignals ships.
HEAD = "fs_0005"

#: The branch label of flowsignals' revisions (``flowsignals@head`` in a host's Alembic).
BRANCH = "flowsignals"

#: Alembic's default version table, where a host that includes our revisions records them.
HOST_VERSION_TABLE = "alembic_version"

Database = str | URL | Engine | Connection


def alembic_config(
    *,
    connection: Connection | None = None,
    url: str | URL | None = None,
    schema: str | None = None,
    stdout: TextIO | None = None,
) -> Config:
    """Build an Alembic :class:`~alembic.config.Config` for flowsignals' migrations.

    Use it to call other :mod:`alembic.command` functions (``history``, offline
    ``upgrade(..., sql=True)``); :func:`upgrade` and friends build it for you.

    Args:
        connection: A connection to run on (see the module docstring for transactions).
        url: A database URL, used when ``connection`` is ``None``.
        schema: Schema holding the table and version table; ``None`` means the search path.
        stdout: Where Alembic writes offline SQL and messages (``history``...); default
            ``sys.stdout``.
    """
    config = Config() if stdout is None else Config(stdout=stdout, output_buffer=stdout)
    config.set_main_option("script_location", SCRIPT_LOCATION)
    config.attributes["connection"] = connection
    config.attributes["url"] = url
    config.attributes["schema"] = schema
    return config


def upgrade(database: Database, schema: str | None = None, revision: str = "head") -> None:
    """Upgrade flowsignals' schema to ``revision`` (default: the newest).

    Args:
        database: URL, Engine or Connection (see the module docstring for transactions).
        schema: Schema to install into; created if missing. ``None`` means the search path.
        revision: Target revision id, ``"head"`` or ``"flowsignals@head"``.

    Raises:
        InvalidArgumentError: ``schema`` is empty or otherwise not a valid name.
        HostLineageError: The host application's Alembic already records our revisions here.
        alembic.util.CommandError: ``revision`` is unknown.
        sqlalchemy.exc.DBAPIError: The database refused a statement.
    """
    schema = _check_schema(schema)
    with _connection(database) as connection:
        _refuse_host_lineage(connection, schema)
        command.upgrade(alembic_config(connection=connection, schema=schema), revision)


def downgrade(database: Database, schema: str | None = None, *, revision: str) -> None:
    """Downgrade flowsignals' schema to ``revision``; ``"base"`` removes all its objects.

    Only flowsignals' own objects are dropped; its (then empty) version table and the schema
    are left in place.

    Args:
        database: URL, Engine or Connection (see the module docstring for transactions).
        schema: Schema flowsignals was installed into.
        revision: Target revision id, or ``"base"``.

    Raises:
        alembic.util.CommandError: ``revision`` is unknown.
        sqlalchemy.exc.DBAPIError: The database refused a statement.
    """
    schema = _check_schema(schema)
    with _connection(database) as connection:
        _refuse_host_lineage(connection, schema)
        command.downgrade(alembic_config(connection=connection, schema=schema), revision)


def current(database: Database, schema: str | None = None) -> str | None:
    """Return the revision the database is at, or ``None`` if flowsignals is not installed.

    Reads only; with a Connection it runs in the caller's transaction.
    """
    schema = _check_schema(schema)
    with _connection(database) as connection:
        context = MigrationContext.configure(
            connection,
            opts={"version_table": VERSION_TABLE, "version_table_schema": schema},
        )
        return context.get_current_revision()


def check(database: Database, schema: str | None = None) -> tuple[str | None, str]:
    """Return ``(current, head)``: the revision the database is at, and the one we need.

    ``current`` is read from ``flowsignals_alembic_version`` in ``schema`` (standalone lineage);
    where that table is absent, from the host application's ``alembic_version`` on the
    search_path (our revisions included in the host's Alembic), ignoring the host's own rows.
    It is ``None`` when flowsignals is not installed. Reads only.

    Args:
        database: URL, Engine or Connection (see the module docstring for transactions).
        schema: Schema flowsignals was installed into; ``None`` means the search path.

    Raises:
        sqlalchemy.exc.DBAPIError: The database refused a statement.
    """
    schema = _check_schema(schema)
    with _connection(database) as connection:
        return _installed_revision(connection, schema), HEAD


def verify(database: Database, schema: str | None = None) -> None:
    """Raise unless the database is at flowsignals' head revision (see :func:`check`).

    Raises:
        SchemaNotAtHeadError: The database is at another revision, or flowsignals is not
            installed; the message names both revisions and the command that fixes it.
        sqlalchemy.exc.DBAPIError: The database refused a statement.
    """
    current_revision, head = check(database, schema)
    if current_revision != head:
        where = "" if schema is None else f" in schema {schema!r}"
        found = "not installed" if current_revision is None else f"at {current_revision!r}"
        option = "" if schema is None else f" --schema {shlex.quote(schema)}"
        raise SchemaNotAtHeadError(
            f"flowsignals' schema{where} is {found}, but this version of flowsignals needs "
            f"revision {head!r}: run `flowsignals migrate{option}` (or "
            f"flowsignals.migrations.upgrade(url, schema={schema!r})), or `alembic upgrade "
            f"{BRANCH}@head` where the host's Alembic includes our revisions"
        )


def sql(schema: str | None = None, revision: str = "head", *, start: str | None = None) -> str:
    """Return the SQL that upgrades to ``revision``, for a DBA to review and run; no server.

    Args:
        schema: Schema to install into; ``None`` means the search path.
        revision: Target revision id or ``"head"``.
        start: Revision the database is at; ``None`` means an empty database.

    Raises:
        InvalidArgumentError: ``schema`` is empty or otherwise not a valid name.
        alembic.util.CommandError: A revision is unknown.
    """
    schema = _check_schema(schema)
    output = io.StringIO()
    config = alembic_config(schema=schema, stdout=output)
    command.upgrade(config, revision if start is None else f"{start}:{revision}", sql=True)
    return output.getvalue()


def _check_schema(schema: str | None) -> str | None:
    # The same rule as the store's: an empty name would silently mean the search_path.
    return None if schema is None else check_name("schema", schema)


def _refuse_host_lineage(connection: Connection, schema: str | None) -> None:
    """Refuse to run our own lineage where a host's Alembic already records our revisions."""
    ours = MigrationContext.configure(
        connection, opts={"version_table": VERSION_TABLE, "version_table_schema": schema}
    ).get_current_heads()
    if ours:
        return
    installed = _installed_revision(connection, schema)
    if installed is not None:
        raise HostLineageError(
            f"flowsignals' revision {installed!r} is recorded in the host application's "
            f"{HOST_VERSION_TABLE} table: this database's flowsignals schema is migrated by the "
            "host's Alembic. Run `alembic upgrade flowsignals@head` (or `heads`) there instead."
        )


def _installed_revision(connection: Connection, schema: str | None) -> str | None:
    ours = MigrationContext.configure(
        connection, opts={"version_table": VERSION_TABLE, "version_table_schema": schema}
    ).get_current_heads()
    if not ours:
        host = MigrationContext.configure(
            connection, opts={"version_table": HOST_VERSION_TABLE}
        ).get_current_heads()
        ours = tuple(revision for revision in host if revision in _our_revisions())
    # One lineage, so at most one of our revisions is current.
    return ours[0] if ours else None


@lru_cache(maxsize=1)
def _our_revisions() -> frozenset[str]:
    script = ScriptDirectory.from_config(alembic_config())
    return frozenset(revision.revision for revision in script.walk_revisions())


@contextmanager
def _connection(database: Database) -> Iterator[Connection]:
    if isinstance(database, Connection):
        if not database.in_transaction():
            # Alembic commits a transaction it began itself; one begun here stays the caller's.
            database.begin()
        yield database
        return
    if isinstance(database, Engine):
        with database.begin() as connection:
            yield connection
        return
    url = to_sqlalchemy_url(database) if isinstance(database, str) else database
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            yield connection
    finally:
        engine.dispose()
