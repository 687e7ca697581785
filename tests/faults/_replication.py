"""A primary and a synchronous streaming standby on this machine, for failover tests.

Built from two private clusters (:mod:`tests.faults._cluster`: the same
binaries, the same unprivileged user when root, each with its own temporary
directory, free port and socket):

* the primary is initialized with ``initdb``; the standby is a
  ``pg_basebackup`` of it (``-X stream``, with a physical replication slot,
  ``-C -S``, so that the primary keeps the WAL its standby has not received),
  started with ``standby.signal`` and a ``primary_conninfo`` naming it;
* the primary then lists the standby in ``synchronous_standby_names`` and
  keeps ``synchronous_commit = on``: a commit returns once its WAL is flushed
  on both servers. That is the setting that makes "a defer that returned is
  on the standby" hold when the primary's host is lost: ``remote_write``
  returns once the standby's OS has the WAL, not its disk (lost if both
  machines fail at once), and ``remote_apply`` waits on top for the replay,
  which only matters for reads on the standby, and orchestra reads from the
  primary only;
* :attr:`ReplicatedPair.dsn` is a multi-host connection string
  (``host=127.0.0.1,127.0.0.1 port=P1,P2 ... target_session_attrs=read-write``):
  libpq tries the hosts in order and keeps the first that accepts writes, so
  a client finds whichever node is the primary, and never the standby.

The faults: :meth:`ReplicatedPair.stop_primary` stops the primary as a crash
would (``pg_ctl stop -m immediate``), :meth:`ReplicatedPair.promote` promotes
the standby (``pg_ctl promote``) and waits until it accepts writes, and
:meth:`ReplicatedPair.rejoin` rebuilds the stopped node as the new primary's
synchronous standby (a fresh base backup), so that a longer run can fail over
again, back and forth. The node that was stopped never starts again as a
primary: two primaries behind one connection string would split the queue.

:func:`replicated_pair` raises ``ClusterUnavailableError`` (the tests skip
with its reason) when there are no binaries, no ``pg_basebackup`` among them,
or no user to run them as.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import attrs
import psycopg
from psycopg import sql

from orchestra.testing import wait_until
from tests.faults._cluster import (
    SUPERUSER,
    ClusterError,
    ClusterUnavailableError,
    PrivateCluster,
    choose_user,
    find_binaries,
)

#: The database the connection strings name.
DBNAME = "postgres"
#: The nodes' names: each one's application_name as a standby, and its slot's name.
NODE_NAMES = ("node_a", "node_b")
#: Seconds a promotion, or a new standby's catching up, may take on a slow machine.
READY_TIMEOUT_S = 120.0


@attrs.define(eq=False)
class Node(PrivateCluster):
    """One server of the pair: a private cluster plus the settings of its current role."""

    name: str = ""
    #: Settings written after the private cluster's own (the later line wins).
    role_settings: dict[str, str] = attrs.Factory(dict)

    @property
    def conninfo(self) -> str:
        """A key=value connection string of this node alone."""
        return f"host={self.host} port={self.port} dbname={DBNAME} user={SUPERUSER}"

    def _configure(self) -> None:
        super()._configure()
        if self.role_settings:
            auto = self.data / "postgresql.auto.conf"
            with auto.open("a") as settings:
                settings.write("# This node's role in the pair.\n")
                settings.writelines(
                    f"{key} = {value}\n" for key, value in self.role_settings.items()
                )

    def clone_from(self, primary: Node) -> None:
        """Make this node's data directory a base backup of ``primary`` (running).

        The slot named after this node is created on the primary by the backup
        itself, so no WAL the standby needs is recycled between the backup and
        the standby's first connection.
        """
        if self.data.exists():
            shutil.rmtree(self.data)
        self._pg(
            "pg_basebackup",
            "-d", f"{primary.conninfo} application_name={self.name}",
            "-D", str(self.data),
            "-X", "stream",
            "-C", "-S", self.name,
            "-c", "fast",
            # Like initdb's --no-sync: the server itself runs with fsync on.
            "--no-sync",
        )  # fmt: skip
        # What `pg_basebackup -R` would write, written here instead: the
        # node's settings file is written whole when the node is configured
        # (its own port and socket), and the copied one holds the primary's.
        self.role_settings = {
            "primary_conninfo": f"'{primary.conninfo} application_name={self.name}'",
            "primary_slot_name": f"'{self.name}'",
            # After its promotion this node has no standby: a name here would
            # make every commit wait for one that never comes.
            "synchronous_standby_names": "''",
            "hot_standby": "on",
        }
        signal_file = self.data / "standby.signal"
        signal_file.touch()
        if self.run_as.uid is not None and self.run_as.gid is not None:
            os.chown(signal_file, self.run_as.uid, self.run_as.gid)

    def start_standby(self, *, first: bool) -> None:
        """Start the cloned node: on a free port the first time, else on the port it had.

        Its port is in the pair's connection string: a rebuilt node keeps it.
        """
        if first:
            self.first_start()
        else:
            self._configure()
            self.start()

    def promote(self) -> None:
        """``pg_ctl promote``: end recovery; pg_ctl waits until the node runs as a primary."""
        self._pg_ctl("promote")
        self.restarts.append("promote")


def _connect(conninfo: str) -> psycopg.Connection[Any]:
    return psycopg.connect(conninfo, autocommit=True, connect_timeout=5)


@attrs.define(eq=False)
class ReplicatedPair:
    """Two nodes, one the primary and the other its synchronous standby (or stopped)."""

    nodes: tuple[Node, Node]
    #: The index in :attr:`nodes` of the node that accepts writes.
    primary_index: int = 0
    #: True while the other node streams from the primary (not stopped, not rebuilt yet).
    standby_up: bool = False
    #: What was done to the pair, in order (``stop node_a``, ``promote node_b`` ...).
    history: list[str] = attrs.Factory(list)

    @property
    def primary(self) -> Node:
        """The node that accepts writes (until it is stopped)."""
        return self.nodes[self.primary_index]

    @property
    def standby(self) -> Node:
        """The other node: the standby, or the stopped former primary."""
        return self.nodes[1 - self.primary_index]

    @property
    def dsn(self) -> str:
        """The multi-host connection string: whichever node accepts writes, never a standby."""
        hosts = ",".join(node.host for node in self.nodes)
        ports = ",".join(str(node.port) for node in self.nodes)
        return (
            f"host={hosts} port={ports} dbname={DBNAME} user={SUPERUSER}"
            " target_session_attrs=read-write"
        )

    def replication_state(self) -> tuple[str, str] | None:
        """(state, sync_state) of the standby's connection, as the primary sees it."""
        with _connect(self.primary.conninfo) as conn:
            row = conn.execute(
                "SELECT state, sync_state FROM pg_stat_replication WHERE application_name = %s",
                (self.standby.name,),
            ).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    def _make_synchronous(self) -> None:
        """Name the standby in the primary's synchronous_standby_names; wait until it is sync."""
        with _connect(self.primary.conninfo) as conn:
            conn.execute(
                sql.SQL("ALTER SYSTEM SET synchronous_standby_names = {}").format(
                    sql.Literal(self.standby.name)
                )
            )
            conn.execute("SELECT pg_reload_conf()")
        wait_until(
            lambda: self.replication_state() == ("streaming", "sync"),
            timeout=READY_TIMEOUT_S,
            interval=0.05,
            message=(
                f"{self.standby.name} is not a synchronous standby of {self.primary.name}: "
                f"{self.replication_state()}\n--- standby log ---\n{self.standby.log_tail()}"
            ),
        )
        self.standby_up = True

    def start_standby(self, *, first: bool = False) -> None:
        """Build the standby from the primary, start it, and make commits wait for it."""
        standby = self.standby
        standby.clone_from(self.primary)
        standby.start_standby(first=first)
        self._make_synchronous()

    def stop_primary(self) -> None:
        """Stop the primary as a crash would: ``pg_ctl stop -m immediate``."""
        stopped = self.primary
        stopped.stop("immediate")
        self.history.append(f"stop {stopped.name}")

    def promote(self) -> None:
        """Promote the standby and wait until it accepts writes; it is the primary from now on."""
        if not self.standby_up:
            raise ClusterError(f"{self.standby.name} is not a running standby: nothing to promote")
        promoted = self.standby
        promoted.promote()
        self.primary_index = 1 - self.primary_index
        self.standby_up = False
        self.history.append(f"promote {promoted.name}")

        def writable() -> bool:
            try:
                with _connect(f"{promoted.conninfo} target_session_attrs=read-write") as conn:
                    conn.execute("SELECT txid_current()")  # takes a transaction id: a write
            except psycopg.OperationalError:
                return False
            return True

        wait_until(
            writable,
            timeout=READY_TIMEOUT_S,
            interval=0.02,
            message=f"{promoted.name} does not accept writes after its promotion:\n"
            f"{promoted.log_tail()}",
        )

    def rejoin(self) -> None:
        """Rebuild the stopped node as the primary's synchronous standby (a new base backup).

        Not ``pg_rewind``: a fresh copy of a small test database is as quick,
        and needs neither data checksums nor ``wal_log_hints``.
        """
        if self.standby.running():
            raise ClusterError(f"{self.standby.name} still runs: stop it before rebuilding it")
        self.start_standby()
        self.history.append(f"rejoin {self.standby.name}")

    def destroy(self) -> None:
        """Stop both nodes and remove their directories."""
        _destroy(self.nodes)


def _destroy(nodes: Iterable[Node]) -> None:
    for node in nodes:
        with contextlib.suppress(Exception):
            node.destroy()


@contextlib.contextmanager
def replicated_pair() -> Iterator[ReplicatedPair]:
    """A running primary with a synchronous standby; both destroyed on exit.

    Raises ClusterUnavailableError (before creating anything) when the
    binaries, ``pg_basebackup`` among them, or a user to run them as are
    missing; ClusterError when a command fails.
    """
    binaries = find_binaries()
    if not Path(binaries.path("pg_basebackup")).is_file():
        raise ClusterUnavailableError(
            f"no pg_basebackup in {binaries.bindir} ({binaries.source}): a standby cannot be built"
        )
    run_as = choose_user(binaries)
    nodes: list[Node] = []
    try:
        for name in NODE_NAMES:
            base = Path(tempfile.mkdtemp(prefix=f"orchestra-pg-{name}-"))
            nodes.append(Node(binaries, run_as, base, name=name))
            if run_as.uid is not None and run_as.gid is not None:
                os.chown(base, run_as.uid, run_as.gid)
            base.chmod(0o700)
        pair = ReplicatedPair((nodes[0], nodes[1]))
        pair.primary.role_settings = {
            "wal_level": "replica",
            "max_wal_senders": "4",
            "max_replication_slots": "4",
        }
        pair.primary.init()
        pair.primary.first_start()
        pair.start_standby(first=True)
        yield pair
    finally:
        _destroy(nodes)
