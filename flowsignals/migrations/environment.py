"""What Alembic's ``env.py`` does for flowsignals, shared by the packaged and the repository env.

Where the database comes from, first match wins:

1. ``config.attributes["connection"]``: a caller's :class:`~sqlalchemy.engine.Connection`
   (Alembic cookbook, "Sharing a Connection"); used as is, never committed if it is already
   in a transaction.
2. ``config.attributes["url"]``, then ``-x url=...``, then ``FLOWSIGNALS_DATABASE_URL``:
   ``postgresql://``, ``postgres://`` or ``postgresql+psycopg://``, always driven by psycopg 3.

The target schema comes from ``config.attributes["schema"]`` or ``-x schema=NAME``; it is
created if missing and also holds the ``flowsignals_alembic_version`` table. The revisions read
it from the migration context option ``flowsignals_schema`` (:data:`SCHEMA_OPTION`), which a host
application's own ``env.py`` can pass to ``context.configure()`` too; without it they use the
search_path.

Offline mode (``--sql``) needs no server and no URL.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, MutableMapping
from logging.config import fileConfig
from typing import Any, Literal

from alembic import context
from alembic.util import CommandError
from sqlalchemy import URL, NullPool, create_engine, text
from sqlalchemy.engine import Connection
from sqlalchemy.schema import CreateSchema

from flowsignals.errors import InvalidArgumentError
from flowsignals.tables import TABLE_NAME, VERSION_TABLE, build_metadata
from flowsignals.urls import to_sqlalchemy_url
from flowsignals.validation import check_name

__all__ = ["DATABASE_URL_ENV", "MIGRATION_LOCK_KEY", "SCHEMA_OPTION", "run"]

#: Environment variable read when no connection or URL is given explicitly.
DATABASE_URL_ENV = "FLOWSIGNALS_DATABASE_URL"

#: ``pg_advisory_xact_lock`` key serialising concurrent upgrades ("flowsign" in ASCII).
MIGRATION_LOCK_KEY = 0x666C6F777369676E

#: Migration context option naming the schema the revisions build in (absent: the search_path).
SCHEMA_OPTION = "flowsignals_schema"

NameType = Literal[
    "schema",
    "table",
    "column",
    "index",
    "unique_constraint",
    "foreign_key_constraint",
    "check_constraint",
]
ParentNames = MutableMapping[
    Literal["schema_name", "table_name", "schema_qualified_table_name"], "str | None"
]


def run() -> None:
    """Run the migrations Alembic asked for; called from ``env.py``.

    Raises:
        CommandError: Online mode, and no connection or URL was given anywhere, or the schema
            is not a name the store accepts (the alembic command line prints it as one line,
            without a traceback).
    """
    config = context.config
    if config.config_file_name is not None and config.file_config.has_section("loggers"):
        fileConfig(config.config_file_name, disable_existing_loggers=False)
    x_args = context.get_x_argument(as_dictionary=True)
    schema = config.attributes.get("schema") or x_args.get("schema") or None
    if schema is not None:
        try:
            check_name("schema", schema)
        except InvalidArgumentError as exc:
            # The store would refuse this name; never build a schema it cannot use.
            raise CommandError(f"-x {exc}") from exc
    config.attributes["schema"] = schema

    if context.is_offline_mode():
        url = _configured_url(config.attributes, x_args)
        offline_url = to_sqlalchemy_url(url) if url else URL.create("postgresql+psycopg")
        _configure(schema, url=offline_url)
        _run_locked(schema)
        return

    connection = config.attributes.get("connection")
    if connection is not None:
        _run_online(connection, schema)
        return
    url = _configured_url(config.attributes, x_args)
    if not url:
        raise CommandError(
            "no database given: pass a connection or url in config.attributes, "
            f"-x url=..., or set {DATABASE_URL_ENV}"
        )
    engine = create_engine(to_sqlalchemy_url(url), poolclass=NullPool)
    try:
        with engine.connect() as connection:
            _run_online(connection, schema)
    finally:
        engine.dispose()


def include_name_filter(
    schema: str | None,
) -> Callable[[str | None, NameType, ParentNames], bool]:
    """Return an autogenerate ``include_name`` hook that sees only flowsignals' objects.

    The host application's tables (and its own Alembic version table) share the database;
    autogenerate must never propose dropping them.
    """

    def include_name(name: str | None, type_: NameType, parent_names: ParentNames) -> bool:
        if type_ == "schema":
            return name == schema
        if type_ == "table":
            return name == TABLE_NAME
        return True

    return include_name


def _configured_url(attributes: Mapping[str, object], x_args: Mapping[str, str]) -> str | None:
    url = attributes.get("url")
    if isinstance(url, URL):
        return url.render_as_string(hide_password=False)
    if isinstance(url, str) and url:
        return url
    return x_args.get("url") or os.environ.get(DATABASE_URL_ENV) or None


def _configure(
    schema: str | None, *, connection: Connection | None = None, url: URL | None = None
) -> None:
    context.configure(
        connection=connection,
        url=url,
        # Offline SQL is read by people and psql: a pyformat dialect would double every '%'
        # in a quoted schema name.
        dialect_opts={"paramstyle": "named"} if connection is None else None,
        literal_binds=connection is None,
        target_metadata=build_metadata(schema),
        version_table=VERSION_TABLE,
        version_table_schema=schema,
        include_schemas=schema is not None,
        include_name=include_name_filter(schema),
        compare_type=True,
        **_revision_options(schema),
    )


def _revision_options(schema: str | None) -> dict[str, Any]:
    return {SCHEMA_OPTION: schema}


def _run_online(connection: Connection, schema: str | None) -> None:
    _configure(schema, connection=connection)
    _run_locked(schema)


def _run_locked(schema: str | None) -> None:
    with context.begin_transaction():
        # Transaction-scoped, so it is released on commit *and* on rollback and never leaks
        # into a caller's pooled connection. Taken before Alembic reads the version table, so
        # a second upgrader waits, then sees the first one's committed revision.
        context.execute(text(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})"))
        if schema is not None:
            context.execute(CreateSchema(schema, if_not_exists=True))
        context.run_migrations()
