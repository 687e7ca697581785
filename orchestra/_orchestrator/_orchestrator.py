"""The Orchestrator daemon: leader lease plus the maintenance services.

Every orchestrator heartbeats the definitions it carries. The one that holds
the leader lease also runs the scheduler (repeat and cron ticks), the rescuer,
the finalizer (timeouts, dependencies), the sweeper and the queue gauges
(metrics), each once at start and then on its interval. Several
orchestrators may run for availability; a leader that dies is replaced within
about one lease period.

Services are synchronous (one connection, one statement at a time) and run in
a worker thread, so the event loop stays free to notice a stop request.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
import uuid
from collections.abc import Iterable
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from orchestra import _db, _migrate, events
from orchestra._checks import is_int, milliseconds
from orchestra._config import Config
from orchestra._daemon import Daemon
from orchestra._orchestrator._finalizer import Finalizer
from orchestra._orchestrator._gauges import QueueGauges
from orchestra._orchestrator._heartbeat import DefinitionHeartbeat
from orchestra._orchestrator._leader import Elector
from orchestra._orchestrator._rescuer import Rescuer
from orchestra._orchestrator._scheduler import RepeatScheduler
from orchestra._orchestrator._service import BATCH_SIZE_DEFAULT, RunResult, Service
from orchestra._orchestrator._sweeper import Sweeper
from orchestra.errors import ConfigurationError

logger = logging.getLogger("orchestra.orchestrator")

#: After a failed pass, retry sooner than a long interval would.
FAILED_PASS_RETRY_S = 5.0


def _interval(value: int | dt.timedelta, argument: str, minimum: int = 10) -> int:
    result = milliseconds(value, argument) or 0
    if result < minimum:
        raise ConfigurationError(argument, f"must be at least {minimum} ms, got {result}")
    return result


class Orchestrator(Daemon):
    """Keeps the queue healthy: schedules repeatable jobs, rescues, finalizes, sweeps.

    Args:
        config: the queue's Config; its registered definitions are heartbeated
            and, for repeatable ones, scheduled.
        name: shown in events, logs and the worker table (``<name>-orchestrator``).
        event_handler: a callable, or several, receiving :mod:`orchestra.events`.
        repeat_interval_ms: the scheduler's longest sleep (it wakes for the next tick).
        heartbeat_interval_ms: definition heartbeats.
        clean_interval_ms: sweeps of finished jobs and stale definitions.
        stale_definition_threshold_ms: a definition without heartbeat for this
            long, and without jobs, is deleted.
        finalized_job_threshold_ms: with ``archive=False``, the retention of
            finished jobs: those that finished longer ago than this are
            deleted from ``job_history`` (a whole partition at a time when
            all its jobs have).
        rescue_interval_ms: how often expired leases and stale workers are looked for.
        worker_stale_threshold_ms: a worker silent this long is considered dead.
        finalize_interval_ms: timeouts and the dependency cascade.
        leader_lease_ms: the leader lease; a dead leader is replaced after about this long.
        gauges_interval_ms: how often queue depth and live daemons are counted,
            and the oldest transaction and the job table's dead rows read
            (OrchestratorQueueGauges, for metrics).
        archive: keep finished jobs in ``job_history`` for
            ``archive_retention_ms`` instead of ``finalized_job_threshold_ms``.
        archive_retention_ms: with ``archive=True``, the retention of finished
            jobs (None, the default: keep them for ever).
        batch_size: rows per maintenance statement.
    """

    role = "orchestrator"

    def __init__(
        self,
        config: Config,
        *,
        name: str = "anon",
        event_handler: events.EventHandler | Iterable[events.EventHandler] | None = None,
        repeat_interval_ms: int | dt.timedelta = 30_000,
        heartbeat_interval_ms: int | dt.timedelta = 60_000,
        clean_interval_ms: int | dt.timedelta = 300_000,
        stale_definition_threshold_ms: int | dt.timedelta = 3_600_000,
        finalized_job_threshold_ms: int | dt.timedelta = 43_200_000,
        rescue_interval_ms: int | dt.timedelta = 5_000,
        worker_stale_threshold_ms: int | dt.timedelta = 60_000,
        finalize_interval_ms: int | dt.timedelta = 5_000,
        leader_lease_ms: int | dt.timedelta = 15_000,
        gauges_interval_ms: int | dt.timedelta = 15_000,
        archive: bool = False,
        archive_retention_ms: int | dt.timedelta | None = None,
        batch_size: int = BATCH_SIZE_DEFAULT,
    ) -> None:
        super().__init__(name=name, event_handler=event_handler)
        if not isinstance(config, Config):
            raise ConfigurationError(
                "config", f"must be an orchestra Config, not {type(config).__name__}"
            )
        if not is_int(batch_size) or not 1 <= batch_size <= 100_000:
            raise ConfigurationError(
                "batch_size", f"must be an int from 1 to 100000, got {batch_size!r}"
            )
        self.config = config
        self.leader_lease_ms = _interval(leader_lease_ms, "leader_lease_ms", 200)
        worker_stale = _interval(worker_stale_threshold_ms, "worker_stale_threshold_ms", 100)
        self.services: list[Service] = [
            DefinitionHeartbeat(
                config,
                interval_ms=_interval(heartbeat_interval_ms, "heartbeat_interval_ms"),
                origin=self._origin,
            ),
            RepeatScheduler(
                config,
                interval_ms=_interval(repeat_interval_ms, "repeat_interval_ms"),
                origin=self._origin,
            ),
            Rescuer(
                config,
                interval_ms=_interval(rescue_interval_ms, "rescue_interval_ms"),
                worker_stale_threshold_ms=worker_stale,
                batch_size=batch_size,
                origin=self._origin,
            ),
            Finalizer(
                config,
                interval_ms=_interval(finalize_interval_ms, "finalize_interval_ms"),
                batch_size=batch_size,
                origin=self._origin,
            ),
            Sweeper(
                config,
                interval_ms=_interval(clean_interval_ms, "clean_interval_ms"),
                finalized_job_threshold_ms=_interval(
                    finalized_job_threshold_ms, "finalized_job_threshold_ms", 0
                ),
                stale_definition_threshold_ms=_interval(
                    stale_definition_threshold_ms, "stale_definition_threshold_ms", 0
                ),
                archive=bool(archive),
                archive_retention_ms=None
                if archive_retention_ms is None
                else _interval(archive_retention_ms, "archive_retention_ms", 0),
                batch_size=batch_size,
                origin=self._origin,
            ),
            QueueGauges(
                config,
                interval_ms=_interval(gauges_interval_ms, "gauges_interval_ms"),
                worker_stale_threshold_ms=worker_stale,
                origin=self._origin,
            ),
        ]
        self.elector = Elector(
            config,
            holder=f"{self.host}:{self.pid}:{self.daemon_id}:{uuid.uuid4().hex[:8]}",
            lease_ms=self.leader_lease_ms,
        )
        self.worker_id: int | None = None
        self.passes: dict[str, int] = {service.name: 0 for service in self.services}
        self._pool: ConnectionPool[Any] | None = None
        self._was_leader = False
        self._busy = False

    def _in_flight(self) -> int:
        return int(self._busy)

    @property
    def is_leader(self) -> bool:
        """True while this orchestrator holds (and trusts) the leader lease."""
        return self.elector.is_leader

    # -- lifecycle ------------------------------------------------------------

    async def _main(self) -> None:
        await asyncio.to_thread(self._start_up)
        self._emit(events.DaemonStarted(**self._origin.header(), host=self.host, pid=self.pid))
        self._ready()
        error: str | None = None
        try:
            await self._maintain()
        except BaseException as exc:
            error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            await asyncio.to_thread(self._shut_down)
            self._emit(events.DaemonStopped(**self._origin.header(), error=error, handed_back=0))

    def _start_up(self) -> None:
        with self.config.connect() as conn:
            _migrate.check(conn, self.config.schema)
            for definition in self.config.definitions.values():
                definition.upsert(conn)
            self.worker_id = self._register(conn)
        self._pool = ConnectionPool(
            self.config.dsn,
            min_size=1,
            max_size=2,
            kwargs=self.config.connect_kwargs,
            open=False,
            name=f"orchestra-{self.daemon_name}",
        )
        self._pool.open(wait=True, timeout=30)

    def _register(self, conn: psycopg.Connection[Any]) -> int:
        row = conn.execute(
            self.config.queries["worker_register"],
            {
                "name": self.name,
                "role": "orchestrator",
                "host": self.host,
                "pid": self.pid,
                "channels": None,
                "concurrency": None,
                "secret": self.secret,
            },
        ).fetchone()
        assert row is not None
        return int(row[0])

    def _shut_down(self) -> None:
        if self._pool is None:
            return
        try:
            with self._pool.connection(timeout=5) as conn:
                # Always: a lease whose trust lapsed during a slow pass may still
                # be ours in the table; the DELETE only matches our holder id.
                self.elector.resign(conn)
                if self.worker_id is not None:
                    conn.execute(
                        self.config.queries["worker_delete"],
                        {"worker_id": self.worker_id, "secret": self.secret},
                    )
        except Exception:
            logger.warning(
                "%s: could not resign or deregister cleanly", self.daemon_name, exc_info=True
            )
        if self._was_leader:
            self._was_leader = False
            self._emit(events.OrchestratorLeadershipLost(**self._origin.header(), reason="stopped"))
        self._pool.close()

    # -- the loop ---------------------------------------------------------------

    async def _maintain(self) -> None:
        due = {service.name: 0.0 for service in self.services}  # all run at start
        next_elect = 0.0
        while not self.stopping:
            if time.monotonic() >= next_elect:
                became_leader = await asyncio.to_thread(self._elect_step)
                next_elect = time.monotonic() + self.elector.try_interval_s
                if became_leader:
                    for service in self.services:
                        if service.leader_only:
                            due[service.name] = 0.0
            self._notice_expiry()
            for service in self.services:
                if self._stop_event.is_set():  # a stop may arrive during a pass
                    break
                if service.leader_only and not self.is_leader:
                    continue
                if time.monotonic() >= due[service.name]:
                    result = await asyncio.to_thread(self._run_service, service)
                    delay = result.next_run_in_s
                    if delay is None:
                        delay = service.interval_ms / 1000
                    due[service.name] = time.monotonic() + delay
            runnable = [due[s.name] for s in self.services if self.is_leader or not s.leader_only]
            wake_at = min([next_elect, *runnable])
            await self._sleep_or_wake(max(0.005, wake_at - time.monotonic()))

    def _elect_step(self) -> bool:
        """Take or renew the lease and refresh this daemon's row; True if newly leader."""
        assert self._pool is not None
        try:
            with self._pool.connection() as conn:
                held = self.elector.attempt(conn)
                touched = conn.execute(
                    self.config.queries["worker_touch"],
                    {"worker_id": self.worker_id, "secret": self.secret},
                ).fetchone()
                if touched is None or not touched[0]:
                    self.worker_id = self._register(conn)
        except Exception as exc:
            self.elector.forget()
            message = _db.redact(f"{type(exc).__name__}: {exc}".strip())
            logger.warning("%s: leader election failed: %s", self.daemon_name, message)
            # Every orchestrator elects, leader or not: each one reports an outage.
            self._database_error("election", exc, message, self.elector.try_interval_s)
            if self._was_leader:
                self._was_leader = False
                self._emit(
                    events.OrchestratorLeadershipLost(**self._origin.header(), reason=message)
                )
            return False
        if held and not self._was_leader:
            self._was_leader = True
            self._emit(
                events.OrchestratorLeadershipAcquired(
                    **self._origin.header(), lease_ms=self.leader_lease_ms
                )
            )
            return True
        if not held and self._was_leader:
            self._was_leader = False
            self._emit(events.OrchestratorLeadershipLost(**self._origin.header(), reason="taken"))
        return False

    def _notice_expiry(self) -> None:
        if self._was_leader and not self.is_leader:
            self._was_leader = False
            self._emit(
                events.OrchestratorLeadershipLost(
                    **self._origin.header(), reason="lease not renewed in time"
                )
            )

    def _database_error(
        self, operation: str, exc: BaseException, message: str, retry_in_s: float
    ) -> None:
        """Emit DaemonDatabaseError if ``exc`` came from the database or the pool (not a bug).

        As a worker does: the same event, and metric, for every daemon that
        lost the database.
        """
        if isinstance(exc, psycopg.Error) or "pool" in type(exc).__module__:
            self._emit(
                events.DaemonDatabaseError(
                    **self._origin.header(),
                    operation=operation,
                    error=message,
                    retry_in_ms=round(retry_in_s * 1000),
                )
            )

    def _run_service(self, service: Service) -> RunResult:
        assert self._pool is not None
        self._busy = True
        try:
            with self._pool.connection() as conn:
                result = service.run_once(conn)
        except Exception as exc:
            message = _db.redact(f"{type(exc).__name__}: {exc}".strip())
            if isinstance(exc, psycopg.OperationalError) or "pool" in type(exc).__module__:
                # The database is away (restarting, failing over): one line, no
                # traceback; the pass is retried.
                logger.warning("%s: %s pass failed: %s", self.daemon_name, service.name, message)
            else:
                logger.exception("%s: %s pass failed", self.daemon_name, service.name)
            retry_in_s = min(FAILED_PASS_RETRY_S, service.interval_ms / 1000)
            self._emit(
                events.OrchestratorServiceFailed(
                    **self._origin.header(), service=service.name, error=message
                )
            )
            self._database_error(service.name, exc, message, retry_in_s)
            return RunResult(service.name, next_run_in_s=retry_in_s)
        finally:
            self._busy = False
        self.passes[service.name] += 1
        for event in result.events:
            self._emit(event)
        if any(result.counts.values()):
            logger.debug(
                "%s: %s %s",
                self.daemon_name,
                service.name,
                " ".join(f"{k}={v}" for k, v in result.counts.items() if v),
            )
        return result
