"""Helpers of the e2e tests: child ``orchestra`` processes and queries on a queue schema."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any, LiteralString

import psycopg
import pytest
from psycopg import sql

from orchestra.testing import wait_until

REPO = Path(__file__).resolve().parents[2]
APP = "tests.e2e.apps.ledger_app:config"
#: The console script installed next to the interpreter running the tests.
ORCHESTRA_BIN = Path(sys.executable).with_name("orchestra")
LOG_TAIL_CHARS = 6_000


def orchestra_argv(*args: str) -> list[str]:
    """The argv that runs ``orchestra *args`` (the console script when installed)."""
    if ORCHESTRA_BIN.exists():
        return [str(ORCHESTRA_BIN), *args]
    return [sys.executable, "-m", "orchestra.cli", *args]


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (line breaks included) made one space."""
    return " ".join(text.split())


class Queue:
    """Assertions on one queue schema, through a raw autocommit connection."""

    def __init__(self, conn: psycopg.Connection[Any], schema: str) -> None:
        self.conn = conn
        self.schema = schema

    def _compose(self, query: LiteralString) -> sql.Composed:
        return sql.SQL(query).format(s=sql.Identifier(self.schema))

    def rows(self, query: LiteralString, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run ``query`` (``{s}`` is the schema) and return every row."""
        return self.conn.execute(self._compose(query), params).fetchall()

    def value(self, query: LiteralString, params: Sequence[Any] = ()) -> Any:
        """Run ``query`` and return the first column of its only row."""
        row = self.conn.execute(self._compose(query), params).fetchone()
        assert row is not None, f"no row for {query!r}"
        return row[0]

    def job(self, job_id: int) -> dict[str, Any]:
        """The job's row as a dict, unfinished or finished.

        From the ``all_jobs`` view: a finished job's ``locked_by``,
        ``lock_token`` and ``locked_until`` are NULL.
        """
        cursor = self.conn.execute(
            self._compose(
                "SELECT id, definition, status::text AS status, attempt, max_attempts, locked_by,"
                " lock_token, locked_until, result, finalized_at, last_error, started_at"
                " FROM {s}.all_jobs WHERE id = %s"
            ),
            (job_id,),
        )
        found = cursor.fetchall()
        assert found, f"job {job_id} not found"
        assert len(found) == 1, f"job {job_id} is in both job and job_history: {found}"
        assert cursor.description is not None
        return dict(zip([c.name for c in cursor.description], found[0], strict=True))

    def attempts(self, job_id: int) -> list[tuple[int, str]]:
        """The job's ended attempts as (attempt, outcome), in order.

        A succeeded job's success has no log row (id NULL): its history row
        records it, and it is the last attempt.
        """
        return [
            (int(a), str(o))
            for a, o in self.rows(
                "SELECT attempt, outcome FROM {s}.all_job_attempts WHERE job_id = %s"
                " ORDER BY id NULLS LAST",
                (job_id,),
            )
        ]

    def ledger(self, job_id: int) -> list[tuple[int, int, bool]]:
        """The job's executions as (attempt, pid, finished), in order."""
        return [
            (int(a), int(p), f is not None)
            for a, p, f in self.rows(
                "SELECT attempt, pid, finished FROM {s}.ledger WHERE job_id = %s ORDER BY id",
                (job_id,),
            )
        ]

    def execute(self, query: LiteralString, params: Sequence[Any] = ()) -> None:
        """Run a statement that returns no rows."""
        self.conn.execute(self._compose(query), params)

    def open_gate(self, name: str) -> None:
        """Let the jobs waiting on gate ``name`` return."""
        self.execute("INSERT INTO {s}.gate (name) VALUES (%s)", (name,))

    def workers(self) -> int:
        """How many daemons are registered in the worker table."""
        return int(self.value("SELECT count(*) FROM {s}.worker"))


class Daemon:
    """One ``orchestra daemon`` child process and its stderr log."""

    def __init__(self, proc: subprocess.Popen[bytes], log_path: Path, log_file: IO[bytes]) -> None:
        self.proc = proc
        self.log_path = log_path
        self._log_file = log_file

    @property
    def pid(self) -> int:
        """The process id (also the pid the worker registers)."""
        return self.proc.pid

    def log(self) -> str:
        """Everything the daemon wrote to stderr so far."""
        return self.log_path.read_text("utf-8", errors="replace")

    def wait_for_log(self, text: str, *, timeout: float = 30.0) -> None:
        """Wait until ``text`` appears in the log; fail early if the process exits first."""

        def seen() -> bool:
            if text in self.log():
                return True
            if self.proc.poll() is not None:
                pytest.fail(
                    f"daemon {self.pid} exited with {self.proc.returncode} before logging "
                    f"{text!r}:\n{self.log()[-LOG_TAIL_CHARS:]}"
                )
            return False

        wait_until(seen, timeout=timeout, message=f"daemon {self.pid} never logged {text!r}")

    def send(self, signum: signal.Signals) -> None:
        """Send ``signum`` to the daemon."""
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit; return its exit code."""
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL the process if it still runs, and reap it."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)

    def close(self) -> None:
        """Kill (if needed) and release the log file."""
        try:
            self.kill()
        finally:
            self._log_file.close()


class DaemonFactory:
    """Starts ``orchestra daemon`` processes (workers by default) on the test's schema."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.daemons: list[Daemon] = []

    def start(
        self,
        *,
        concurrency: int = 1,
        shutdown_grace_ms: int = 30_000,
        name: str = "e2e",
        extra: Sequence[str] = (),
        app: str = APP,
        wait_started: bool = True,
        role: str = "worker",
    ) -> Daemon:
        """Start a daemon of ``role``; by default wait until it logged DaemonStarted."""
        argv = [
            sys.executable, "-m", "orchestra.cli", "daemon", "--role", role,
            "--app", app, "--name", name, "--concurrency", str(concurrency),
            "--process-interval-ms", "100", "--shutdown-grace-ms", str(shutdown_grace_ms),
            *extra,
        ]  # fmt: skip
        log_path = self.log_dir / f"daemon-{len(self.daemons)}-{name}.log"
        log_file = log_path.open("wb")
        try:
            proc = subprocess.Popen(
                argv,
                cwd=REPO,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C of pytest does not reach it
            )
        except BaseException:
            log_file.close()
            raise
        daemon = Daemon(proc, log_path, log_file)
        self.daemons.append(daemon)
        if wait_started:
            daemon.wait_for_log("DaemonStarted")
        return daemon

    def logs(self) -> str:
        """The tail of every daemon's log, for a failure report."""
        parts = []
        for daemon in self.daemons:
            code = daemon.proc.poll()
            parts.append(
                f"--- daemon pid {daemon.pid} (exit code {code}) {daemon.log_path.name} ---\n"
                + daemon.log()[-LOG_TAIL_CHARS:]
            )
        return "\n".join(parts)

    def close(self) -> None:
        """Kill every daemon still running and close the logs."""
        for daemon in self.daemons:
            daemon.close()


def elapsed_since(start: float) -> float:
    """Seconds since ``start`` (a ``time.monotonic()`` value)."""
    return time.monotonic() - start


def stays_true(condition: Callable[[], bool], seconds: float) -> bool:
    """Poll ``condition`` for ``seconds``; False as soon as it is seen false.

    For negative checks ("nobody claims this job meanwhile"): the window is
    watched continuously rather than slept through.
    """
    try:
        wait_until(lambda: not condition(), timeout=seconds, interval=0.05)
    except TimeoutError:
        return True
    return False
