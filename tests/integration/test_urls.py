"""to_sqlalchemy_url: every accepted form parses exactly, and the result really connects."""

from __future__ import annotations

import pytest
from sqlalchemy import NullPool, create_engine, make_url, text

from flowsignals.embedded import EmbeddedPostgres
from flowsignals.errors import InvalidArgumentError
from flowsignals.urls import to_sqlalchemy_url


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u:p@db.example:5433/app", "postgresql+psycopg://u:p@db.example:5433/app"),
        ("postgres://u@db.example/app", "postgresql+psycopg://u@db.example/app"),
        ("postgresql+psycopg://u@db.example/app", "postgresql+psycopg://u@db.example/app"),
        (
            "postgresql://u:p%40ss@db.example/app?sslmode=require",
            "postgresql+psycopg://u:p%40ss@db.example/app?sslmode=require",
        ),
        (
            "postgresql://u@/app?host=/run/postgresql",
            "postgresql+psycopg://u@/app?host=%2Frun%2Fpostgresql",
        ),
    ],
)
def test_accepted_forms_become_psycopg_urls(given: str, expected: str) -> None:
    assert to_sqlalchemy_url(given).render_as_string(hide_password=False) == expected


def test_password_is_decoded() -> None:
    assert to_sqlalchemy_url("postgresql://u:p%40ss@h/app").password == "p@ss"


def test_percent_encoded_socket_directory_becomes_a_host_path() -> None:
    url = to_sqlalchemy_url("postgresql://u@%2Frun%2Fpostgresql:5432/app")
    assert (url.host, url.port, url.database) == ("/run/postgresql", 5432, "app")


@pytest.mark.parametrize(
    ("given", "rule"),
    [
        (
            "mysql://u@h/app",
            "url: must use the postgresql://, postgres:// or postgresql+psycopg:// scheme, "
            "got mysql://",
        ),
        (
            "postgresql+psycopg2://u@h/app",
            "url: must use the postgresql://, postgres:// or postgresql+psycopg:// scheme, "
            "got postgresql+psycopg2://",
        ),
        ("not a url", "url: must be a PostgreSQL URL, got 'not a url'"),
    ],
)
def test_other_databases_and_drivers_are_refused(given: str, rule: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        to_sqlalchemy_url(given)
    assert str(caught.value) == rule
    assert caught.value.argument == "url"
    assert isinstance(caught.value, ValueError)


def test_every_form_connects(pg_server: EmbeddedPostgres | None, pg_url: str) -> None:
    if pg_server is None:
        pytest.skip("needs the embedded server's unix socket")
    tcp = make_url(pg_url)
    forms = [
        pg_url,
        pg_url.replace("postgresql://", "postgres://", 1),
        pg_url.replace("postgresql://", "postgresql+psycopg://", 1),
        pg_server.socket_url,
        f"postgresql://postgres@{str(pg_server.socket_dir).replace('/', '%2F')}"
        f":{pg_server.port}/postgres",
    ]
    for form in forms:
        engine = create_engine(to_sqlalchemy_url(form), poolclass=NullPool)
        try:
            with engine.connect() as conn:
                assert conn.execute(text("SELECT current_user")).scalar_one() == "postgres"
                assert conn.execute(text("SELECT current_database()")).scalar_one() == (
                    tcp.database
                )
        finally:
            engine.dispose()
