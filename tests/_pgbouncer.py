"""A real PgBouncer in transaction pooling mode in front of the test PostgreSQL.

PgBouncer before 1.21 carries no protocol-level prepared statement from one
transaction to the next in ``pool_mode = transaction``, and no version carries
LISTEN: the tests that run orchestra behind one use :func:`running_pgbouncer`
(or the fixtures below, registered as a plugin by ``tests/conftest.py``):

* the binary: ``pgbouncer`` on ``PATH`` or in ``/usr/sbin`` (Debian's package,
  which ``.ci/run`` installs where it can), or the one ``ORCHESTRA_TEST_PGBOUNCER``
  names; without one the tests skip, saying so;
* ``pool_mode = transaction`` with a small server pool
  (:data:`SERVER_POOL_SIZE` connections per database and user) and room for
  many clients (:data:`MAX_CLIENT_CONN`); ``auth_type = trust``, the auth file
  holding the test DSN's user (and password, with which PgBouncer logs in to
  the server);
* as root, PgBouncer (which refuses root) runs as an unprivileged user: the
  owner of the server's socket directory when the test DSN is a unix socket,
  else ``postgres``, ``pgbouncer`` or ``nobody``, the first that can run it;
* its ini file, log and pid file live in a fresh temporary directory; it
  listens on 127.0.0.1 on a free port; the start waits (with a deadline) until
  a query passes through it to the server; on exit it is stopped and the
  directory removed.

Fixtures:

* ``pgbouncer``: a PgBouncer of the test's own (one per test: a test that
  leaves prepared statements on its server connections leaves them to nobody);
* ``pgbouncer_config``: a ``Config`` through it on the test's schema
  (migrated), with ``transaction_pooling`` and LISTEN on the direct DSN.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, LiteralString

import attrs
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from orchestra import Config
from tests.faults._cluster import free_port

#: Names another PgBouncer binary to test with.
BINARY_ENV = "ORCHESTRA_TEST_PGBOUNCER"
#: Where Debian's package puts it (``/usr/sbin`` is often not on a user's PATH).
DEBIAN_BINARY = Path("/usr/sbin/pgbouncer")
#: Server connections per (database, user): small, so that many clients share few.
SERVER_POOL_SIZE = 5
#: Client connections PgBouncer accepts: twenty worker processes open a hundred or more.
MAX_CLIENT_CONN = 2_000
#: Unprivileged users PgBouncer may run as when the tests run as root, in order.
RUN_AS_CANDIDATES = ("postgres", "pgbouncer", "nobody")
#: Seconds a start may take until a query passes through.
START_TIMEOUT_S = 30.0
#: Attempts at a start, each on another port (another process may take one).
START_ATTEMPTS = 5
#: Seconds a stop may take before PgBouncer is killed.
STOP_TIMEOUT_S = 10.0
LOG_TAIL_CHARS = 4_000


class PgBouncerUnavailableError(RuntimeError):
    """No PgBouncer binary, or no user to run it as: the test is skipped."""


class PgBouncerError(RuntimeError):
    """PgBouncer did not start or does not pass queries through."""


@attrs.frozen
class RunAs:
    """The system user PgBouncer runs as (None fields: this process's user)."""

    name: str | None = None
    uid: int | None = None
    gid: int | None = None


def find_binary() -> Path:
    """The PgBouncer to run; PgBouncerUnavailableError when there is none."""
    configured = os.environ.get(BINARY_ENV, "").strip()
    if configured:
        path = Path(configured)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise PgBouncerUnavailableError(f"{BINARY_ENV}={configured} is not an executable")
        return path
    found = shutil.which("pgbouncer")
    if found is not None:
        return Path(found)
    if DEBIAN_BINARY.is_file() and os.access(DEBIAN_BINARY, os.X_OK):
        return DEBIAN_BINARY
    raise PgBouncerUnavailableError(
        f"pgbouncer is not installed (not on PATH nor {DEBIAN_BINARY}; "
        "apt-get install pgbouncer, as .ci/run does where it can)"
    )


def _run(argv: list[str], run_as: RunAs, *, timeout: float = 30.0) -> str:
    done = subprocess.run(
        argv,
        env=_env(),
        user=run_as.uid,
        group=run_as.gid,
        extra_groups=[] if run_as.uid is not None else None,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    output = (done.stdout + done.stderr).strip()
    if done.returncode != 0:
        raise PgBouncerError(f"{' '.join(argv)} exited with {done.returncode}: {output}")
    return output


def _env() -> dict[str, str]:
    """A small, predictable environment for PgBouncer."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": "UTC"}


def binary_version(binary: Path, run_as: RunAs | None = None) -> str:
    """The version PgBouncer reports (``1.18.0``), from ``pgbouncer --version``."""
    output = _run([str(binary), "--version"], run_as or RunAs())
    match = re.search(r"PgBouncer\s+(\S+)", output)
    if match is None:
        raise PgBouncerError(f"{binary} --version said no version: {output!r}")
    return match.group(1)


def _socket_owner(params: dict[str, str]) -> str | None:
    """The owner of the server's socket directory, when the DSN leads to a unix socket.

    PgBouncer must be able to reach the socket: the server's own user can.
    """
    host = params.get("host", "")
    if not host.startswith("/"):
        return None
    try:
        owner = Path(host).stat().st_uid
        return None if owner == 0 else pwd.getpwuid(owner).pw_name
    except (OSError, KeyError):
        return None


def choose_user(binary: Path, params: dict[str, str]) -> RunAs:
    """Who runs PgBouncer: this process, or (as root) the first candidate that can."""
    if os.geteuid() != 0:
        return RunAs()
    owner = _socket_owner(params)
    candidates = ([owner] if owner else []) + [n for n in RUN_AS_CANDIDATES if n != owner]
    tried: list[str] = []
    for name in candidates:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        run_as = RunAs(name, entry.pw_uid, entry.pw_gid)
        try:
            binary_version(binary, run_as)
        except (PgBouncerError, OSError, subprocess.TimeoutExpired) as exc:
            tried.append(f"{name}: {exc}")
            continue
        return run_as
    raise PgBouncerUnavailableError(
        "running as root (PgBouncer refuses root), and no unprivileged user can run "
        f"{binary}: " + ("; ".join(tried) or f"none of {', '.join(candidates)} exists")
    )


def _ini_value(value: str, what: str) -> str:
    """``value`` for a ``key=value`` pair of PgBouncer's database line, which has no quoting."""
    if not value or re.search(r"[\s'\"=;\\]", value):
        raise PgBouncerUnavailableError(
            f"the test DSN's {what} ({value!r}) cannot be written in PgBouncer's ini file"
        )
    return value


def _auth_line(user: str, password: str) -> str:
    """One line of PgBouncer's auth file: both fields double-quoted, quotes doubled."""
    return '"{}" "{}"\n'.format(user.replace('"', '""'), password.replace('"', '""'))


@attrs.define(eq=False)
class PgBouncer:
    """A running PgBouncer in ``base``, on 127.0.0.1:``port``, in front of ``upstream``."""

    binary: Path
    #: What ``pgbouncer --version`` says, e.g. ``1.18.0``.
    version: str
    #: The direct DSN of the server behind it.
    upstream: str
    run_as: RunAs
    base: Path
    port: int = 0
    host: str = "127.0.0.1"
    pool_size: int = SERVER_POOL_SIZE
    process: subprocess.Popen[bytes] | None = None

    @property
    def ini_path(self) -> Path:
        """The configuration file."""
        return self.base / "pgbouncer.ini"

    @property
    def log_path(self) -> Path:
        """PgBouncer's log (its stderr)."""
        return self.base / "pgbouncer.log"

    @property
    def dsn(self) -> str:
        """The upstream DSN's database, user and password, through PgBouncer."""
        params = conninfo_to_dict(self.upstream)
        kept = {k: str(params[k]) for k in ("dbname", "user", "password") if params.get(k)}
        # PgBouncer here speaks no TLS: say so rather than have libpq ask first.
        return make_conninfo(host=self.host, port=str(self.port), sslmode="disable", **kept)

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        """The end of PgBouncer's log."""
        try:
            return self.log_path.read_text("utf-8", errors="replace")[-chars:]
        except OSError:
            return ""

    def _write_files(self) -> None:
        params = {k: str(v) for k, v in conninfo_to_dict(self.upstream).items()}
        user = params.get("user") or pwd.getpwuid(os.getuid()).pw_name
        server = {
            "host": _ini_value(params.get("host") or "127.0.0.1", "host"),
            "port": _ini_value(params.get("port") or "5432", "port"),
        }
        settings = {
            "listen_addr": self.host,
            "listen_port": str(self.port),
            "unix_socket_dir": "",
            "auth_type": "trust",
            "auth_file": str(self.base / "users.txt"),
            "pidfile": str(self.base / "pgbouncer.pid"),
            "pool_mode": "transaction",
            "default_pool_size": str(self.pool_size),
            "min_pool_size": "0",
            "reserve_pool_size": "0",
            "max_client_conn": str(MAX_CLIENT_CONN),
            # Clients wait for a server connection rather than fail: the small
            # pool is the point.
            "query_wait_timeout": "120",
            "admin_users": user,
            "stats_users": user,
            "log_connections": "0",
            "log_disconnections": "0",
        }
        database = " ".join(f"{k}={v}" for k, v in server.items())
        lines = [
            "; A PgBouncer of orchestra's tests (tests/_pgbouncer.py).",
            "[databases]",
            # Every database of the clients', on the same server, as the same user.
            f"* = {database}",
            "[pgbouncer]",
            *(f"{key} = {value}" for key, value in settings.items()),
        ]
        self.ini_path.write_text("\n".join(lines) + "\n")
        users = self.base / "users.txt"
        users.write_text(_auth_line(user, params.get("password", "")))
        for path in (self.ini_path, users):
            path.chmod(0o600)
            if self.run_as.uid is not None and self.run_as.gid is not None:
                os.chown(path, self.run_as.uid, self.run_as.gid)

    def _start(self) -> None:
        self._write_files()
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(self.binary), str(self.ini_path)],
                cwd=self.base,
                env=_env(),
                user=self.run_as.uid,
                group=self.run_as.gid,
                extra_groups=[] if self.run_as.uid is not None else None,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C of pytest does not reach it
            )
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def first_start(self) -> None:
        """Pick a port and start; when PgBouncer exits at once, try again on another port."""
        last: PgBouncerError | None = None
        for _ in range(START_ATTEMPTS):
            self.port = free_port(self.host)
            try:
                self._start()
            except PgBouncerError as exc:
                last = exc
                if "bind" in self.log_tail() or "Address already in use" in self.log_tail():
                    continue
                raise
            return
        assert last is not None
        raise last

    def running(self) -> bool:
        """True while the PgBouncer process runs."""
        return self.process is not None and self.process.poll() is None

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        """Wait until a query passes through PgBouncer to the server."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if not self.running():
                code = None if self.process is None else self.process.returncode
                raise PgBouncerError(
                    f"pgbouncer exited with {code}\n--- pgbouncer log ---\n{self.log_tail()}"
                )
            try:
                with psycopg.connect(self.dsn, connect_timeout=2, autocommit=True) as conn:
                    conn.execute("SELECT 1")
            except psycopg.OperationalError as exc:
                last = " ".join(str(exc).split())
                time.sleep(0.05)
                continue
            return
        raise PgBouncerError(
            f"no query passed through pgbouncer on port {self.port} within {timeout} s "
            f"(last error: {last})\n--- pgbouncer log ---\n{self.log_tail()}"
        )

    def stop(self) -> None:
        """Stop PgBouncer (SIGTERM: it closes every connection at once); kill it if it lingers."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_S)

    def admin(self, command: LiteralString) -> list[dict[str, Any]]:
        """Run a command of PgBouncer's admin console (``SHOW POOLS`` ...), its rows as dicts."""
        dsn = make_conninfo(self.dsn, dbname="pgbouncer")
        # The console speaks the simple query protocol only: a client-side cursor uses it.
        with psycopg.connect(dsn, autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
            cursor = conn.execute(command)
            names = [c.name for c in cursor.description or []]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


@contextlib.contextmanager
def running_pgbouncer(
    upstream: str, *, pool_size: int = SERVER_POOL_SIZE, binary: Path | None = None
) -> Iterator[PgBouncer]:
    """A started PgBouncer in transaction pooling mode in front of ``upstream``; stopped on exit.

    Raises PgBouncerUnavailableError (before starting anything) when there is no
    binary or no user to run it as; PgBouncerError when it does not start.
    """
    binary = binary or find_binary()
    params = {k: str(v) for k, v in conninfo_to_dict(upstream).items()}
    run_as = choose_user(binary, params)
    version = binary_version(binary, run_as)
    base = Path(tempfile.mkdtemp(prefix="orchestra-pgbouncer-"))
    bouncer = PgBouncer(binary, version, upstream, run_as, base, pool_size=pool_size)
    try:
        if run_as.uid is not None and run_as.gid is not None:
            os.chown(base, run_as.uid, run_as.gid)
        base.chmod(0o700)
        bouncer.first_start()
        yield bouncer
    finally:
        try:
            bouncer.stop()
        finally:
            shutil.rmtree(base, ignore_errors=True)


# -- fixtures (a plugin of tests/conftest.py) -----------------------------------


@pytest.fixture
def pgbouncer(test_dsn: str) -> Iterator[PgBouncer]:
    """A PgBouncer of this test's own, in transaction pooling mode, in front of ``test_dsn``."""
    try:
        with running_pgbouncer(test_dsn) as bouncer:
            yield bouncer
    except PgBouncerUnavailableError as exc:
        pytest.skip(str(exc))


@pytest.fixture
def pgbouncer_config(pgbouncer: PgBouncer, test_dsn: str, config: Config) -> Iterator[Config]:
    """A Config through ``pgbouncer`` on the test's migrated schema, LISTENing on ``test_dsn``."""
    pooled = Config(
        pgbouncer.dsn, schema=config.schema, transaction_pooling=True, listen_dsn=test_dsn
    )
    yield pooled
    pooled.close()
