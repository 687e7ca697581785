"""The lean floor: the least a ``SKIP LOCKED`` queue can do, on the same workloads.

A table of the bench's own in the bench's schema (``lean_q``: id, payload,
status, two timestamps, one partial index; finished rows deleted). It carries
none of orchestra's costs (definitions, channels, priorities, attempts,
leases, finished rows kept, their indexes), so orchestra's ratio to it is what
those cost. Each measurement leaves the table empty.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg import sql

from orchestra import _db
from orchestra._bench._measure import mark, noop, paced


class LeanFloor:
    """The floor's table in ``schema``, and the floor's side of each workload."""

    def __init__(self, dsn: str, schema: str, queries: dict[str, bytes]) -> None:
        self.dsn = dsn
        self.queries = queries
        #: The latency run's NOTIFY channel, per bench schema: two benches do not mix.
        self.channel = f"bench_{schema}"

    @contextlib.contextmanager
    def _conn(self) -> Iterator[psycopg.Connection[Any]]:
        with _db.connect(self.dsn) as conn:
            yield conn

    def create(self) -> None:
        """Create ``lean_q`` and its one index."""
        with self._conn() as conn:
            conn.execute(self.queries["bench_lean_create_table"])
            conn.execute(self.queries["bench_lean_create_index"])

    def _reset(self) -> None:
        with self._conn() as conn:
            conn.execute(self.queries["bench_lean_reset"])

    def _copy(self, count: int) -> None:
        with (
            self._conn() as conn,
            conn.cursor() as cursor,
            cursor.copy(self.queries["bench_lean_copy"]) as copy,
        ):
            for _ in range(count):
                copy.write_row(("{}",))

    def single_inserts(self, count: int) -> float:
        """Jobs/s of ``count`` INSERTs, each its own transaction (a single defer's floor)."""
        with self._conn() as conn:
            started = time.perf_counter()
            for _ in range(count):
                conn.execute(self.queries["bench_lean_insert"], {"payload": "{}"})
            rate = count / (time.perf_counter() - started)
        self._reset()
        return rate

    def copy(self, count: int) -> float:
        """Jobs/s of one COPY of ``count`` rows (defer_many's floor)."""
        started = time.perf_counter()
        self._copy(count)
        rate = count / (time.perf_counter() - started)
        self._reset()
        return rate

    def processing(self, total: int) -> tuple[float, float]:
        """Seconds to drain ``total`` jobs, and from 10 % to 90 % of them.

        One connection claims 100, runs a no-op per row and deletes the 100.
        """
        self._copy(total)
        with self._conn() as conn:
            conn.execute(self.queries["bench_lean_analyze"])
        done = 0
        marks: dict[str, float] = {}
        with self._conn() as conn:
            started = time.perf_counter()
            while True:
                # Autocommit: each statement is its own transaction, no BEGIN/COMMIT trips.
                rows = conn.execute(self.queries["bench_lean_claim"]).fetchall()
                if not rows:
                    break
                for _ in rows:
                    noop()
                conn.execute(self.queries["bench_lean_delete"], {"ids": [r[0] for r in rows]})
                done += len(rows)
                mark(marks, done, total, time.perf_counter())
            elapsed = time.perf_counter() - started
        if done != total:
            raise RuntimeError(f"the lean floor drained {done} of {total} jobs")
        self._reset()
        return elapsed, marks["90"] - marks["10"]

    def latency(self, count: int, rate: float) -> list[float]:
        """Seconds from INSERT + NOTIFY to the claim by a listener the NOTIFY woke."""
        ready = threading.Event()
        values: list[float] = []

        def listen() -> None:
            with self._conn() as conn:
                conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                ready.set()
                while len(values) < count:
                    # Drained before the claim: the generator holds the connection.
                    if not list(conn.notifies(timeout=1.0, stop_after=1)):
                        continue
                    rows = conn.execute(self.queries["bench_lean_claim"]).fetchall()
                    now = time.time()
                    values.extend(now - float(payload["t0"]) for _, payload in rows)
                    if rows:
                        conn.execute(
                            self.queries["bench_lean_delete"], {"ids": [r[0] for r in rows]}
                        )

        thread = threading.Thread(target=listen, name="bench-floor-listener", daemon=True)
        thread.start()
        ready.wait(30)
        with self._conn() as conn:

            def insert() -> None:
                conn.execute(
                    self.queries["bench_lean_insert_notify"],
                    {"payload": json.dumps({"t0": time.time()}), "notify_channel": self.channel},
                )

            paced(count, rate, insert)
        thread.join(30)
        self._reset()
        return values
