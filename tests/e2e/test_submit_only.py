"""A producer that only defers loads no daemon code and opens no LISTEN.

The producer runs as a real process, so that what it imported and which
connections it opened are its own and nothing else's.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import psycopg

from orchestra import Config
from tests.e2e._support import REPO

PRODUCER = r"""
import json, sys
from psycopg.conninfo import make_conninfo
import orchestra

dsn, schema = sys.argv[1], sys.argv[2]
config = orchestra.Config(
    make_conninfo(dsn, application_name="submit-only-producer"), schema=schema
)
send = orchestra.JobDefinition(config, name="send", job_function=lambda payload: None)
handles = [send.defer({"n": n}) for n in range(3)]
handles += send.defer_many([{"n": n} for n in range(3, 6)])
with config.connection() as conn:
    listening = conn.execute("SELECT count(*) FROM pg_listening_channels()").fetchone()[0]
    listen_sessions = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'submit-only-producer' "
        "AND query ILIKE 'listen%'"
    ).fetchone()[0]
print(json.dumps({
    "ids": [h.id for h in handles],
    "daemon_modules": sorted(
        m for m in sys.modules if m.startswith(("orchestra._worker", "orchestra._orchestrator"))
    ),
    "listening": listening,
    "listen_sessions": listen_sessions,
}))
"""


def test_a_producer_loads_no_daemon_code_and_never_listens(
    config: Config, test_dsn: str, db: psycopg.Connection[Any]
) -> None:
    """Six jobs deferred from a bare process: no Worker/Orchestrator module, no LISTEN."""
    done = subprocess.run(
        [sys.executable, "-c", PRODUCER, test_dsn, config.schema],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["daemon_modules"] == []
    assert report["listening"] == 0
    assert report["listen_sessions"] == 0
    rows = db.execute(f'SELECT id, status::text FROM "{config.schema}".job ORDER BY id').fetchall()
    assert [r[0] for r in rows] == report["ids"]
    assert {r[1] for r in rows} == {"available"}
