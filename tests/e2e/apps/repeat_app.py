"""The repeat test app: ``orchestra daemon --app tests.e2e.apps.repeat_app:config``.

It reads ``ORCHESTRA_TEST_DSN`` and ``E2E_SCHEMA`` from the environment and
registers, on the default channel:

* ``every_second``: an interval definition (``repeat_interval_ms=1000``), so
  its ticks are the whole seconds since the epoch; ``overlap=True``, so no tick
  is ever skipped because the previous tick's job is still unfinished, and a
  missing tick can only be a tick the scheduler coalesced;
* ``every_two_seconds``: a cron definition with a seconds field (every even
  second), with the default ``overlap=False``;
* the definitions of :mod:`tests.e2e.apps._jobs` (``gated`` ...), so that one
  app serves orchestrators and workers alike.

Every job runs :func:`tests.e2e.apps._jobs.record`, which logs its execution
in the schema's ``ledger`` table.
"""

from __future__ import annotations

import os

from orchestra import Config, JobDefinition
from tests.e2e.apps._jobs import LOCK_INTERVAL_MS, define, record

INTERVAL = "every_second"
CRON = "every_two_seconds"
INTERVAL_MS = 1_000
#: croniter reads a sixth field as seconds: every even second.
CRON_EXPRESSION = "* * * * * */2"
CRON_PERIOD_S = 2

config = Config(os.environ["ORCHESTRA_TEST_DSN"], schema=os.environ["E2E_SCHEMA"])
definitions = define(config)
definitions[INTERVAL] = JobDefinition(
    config,
    name=INTERVAL,
    job_function=record,
    repeat_interval_ms=INTERVAL_MS,
    overlap=True,
    lock_interval_ms=LOCK_INTERVAL_MS,
)
definitions[CRON] = JobDefinition(
    config,
    name=CRON,
    job_function=record,
    cron=CRON_EXPRESSION,
    lock_interval_ms=LOCK_INTERVAL_MS,
)
