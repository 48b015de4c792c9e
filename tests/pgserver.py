"""A throwaway PostgreSQL server on loopback, for the tests of what the proxy keeps there.

``start()`` runs ``initdb`` into a fresh directory under ``/tmp`` and starts ``postgres`` on
``127.0.0.1`` and a free port, its unix socket inside that directory, fsync off.  Every
connection authenticates with a password (scram-sha-256, local and host alike; the
superuser's password is random, given to ``initdb`` in a file).  ``PgServer.stop()`` stops it
(``pg_ctl stop -m immediate``) and deletes the directory; ``create_database`` makes a fresh
database, one per test.

PostgreSQL refuses to run as root: under root, the server runs as the system user
``guardproxy-pg`` (created when missing), which owns the directory.

The binaries are looked up on ``PATH``, then in ``/usr/lib/postgresql/<version>/bin``
(where Debian's packages put them).  Without them the ``postgres`` fixture skips, unless
``CI`` is set: there it fails (``.ci/run`` installs them).

Nothing here waits for a time: readiness is ``pg_isready`` answering yes, within a
deadline that fails with the server's log.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

BINARIES = ("initdb", "pg_ctl", "postgres", "pg_isready", "createdb")
#: The system user the server runs as when the tests run as root.
RUN_AS = "guardproxy-pg"
SUPERUSER = "guardproxy"
DATABASE = "postgres"
#: Seconds ``postgres`` may take to accept connections before the start fails.
DEADLINE_S = 60.0
PORT_TRIES = 3  # a free port can be taken between choosing it and binding it
HBA = """\
# TYPE  DATABASE  USER  ADDRESS       METHOD
local   all       all                 scram-sha-256
host    all       all   127.0.0.1/32  scram-sha-256
host    all       all   ::1/128       scram-sha-256
"""
NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def find_bindir() -> Path | None:
    """The directory holding all of ``BINARIES``: ``initdb``'s on ``PATH`` (symlinks
    resolved), else the newest ``/usr/lib/postgresql/<version>/bin``; None without them."""
    candidates: list[Path] = []
    on_path = shutil.which("initdb")
    if on_path is not None:
        candidates.append(Path(on_path).resolve().parent)
    versions = Path("/usr/lib/postgresql").glob("*/bin")
    candidates.extend(sorted(versions, key=lambda p: _version(p.parent.name), reverse=True))
    for bindir in candidates:
        if all(os.access(bindir / name, os.X_OK) for name in BINARIES):
            return bindir
    return None


def _version(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class _Account:
    """Whom the server's processes run as: the current user, or ``RUN_AS`` under root."""

    uid: int
    gid: int

    @classmethod
    def for_server(cls) -> _Account:
        if os.geteuid() != 0:
            return cls(os.geteuid(), os.getegid())
        try:
            entry = pwd.getpwnam(RUN_AS)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                            "/usr/sbin/nologin", RUN_AS], capture_output=True, check=False)
            entry = pwd.getpwnam(RUN_AS)  # KeyError: useradd failed
        return cls(entry.pw_uid, entry.pw_gid)

    def options(self) -> dict[str, Any]:
        """``subprocess`` arguments that run a command as this account."""
        if self.uid == os.geteuid():
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def own(self, *paths: Path) -> None:
        if self.uid != os.geteuid():
            for path in paths:
                os.chown(path, self.uid, self.gid)


@dataclass
class PgServer:
    """A running server: connect to ``url`` with ``password`` (the URL holds none)."""

    host: str
    port: int
    user: str
    password: str = field(repr=False)
    database: str
    folder: Path = field(repr=False)
    bindir: Path = field(repr=False)
    account: _Account = field(repr=False)
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return self.url_for(self.database)

    def url_for(self, database: str) -> str:
        """The URL of another database of this server, without the password."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    def dsn_with_password(self, database: str | None = None) -> str:
        """The URL with the password in it (of ``database``, else of the default one)."""
        name = self.database if database is None else database
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{name}"

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def log(self) -> Path:
        return self.folder / "postgres.log"

    def log_text(self) -> str:
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop the server at once (``pg_ctl stop -m immediate``) and delete its folder."""
        try:
            if self.process is not None and self.process.poll() is None:
                subprocess.run([str(self.bindir / "pg_ctl"), "stop", "-D", str(self.data),
                                "-m", "immediate", "-w"], cwd=self.folder, env=_env(),
                               capture_output=True, check=False, timeout=DEADLINE_S,
                               **self.account.options())
                try:
                    self.process.wait(timeout=DEADLINE_S)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


def _env() -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C"}


def _folder(account: _Account) -> Path:
    """A directory under /tmp that ``account`` can reach (0755), owned by it."""
    base = "/tmp" if os.path.isdir("/tmp") else None
    folder = Path(tempfile.mkdtemp(prefix="guardproxy-pg-", dir=base))
    folder.chmod(0o755)
    (folder / "data").mkdir(mode=0o700)
    (folder / "socket").mkdir(mode=0o700)
    account.own(folder, folder / "data", folder / "socket")
    return folder


def _initdb(server: PgServer) -> None:
    pwfile = server.folder / "pwfile"
    pwfile.touch(mode=0o600)
    pwfile.write_text(server.password + "\n", encoding="utf-8")
    server.account.own(pwfile)
    try:
        done = subprocess.run(
            [str(server.bindir / "initdb"), "-D", str(server.data), "-U", server.user,
             "--pwfile", str(pwfile), "--auth-local=scram-sha-256",
             "--auth-host=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-sync"],
            cwd=server.folder, env=_env(), capture_output=True, text=True, check=False,
            timeout=120, **server.account.options())
    finally:
        pwfile.unlink()
    if done.returncode != 0:
        raise RuntimeError(f"initdb failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    (server.data / "pg_hba.conf").write_text(HBA, encoding="utf-8")
    with (server.data / "postgresql.conf").open("a", encoding="utf-8") as conf:
        conf.write("\n# the tests' throwaway server\n"
                   "listen_addresses = '127.0.0.1'\n"
                   f"unix_socket_directories = '{server.folder / 'socket'}'\n"
                   "password_encryption = 'scram-sha-256'\n"
                   "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                   "logging_collector = off\n")


def _launch(server: PgServer) -> None:
    with server.log.open("ab") as log:
        server.account.own(server.log)
        server.process = subprocess.Popen(
            [str(server.bindir / "postgres"), "-D", str(server.data), "-p", str(server.port)],
            cwd=server.folder, env=_env(), stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, **server.account.options())


def _ready(server: PgServer) -> bool:
    """Whether the server accepts connections; raises if it ended."""
    assert server.process is not None
    if server.process.poll() is not None:
        raise RuntimeError(f"postgres ended ({server.process.returncode}):\n"
                           f"{server.log_text()}")
    answer = subprocess.run(
        [str(server.bindir / "pg_isready"), "-q", "-h", server.host, "-p", str(server.port),
         "-U", server.user, "-d", server.database, "-t", "5"],
        env=_env(), capture_output=True, check=False, timeout=DEADLINE_S)
    return answer.returncode == 0


def _await_ready(server: PgServer) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not _ready(server):
        if time.monotonic() > deadline:
            raise RuntimeError(f"postgres not ready after {DEADLINE_S:.0f} s:\n"
                               f"{server.log_text()}")
        time.sleep(0.01)  # between two questions; readiness is the answer, not the time


def start(bindir: Path | None = None) -> PgServer:
    """A started server with a fresh cluster; ``stop()`` it when done."""
    bindir = bindir or find_bindir()
    if bindir is None:
        raise FileNotFoundError("PostgreSQL's initdb, pg_ctl and postgres are not installed")
    account = _Account.for_server()
    server = PgServer("127.0.0.1", 0, SUPERUSER, secrets.token_urlsafe(24), DATABASE,
                      _folder(account), bindir, account)
    try:
        _initdb(server)
        for attempt in range(1, PORT_TRIES + 1):
            server.port = _free_port()
            _launch(server)
            try:
                _await_ready(server)
                return server
            except RuntimeError:
                taken = "could not bind" in server.log_text()
                if not taken or attempt == PORT_TRIES:
                    raise
    except BaseException:
        server.stop()
        raise
    raise AssertionError("unreachable")


def create_database(server: PgServer, name: str) -> str:
    """Create the database ``name`` (lower-case letters, digits, underscores) on
    ``server``; its URL, without the password."""
    if not NAME.fullmatch(name):
        raise ValueError(f"not a plain database name: {name!r}")
    done = subprocess.run(
        [str(server.bindir / "createdb"), "-h", server.host, "-p", str(server.port),
         "-U", server.user, "--no-password", name],
        env={**_env(), "PGPASSWORD": server.password}, capture_output=True, text=True,
        check=False, timeout=DEADLINE_S)
    if done.returncode != 0:
        raise RuntimeError(f"createdb {name} failed: {done.stderr.strip()}")
    return server.url_for(name)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PgServer]:
    """A real PostgreSQL server for the session (``create_database`` one per test)."""
    if find_bindir() is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed (.ci/run installs it)")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    server = start()
    try:
        yield server
    finally:
        server.stop()
