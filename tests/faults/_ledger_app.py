"""The fault battery's app: ``orchestra daemon --app tests.faults._ledger_app:config``.

It reads ``ORCHESTRA_TEST_DSN`` and ``E2E_SCHEMA`` from the environment (the
``e2e_env`` fixture sets both), marks the daemon's connections with the
application_name of :func:`~tests.faults._ledger.daemon_application_name` (so
a case can find and terminate them) and registers the definitions of
:mod:`tests.faults._ledger`: all but the repeating ``tick`` one in ``config``,
all of them in ``with_ticks()``.

Behind a transaction pooler the environment says so too, and orchestra reads
it: ``ORCHESTRA_TRANSACTION_POOLING=1`` and ``ORCHESTRA_LISTEN_DSN`` (the
direct DSN for LISTEN), with ``ORCHESTRA_TEST_DSN`` leading to the pooler.
"""

from __future__ import annotations

import os

from psycopg.conninfo import make_conninfo

from orchestra import Config
from tests.faults._ledger import daemon_application_name, define


def _build(*, ticks: bool) -> Config:
    schema = os.environ["E2E_SCHEMA"]
    built = Config(
        make_conninfo(
            os.environ["ORCHESTRA_TEST_DSN"], application_name=daemon_application_name(schema)
        ),
        schema=schema,
    )
    define(built, ticks=ticks)
    return built


#: Every definition but the repeat one: no background ticks in the cases about jobs.
config = _build(ticks=False)


def with_ticks() -> Config:
    """The same app with the repeating ``tick`` definition (``--app ...:with_ticks``)."""
    return _build(ticks=True)
