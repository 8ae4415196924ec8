"""A real pgbouncer on loopback, in transaction pooling mode, in front of the test server."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from sqlalchemy import make_url

from flowsignals.urls import to_sqlalchemy_url

#: Where Debian's package puts it; PATH is searched first.
_DEBIAN_PATH = "/usr/sbin/pgbouncer"
_START_SECONDS = 15


def find_pgbouncer() -> str | None:
    """The pgbouncer executable, or None when it is not installed."""
    found = shutil.which("pgbouncer")
    if found:
        return found
    return _DEBIAN_PATH if os.access(_DEBIAN_PATH, os.X_OK) else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PgBouncer:
    """pgbouncer in transaction pooling mode; :meth:`url` routes a database through it.

    Settings a store behind it needs, and this one uses: ``pool_mode = transaction`` with
    ``PostgresSignalStore(url, prepared_statements=False)`` (pgbouncer 1.18 has no support for
    protocol-level prepared statements). pgbouncer refuses to run as root, so as root it runs as
    ``postgres`` (or ``nobody``).
    """

    def __init__(self, executable: str, server_url: str, *, pool_size: int = 4) -> None:
        server = make_url(to_sqlalchemy_url(server_url))
        self._user = server.username or "postgres"
        self.port = _free_port()
        self._dir = Path(tempfile.mkdtemp(prefix="flowsignals-pgbouncer-"))
        login = f" user={self._user}" + (f" password={server.password}" if server.password else "")
        (self._dir / "userlist.txt").write_text(f'"{self._user}" ""\n', encoding="utf-8")
        config = self._dir / "pgbouncer.ini"
        config.write_text(
            "\n".join(
                [
                    "[databases]",
                    f"* = host={server.host or '127.0.0.1'} port={server.port or 5432}{login}",
                    "[pgbouncer]",
                    "listen_addr = 127.0.0.1",
                    f"listen_port = {self.port}",
                    "unix_socket_dir =",
                    "auth_type = trust",
                    f"auth_file = {self._dir / 'userlist.txt'}",
                    "pool_mode = transaction",
                    f"default_pool_size = {pool_size}",
                    "max_client_conn = 500",
                    f"logfile = {self._dir / 'pgbouncer.log'}",
                    f"pidfile = {self._dir / 'pgbouncer.pid'}",
                    "",
                ]
            ),
            encoding="utf-8",
        )
        run_as: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            run_as = _unprivileged_user()
            os.chown(self._dir, run_as.pw_uid, run_as.pw_gid)
            for path in self._dir.iterdir():
                os.chown(path, run_as.pw_uid, run_as.pw_gid)
        self._process = subprocess.Popen(
            [executable, str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            user=None if run_as is None else run_as.pw_uid,
            group=None if run_as is None else run_as.pw_gid,
            extra_groups=None if run_as is None else [],
        )
        self._wait_for_port()

    def url(self, database_url: str) -> str:
        """``database_url`` with host and port replaced by pgbouncer's."""
        url = make_url(to_sqlalchemy_url(database_url)).set(
            drivername="postgresql", host="127.0.0.1", port=self.port, query={}
        )
        return url.render_as_string(hide_password=False)

    def log(self) -> str:
        path = self._dir / "pgbouncer.log"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    def stop(self) -> None:
        self._process.terminate()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(10)
        shutil.rmtree(self._dir, ignore_errors=True)

    def _wait_for_port(self) -> None:
        deadline = time.monotonic() + _START_SECONDS
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"pgbouncer exited with {self._process.returncode}:\n{self.log()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"pgbouncer did not listen within {_START_SECONDS}s:\n{self.log()}")


def _unprivileged_user() -> pwd.struct_passwd:
    for name in ("postgres", "flowsignals_pg", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("no unprivileged account to run pgbouncer as")
