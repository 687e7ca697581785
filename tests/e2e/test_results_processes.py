"""Result waiting across processes: a requester that dies loses nothing.

A child process (``tests/e2e/apps/results_app.py request``) defers a
job that waits on a gate row, prints its id and blocks in
``handle.result()``. It is SIGKILLed while it waits; the gate is then opened,
a worker runs the job, and anyone asking by id (this process, or a second
child process) gets the job function's return value from the job's history row.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestra import Config, JobHandle, Worker
from orchestra.testing import wait_until
from tests.e2e._support import REPO, DaemonFactory, Queue

APP_MODULE = "tests.e2e.apps.results_app"
APP = f"{APP_MODULE}:config"
#: A generous deadline for a result that should come at once.
RESULT_TIMEOUT_S = 30.0


class Requester:
    """A child process running the app's ``request`` or ``ask`` command; output in a file."""

    def __init__(self, env: dict[str, str], log_path: Path, *args: str) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", APP_MODULE, *args],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        """What the process printed so far."""
        return self.log_path.read_text("utf-8", errors="replace")

    def line(self, prefix: str, *, timeout: float = 30.0) -> str:
        """The rest of the first printed line starting with ``prefix``; fails if the process exits first."""

        def found() -> str | None:
            for text in self.output().splitlines():
                if text.startswith(prefix):
                    return text[len(prefix) :]
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"requester exited with {self.proc.returncode} before printing "
                    f"{prefix!r}:\n{self.output()}"
                )
            return None

        value: str = wait_until(found, timeout=timeout, message=f"no {prefix!r} line printed")
        return value

    def close(self) -> None:
        """Kill the process if it still runs, reap it, close its log."""
        try:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(timeout=30)
        finally:
            self._log.close()


@contextlib.contextmanager
def requester(env: dict[str, str], log_path: Path, *args: str) -> Iterator[Requester]:
    """A :class:`Requester` closed (killed if need be) when the block ends."""
    child = Requester(env, log_path, *args)
    try:
        yield child
    finally:
        child.close()


def outcome_readers(queue: Queue) -> int:
    """Sessions whose last statement read a job's outcome in the queue's schema.

    A waiter reads once on a pooled connection, then LISTENs on a connection
    of its own and reads again: two such sessions mean it is listening. The
    read is the ``job_outcome`` query (orchestra/sql/producer.sql): the only one
    that selects a NULL result from ``job`` next to ``job_history``.
    """
    return int(
        queue.value(
            "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
            "AND position('NULL::jsonb AS result' IN query) > 0 "
            "AND position('job_history' IN query) > 0 AND position(%s IN query) > 0",
            (queue.schema,),
        )
    )


def kill_while_waiting(queue: Queue, child: Requester) -> None:
    """SIGKILL ``child`` once it blocks in result(), and check it died of it."""
    wait_until(
        lambda: outcome_readers(queue) >= 2,
        message="the requester never started waiting for the result",
    )
    assert child.proc.poll() is None, "the requester stopped waiting on its own"
    assert "result" not in child.output()
    child.proc.send_signal(signal.SIGKILL)
    assert child.proc.wait(timeout=30) == -signal.SIGKILL
    # Its sessions end with it: nothing of the wait was left to rely on.
    wait_until(
        lambda: outcome_readers(queue) == 0,
        message="the killed requester's sessions did not go away",
    )


def test_requester_killed_while_waiting_gets_the_result_by_id(
    queue: Queue,
    config: Config,
    daemons: DaemonFactory,
    e2e_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """A requester SIGKILLed while blocked in result() (job running on a worker process) gets the value when asked again by id."""
    worker = daemons.start(app=APP, concurrency=2)
    with requester(e2e_env, tmp_path / "requester.log", "request", "gated_once", "g1") as child:
        job_id = int(child.line("job "))
        wait_until(
            lambda: queue.ledger(job_id) == [(1, worker.pid, False)],
            message="the gated job never started on the worker",
        )
        kill_while_waiting(queue, child)

    assert queue.job(job_id)["status"] == "running"  # the job did not care
    queue.open_gate("g1")
    expected = {"job_id": job_id, "attempt": 1, "pid": worker.pid}
    assert JobHandle(job_id, config).result(timeout=RESULT_TIMEOUT_S) == expected

    # A new requester process asks by id too, after the fact.
    with requester(e2e_env, tmp_path / "asker.log", "ask", str(job_id), "30") as asker:
        assert json.loads(asker.line("result ")) == expected
        assert asker.proc.wait(timeout=30) == 0

    assert queue.attempts(job_id) == [(1, "succeeded")]
    assert queue.ledger(job_id) == [(1, worker.pid, True)]
    worker.send(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0


@pytest.mark.usefixtures("jobs")  # the in-process worker needs the definitions
def test_job_run_only_after_its_requester_died_still_delivers(
    queue: Queue,
    config: Config,
    e2e_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """With no worker at all while the requester waits, a worker started after its SIGKILL runs the job, and a second process waiting by id gets the value."""
    with requester(e2e_env, tmp_path / "requester.log", "request", "gated_once", "g2") as child:
        job_id = int(child.line("job "))
        kill_while_waiting(queue, child)
    assert queue.job(job_id)["status"] == "available"

    # A second requester waits by id before any worker runs; then the job runs.
    with requester(e2e_env, tmp_path / "asker.log", "ask", str(job_id), "60") as asker:
        wait_until(
            lambda: outcome_readers(queue) >= 2,
            message="the second requester never started waiting",
        )
        queue.open_gate("g2")
        worker = Worker(config, name="in-process", process_interval_ms=100)
        worker.start()
        try:
            value = json.loads(asker.line("result ", timeout=RESULT_TIMEOUT_S))
        finally:
            worker.stop()
            assert worker.join(timeout=30)
        assert asker.proc.wait(timeout=30) == 0

    assert value["job_id"] == job_id and value["attempt"] == 1
    assert JobHandle(job_id, config).result(timeout=0) == value
    assert queue.attempts(job_id) == [(1, "succeeded")]
