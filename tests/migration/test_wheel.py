"""The built wheel carries the migrations: installed into a fresh virtual environment, with no
checkout in sight, it migrates an empty database from code, through the Alembic CLI and with
``flowsignals migrate``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import NullPool, create_engine, inspect, text

from flowsignals.tables import TABLE_NAME, VERSION_TABLE
from flowsignals.urls import to_sqlalchemy_url

REPO_ROOT = Path(__file__).resolve().parents[2]

#: Left out of the copy the wheel is built from: a stale build/lib would leak into the wheel.
_NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis"
)

MINIMAL_INI = """\
[alembic]
script_location = flowsignals:migrations
"""


def _run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    # No FLOWSIGNALS_* or PYTHONPATH from the test run: only what the venv itself provides.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOWSIGNALS_", "PYTHON"))}
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"{args}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("source") / "flowsignals"
    shutil.copytree(REPO_ROOT, source, ignore=_NOT_SOURCES)
    out = tmp_path_factory.mktemp("wheel")
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", out, source, cwd=out)
    (built,) = out.glob("flowsignals-*.whl")
    return built


@pytest.fixture(scope="session")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel (and its dependencies, from pip's cache or the index)."""
    root = tmp_path_factory.mktemp("venv")
    _run(sys.executable, "-m", "venv", root, cwd=root)
    _run(root / "bin" / "python", "-m", "pip", "install", "-q", f"{wheel}[binary]", cwd=root)
    return root


@pytest.fixture
def elsewhere(tmp_path: Path) -> Iterator[Path]:
    """An empty working directory: no alembic.ini, no flowsignals/ beside it."""
    yield tmp_path


def test_the_wheel_contains_the_migrations(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert sorted(n for n in names if n.startswith("flowsignals/migrations/")) == [
        "flowsignals/migrations/__init__.py",
        "flowsignals/migrations/env.py",
        "flowsignals/migrations/environment.py",
        "flowsignals/migrations/script.py.mako",
        "flowsignals/migrations/versions/0001_create_waiters.py",
        "flowsignals/migrations/versions/0002_claims_and_retention.py",
        "flowsignals/migrations/versions/0003_names_compare_bytewise.py",
        "flowsignals/migrations/versions/0004_notify_watched_waiters.py",
        "flowsignals/migrations/versions/0005_idempotent_deliveries.py",
    ]
    assert "flowsignals/py.typed" in names
    assert not [n for n in names if n.startswith(("alembic/", "tests/"))]


def _assert_migrated(url: str) -> None:
    engine = create_engine(to_sqlalchemy_url(url), poolclass=NullPool)
    try:
        assert set(inspect(engine).get_table_names()) == {TABLE_NAME, VERSION_TABLE}
        with engine.connect() as conn:
            rows = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}"))
            assert [tuple(r) for r in rows] == [("fs_0005",)]
    finally:
        engine.dispose()


def test_installed_wheel_migrates_from_code(
    venv: Path, elsewhere: Path, empty_database_url: str
) -> None:
    script = (
        "import sys, flowsignals\n"
        "from flowsignals import migrations\n"
        "migrations.upgrade(sys.argv[1])\n"
        "print(flowsignals.__file__)\n"
        "print(migrations.check(sys.argv[1]))\n"
    )
    result = _run(venv / "bin" / "python", "-c", script, empty_database_url, cwd=elsewhere)

    location, check = result.stdout.splitlines()
    assert Path(location).is_relative_to(venv), location
    assert check == "('fs_0005', 'fs_0005')"
    _assert_migrated(empty_database_url)


def test_installed_wheel_migrates_with_the_alembic_cli(
    venv: Path, elsewhere: Path, empty_database_url: str
) -> None:
    (elsewhere / "alembic.ini").write_text(MINIMAL_INI)

    alembic = venv / "bin" / "alembic"
    _run(alembic, "-x", f"url={empty_database_url}", "upgrade", "head", cwd=elsewhere)

    _assert_migrated(empty_database_url)


def test_installed_wheel_migrates_with_flowsignals_migrate(
    venv: Path, elsewhere: Path, empty_database_url: str
) -> None:
    command = venv / "bin" / "flowsignals"
    result = _run(command, "--database-url", empty_database_url, "migrate", cwd=elsewhere)

    assert json.loads(result.stdout) == {
        "status": "upgraded",
        "schema": None,
        "from_revision": None,
        "to_revision": "fs_0005",
    }
    _assert_migrated(empty_database_url)
    check = _run(command, "--database-url", empty_database_url, "migrate", "--check", cwd=elsewhere)
    assert json.loads(check.stdout)["status"] == "at_head"
