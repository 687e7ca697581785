"""The e2e test app: ``orchestra daemon --role worker --app tests.e2e.apps.ledger_app:config``.

It reads ``ORCHESTRA_TEST_DSN`` and ``E2E_SCHEMA`` from the environment and
registers the definitions of :mod:`tests.e2e.apps._jobs`, whose functions
record every execution in the schema's ``ledger`` table.
"""

from __future__ import annotations

import os

from orchestra import Config
from tests.e2e.apps._jobs import define

config = Config(os.environ["ORCHESTRA_TEST_DSN"], schema=os.environ["E2E_SCHEMA"])
definitions = define(config)
