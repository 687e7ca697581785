"""The fault battery's hostile job app:
``orchestra daemon --role worker --app tests.faults._hostile_app:config --channel hostile-thread``.

It reads ``ORCHESTRA_TEST_DSN`` and ``E2E_SCHEMA`` from the environment and
registers the definitions of :mod:`tests.faults._hostile_jobs`.
"""

from __future__ import annotations

import os

from orchestra import Config
from tests.faults._hostile_jobs import define

config = Config(os.environ["ORCHESTRA_TEST_DSN"], schema=os.environ["E2E_SCHEMA"])
definitions = define(config)
