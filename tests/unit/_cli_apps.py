"""Apps that the unit tests of the CLI name with ``--app`` (``tests.unit._cli_apps:...``).

Functions, not Configs: ``--app`` calls a function each time it is loaded, so
every test sees the environment of its own moment.
"""

from __future__ import annotations

import os

from orchestra import Config
from tests.unit._support import define

#: The DSN of :func:`fixed`, with a password that no output may show.
FIXED_PASSWORD = "s3cr3t-app"
FIXED_DSN = f"postgresql://app:{FIXED_PASSWORD}@db.internal/app"


def fixed() -> Config:
    """A Config with a DSN and schema of its own, and one definition."""
    config = Config(FIXED_DSN, schema="billing")
    define(config, name="invoice")
    return config


def from_environment() -> Config:
    """A Config that takes its DSN and schema from the environment, as many apps do."""
    return Config(schema=os.environ.get("ORCHESTRA_SCHEMA", "envless"))
