"""A private PostgreSQL cluster for fault tests: its own directory, port and socket.

A fault test stops, crashes and restarts the server under load. It must never
do that to a server that other tests (or people) use, so it starts a cluster of
its own with :func:`private_cluster`:

* binaries: the newest Debian server package (``/usr/lib/postgresql/N/bin``)
  when present, otherwise those bundled in the ``pgserver`` package (the
  ``embedded`` extra). ``ORCHESTRA_FAULTS_PG_BINDIR`` names another directory;
* as root, the server runs as an unprivileged user (``postgres``, ``pgserver``,
  or ``nobody``, the first that can run the binaries): initdb refuses root;
* the data directory, the log and the unix socket live in a fresh temporary
  directory; the server listens on 127.0.0.1 on a free port below the
  kernel's ephemeral range, so that no client socket takes it during a
  restart;
* fsync stays on (a crash test of durability on a server that does not flush
  proves nothing); shared_buffers is small, so that a start is quick;
* on exit the server is stopped (immediately: the data is deleted anyway) and
  the directory removed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import attrs
import psycopg

from orchestra.testing import wait_until

BINDIR_ENV = "ORCHESTRA_FAULTS_PG_BINDIR"
DEBIAN_ROOT = Path("/usr/lib/postgresql")
#: Unprivileged users the server may run as when the tests run as root, in order.
RUN_AS_CANDIDATES = ("postgres", "pgserver", "nobody")
#: The cluster's superuser (a role name, not a system user).
SUPERUSER = "postgres"
#: Seconds pg_ctl waits for a start (crash recovery included) or a stop.
PG_CTL_TIMEOUT_S = 120
#: Attempts at a first start, each on another port (another process may take one).
START_ATTEMPTS = 5
LOG_TAIL_CHARS = 4_000

StopMode = Literal["smart", "fast", "immediate"]
BinarySource = Literal["any", "debian", "embedded"]


class ClusterError(RuntimeError):
    """A pg_ctl or initdb command of the private cluster failed."""


class ClusterUnavailableError(RuntimeError):
    """No PostgreSQL binaries, or no user to run them as: the test is skipped."""


@attrs.frozen
class Binaries:
    """A directory holding initdb, pg_ctl and postgres, and where it comes from."""

    bindir: Path
    #: ``debian``, ``embedded`` (pgserver) or ``env`` (ORCHESTRA_FAULTS_PG_BINDIR).
    source: str

    def path(self, program: str) -> str:
        """The full path of ``program`` in this directory."""
        return str(self.bindir / program)


def _complete(bindir: Path) -> bool:
    return all((bindir / name).is_file() for name in ("initdb", "pg_ctl", "postgres"))


def _debian_bindirs() -> list[Path]:
    """Debian's server binaries, newest major version first."""
    if not DEBIAN_ROOT.is_dir():
        return []
    found = [p / "bin" for p in DEBIAN_ROOT.iterdir() if p.name.isdigit() and _complete(p / "bin")]
    return sorted(found, key=lambda p: int(p.parent.name), reverse=True)


def _embedded_bindir() -> Path | None:
    """pgserver's bundled binaries, located without importing pgserver.

    Importing it would create its runtime directory and lock file, which a
    fault test has no use for.
    """
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        bindir = Path(location) / "pginstall" / "bin"
        if _complete(bindir):
            return bindir
    return None


def find_binaries(source: BinarySource = "any") -> Binaries:
    """The binaries to run a private cluster with; ClusterUnavailableError if there are none."""
    configured = os.environ.get(BINDIR_ENV, "").strip()
    if configured and source == "any":
        bindir = Path(configured)
        if not _complete(bindir):
            raise ClusterUnavailableError(
                f"{BINDIR_ENV}={configured} does not hold initdb, pg_ctl and postgres"
            )
        return Binaries(bindir, "env")
    if source in ("any", "debian"):
        debian = _debian_bindirs()
        if debian:
            return Binaries(debian[0], "debian")
    if source in ("any", "embedded"):
        embedded = _embedded_bindir()
        if embedded is not None:
            return Binaries(embedded, "embedded")
    wanted = {
        "any": f"no PostgreSQL server binaries: neither {DEBIAN_ROOT}/N/bin nor the pgserver "
        "package (pip install 'orchestra-queue[embedded]')",
        "debian": f"no PostgreSQL server binaries in {DEBIAN_ROOT}/N/bin",
        "embedded": "the pgserver package (extra 'embedded') is not installed",
    }
    raise ClusterUnavailableError(wanted[source])


@attrs.frozen
class RunAs:
    """The system user the server's programs run as (None fields: this process's user)."""

    name: str | None = None
    uid: int | None = None
    gid: int | None = None


def _env() -> dict[str, str]:
    """A small, predictable environment for the server's programs."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LC_ALL": "C",
        "LANG": "C",
        "TZ": "UTC",
    }


def _run(argv: list[str], run_as: RunAs, *, cwd: Path, timeout: float) -> str:
    """Run one of the server's programs as ``run_as``; its output; ClusterError on failure."""
    try:
        done = subprocess.run(
            argv,
            cwd=cwd,
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
    except subprocess.TimeoutExpired as exc:
        raise ClusterError(f"{' '.join(argv)} did not finish within {timeout} s") from exc
    output = (done.stdout + done.stderr).strip()
    if done.returncode != 0:
        raise ClusterError(f"{' '.join(argv)} exited with {done.returncode}: {output}")
    return output


def choose_user(binaries: Binaries) -> RunAs:
    """Who runs the server: this process, or (as root) the first candidate that can.

    ClusterUnavailableError when running as root and no candidate user exists or
    can execute the binaries (they may sit in a directory only root reads).
    """
    if os.geteuid() != 0:
        return RunAs()
    tried: list[str] = []
    for name in RUN_AS_CANDIDATES:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        run_as = RunAs(name, entry.pw_uid, entry.pw_gid)
        try:
            _run([binaries.path("postgres"), "--version"], run_as, cwd=Path("/"), timeout=30)
        except (ClusterError, OSError) as exc:
            tried.append(f"{name}: {exc}")
            continue
        return run_as
    if not tried:
        raise ClusterUnavailableError(
            "running as root, and none of the users "
            f"{', '.join(RUN_AS_CANDIDATES)} exists to run PostgreSQL as (initdb refuses root)"
        )
    raise ClusterUnavailableError(
        f"running as root, and no unprivileged user can run {binaries.bindir}/postgres: "
        + "; ".join(tried)
    )


def _ephemeral_low() -> int:
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        return int(text.split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on, below the ephemeral range.

    The port must stay free across restarts of the server: a port from the
    ephemeral range could meanwhile be given to one of the many client sockets
    the daemons open while they reconnect.
    """
    high = max(2_000, _ephemeral_low() - 1)
    low = max(1_025, high - 12_000)
    for _ in range(200):
        port = random.randint(low, high)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
        return port
    raise ClusterError(f"no free port between {low} and {high} on {host}")


@attrs.define(eq=False)
class PrivateCluster:
    """A PostgreSQL cluster in ``base`` (data, log, socket), listening on 127.0.0.1:``port``."""

    binaries: Binaries
    run_as: RunAs
    base: Path
    port: int = 0
    host: str = "127.0.0.1"
    #: Restarts and stops done through this object (faults injected), by mode.
    restarts: list[str] = attrs.Factory(list)

    @property
    def data(self) -> Path:
        """The data directory."""
        return self.base / "data"

    @property
    def log_path(self) -> Path:
        """The server's log (pg_ctl -l)."""
        return self.base / "server.log"

    @property
    def dsn(self) -> str:
        """A libpq URI of the cluster's ``postgres`` database, over TCP."""
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/postgres"

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        """The end of the server's log."""
        try:
            return self.log_path.read_text("utf-8", errors="replace")[-chars:]
        except OSError:
            return ""

    def _pg(self, program: str, *args: str, timeout: float = PG_CTL_TIMEOUT_S + 30) -> str:
        return _run(
            [self.binaries.path(program), *args], self.run_as, cwd=self.base, timeout=timeout
        )

    def _pg_ctl(self, *args: str) -> str:
        try:
            return self._pg(
                "pg_ctl", "-D", str(self.data), "-w", "-t", str(PG_CTL_TIMEOUT_S), *args
            )
        except ClusterError as exc:
            raise ClusterError(f"{exc}\n--- server log ---\n{self.log_tail()}") from None

    # -- life cycle -------------------------------------------------------------

    def init(self) -> None:
        """initdb: trust authentication, no locale, UTF-8; then the server settings."""
        self._pg(
            "initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "--no-locale",
            "-E", "UTF8", "--no-instructions",
            # initdb's own flushes only: the server itself runs with fsync on.
            "--no-sync",
        )  # fmt: skip

    def _configure(self) -> None:
        settings = {
            "listen_addresses": f"'{self.host}'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.base}'",
            "max_connections": "100",
            "shared_buffers": "16MB",
            "fsync": "on",
            "synchronous_commit": "on",
            "full_page_writes": "on",
            "logging_collector": "off",
            "log_line_prefix": "'%m [%p] '",
        }
        auto = self.data / "postgresql.auto.conf"
        lines = [f"{key} = {value}" for key, value in settings.items()]
        # Written by us as root: the server only needs to read it.
        auto.write_text(
            "# Settings of the fault tests' private cluster.\n" + "\n".join(lines) + "\n"
        )
        if self.run_as.uid is not None and self.run_as.gid is not None:
            os.chown(auto, self.run_as.uid, self.run_as.gid)

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self._pg_ctl("-l", str(self.log_path), "start")
        self.wait_ready()

    def first_start(self) -> None:
        """Pick a port and start; on a start failure, try again on another port."""
        last: ClusterError | None = None
        for _ in range(START_ATTEMPTS):
            self.port = free_port(self.host)
            self._configure()
            try:
                self.start()
            except ClusterError as exc:
                last = exc
                if self.running():
                    raise  # up but unusable: not a port conflict
                continue
            return
        assert last is not None
        raise last

    def stop(self, mode: StopMode = "fast") -> None:
        """Stop the server: ``fast`` (clients cut, checkpoint) or ``immediate`` (a crash)."""
        self._pg_ctl("-m", mode, "stop")
        self.restarts.append(f"stop {mode}")

    def restart(self, mode: StopMode = "fast") -> None:
        """``pg_ctl restart``: stop in ``mode`` (immediate: recovery at the start), start."""
        self._pg_ctl("-l", str(self.log_path), "-m", mode, "restart")
        self.restarts.append(f"restart {mode}")
        self.wait_ready()

    def postmaster_pid(self) -> int | None:
        """The postmaster's pid while the server runs (its pid file), else None."""
        try:
            first = (self.data / "postmaster.pid").read_text().split("\n", 1)[0]
            pid = int(first)
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass  # another user's live process
        return pid

    def running(self) -> bool:
        """True while the postmaster runs."""
        return self.postmaster_pid() is not None

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until a connection succeeds (the end of crash recovery, for instance)."""

        def ready() -> bool:
            try:
                with psycopg.connect(self.dsn, connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
            except psycopg.OperationalError:
                if not self.running():
                    raise ClusterError(
                        f"the private cluster is not running\n--- server log ---\n{self.log_tail()}"
                    ) from None
                return False
            return True

        wait_until(
            ready, timeout=timeout, interval=0.05, message=f"{self.dsn} not ready in {timeout} s"
        )

    def destroy(self) -> None:
        """Stop the server if it runs (killing it if it will not stop), remove the directory."""
        try:
            if self.running():
                with contextlib.suppress(ClusterError):
                    self._pg_ctl("-m", "immediate", "stop")
                pid = self.postmaster_pid()
                if pid is not None:
                    # The postmaster we started and that would not stop.
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    deadline = time.monotonic() + 10
                    while self.postmaster_pid() is not None and time.monotonic() < deadline:
                        time.sleep(0.05)
        finally:
            shutil.rmtree(self.base, ignore_errors=True)


@contextlib.contextmanager
def private_cluster(source: BinarySource = "any") -> Iterator[PrivateCluster]:
    """A started private cluster, destroyed on exit.

    Raises ClusterUnavailableError (before creating anything) when there are no
    binaries or no user to run them as; ClusterError when a command fails.
    """
    binaries = find_binaries(source)
    run_as = choose_user(binaries)
    base = Path(tempfile.mkdtemp(prefix="orchestra-pg-"))
    cluster = PrivateCluster(binaries, run_as, base)
    try:
        if run_as.uid is not None and run_as.gid is not None:
            os.chown(base, run_as.uid, run_as.gid)
        base.chmod(0o700)
        cluster.init()
        cluster.first_start()
        yield cluster
    finally:
        cluster.destroy()
