"""The worker's claim and fenced finish statements, run by hand in tests.

Tests that play the worker's part step by step (claim, then finish late,
twice, or behind a rescue) call these instead of building the statements'
parameters themselves.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any

import psycopg

from orchestra import Config

#: The error a failed attempt records unless a test gives its own.
FAILED_ERROR = "RuntimeError: boom"


def claim(
    conn: psycopg.Connection[Any],
    config: Config,
    *,
    channel: str = "_default",
    channels: Sequence[str] | None = None,
    now: dt.datetime | None = None,
    limit: int = 100,
    worker_id: int = 1,
) -> list[tuple[Any, ...]]:
    """Run ``job_claim`` as worker ``worker_id`` of ``channels`` (else of ``channel``);
    the claimed rows."""
    return conn.execute(
        config.queries["job_claim"],
        {
            "channels": [channel] if channels is None else list(channels),
            "now": now,
            "limit": limit,
            "worker_id": worker_id,
            "claim_id": str(uuid.uuid4()),
        },
    ).fetchall()


def finish_params(
    config: Config,
    *,
    job_id: int,
    attempt: int,
    token: uuid.UUID,
    started_at: dt.datetime,
    outcome: str,
    result: Any = None,
    error: str | None = None,
    worker_id: int = 1,
    worker_name: str = "t",
) -> dict[str, Any]:
    """The parameters of ``job_finish_many`` for one attempt."""
    if error is None and outcome == "failed":
        error = FAILED_ERROR
    return {
        "ids": [job_id],
        "attempts": [attempt],
        "tokens": [token],
        "outcomes": [outcome],
        "results": [result],
        "errors": [error],
        "tracebacks": [None],
        "retry_delays_ms": [0],
        "started_ats": [started_at],
        "progresses": [None],
        "worker_id": worker_id,
        "worker_name": worker_name,
        "notify_channel": config.notify_channel,
        "finished_channel": config.finished_channel,
    }


def finish(
    conn: psycopg.Connection[Any],
    config: Config,
    claimed: tuple[Any, ...],
    outcome: str,
    result: str | None = None,
    *,
    error: str | None = None,
) -> list[tuple[Any, ...]]:
    """Record the end of an attempt claimed by :func:`claim`; the rows the fence let through."""
    return conn.execute(
        config.queries["job_finish_many"],
        finish_params(
            config,
            job_id=claimed[0],
            attempt=claimed[3],
            token=claimed[5],
            started_at=claimed[6],
            outcome=outcome,
            result=result,
            error=error,
        ),
    ).fetchall()
