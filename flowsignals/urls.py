"""Database URLs: accept what users paste, hand SQLAlchemy the psycopg 3 driver."""

from __future__ import annotations

from urllib.parse import unquote

from sqlalchemy import URL
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from flowsignals.errors import InvalidArgumentError

__all__ = ["to_sqlalchemy_url"]

#: Schemes meaning "PostgreSQL through psycopg 3"; other drivers take different query options.
_ACCEPTED_SCHEMES = frozenset({"postgresql", "postgres", "postgresql+psycopg"})


def to_sqlalchemy_url(url: str | URL) -> URL:
    """Turn a libpq or SQLAlchemy PostgreSQL URL into a SQLAlchemy URL using psycopg 3.

    Accepted: ``postgresql://``, ``postgres://`` and ``postgresql+psycopg://``, including the
    unix socket forms ``postgresql://user@/db?host=/run/postgresql`` and
    ``postgresql://user@%2Frun%2Fpostgresql/db``. Query options (``sslmode``, ``host``, ...)
    are passed through to libpq unchanged.

    Args:
        url: The URL to convert: a string, or a SQLAlchemy URL whose scheme is checked alike.

    Returns:
        The URL with driver name ``postgresql+psycopg``.

    Raises:
        InvalidArgumentError: ``url`` cannot be parsed, or names another database or driver.
    """
    if isinstance(url, URL):
        parsed = url
    else:
        try:
            parsed = make_url(url)
            # A port that is not a number is only noticed when it is read.
            parsed.port  # noqa: B018
        except ArgumentError as exc:
            raise InvalidArgumentError("url", f"must be a PostgreSQL URL, got {url!r}") from exc
        except ValueError as exc:
            # The text is not echoed: past the port it may hold a password.
            raise InvalidArgumentError("url", "must have a numeric port") from exc
    if parsed.drivername not in _ACCEPTED_SCHEMES:
        raise InvalidArgumentError(
            "url",
            "must use the postgresql://, postgres:// or postgresql+psycopg:// scheme, "
            f"got {parsed.drivername}://",
        )
    parsed = parsed.set(drivername="postgresql+psycopg")
    # libpq reads a percent-encoded host starting with '/' as a socket directory.
    if parsed.host is not None and parsed.host.startswith("%2"):
        parsed = parsed.set(host=unquote(parsed.host))
    return parsed
