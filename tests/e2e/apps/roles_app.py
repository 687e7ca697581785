"""The app of the least-privilege roles test: ``--app tests.e2e.apps.roles_app:config``.

It reads ``ORCHESTRA_TEST_DSN`` (each daemon gets the DSN of its own LOGIN
role) and ``E2E_SCHEMA`` from the environment and registers the definitions of
:mod:`tests.e2e.apps.roles_jobs`.
"""

from __future__ import annotations

import os

from orchestra import Config
from tests.e2e.apps.roles_jobs import define

config = Config(os.environ["ORCHESTRA_TEST_DSN"], schema=os.environ["E2E_SCHEMA"])
definitions = define(config)
