"""Where a command finds its queue: option, else environment variable, else the app, else default.

Click puts an option's value, else its variable's, in the command's
parameters; ``resolve_config`` fills in the rest from the app's Config and the
defaults, and refuses a daemon a DSN or schema that is not its app's own.
Nothing here connects.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import click
import pytest
from click.core import ParameterSource

from orchestra import Config
from orchestra._database import DEFAULT_SCHEMA
from orchestra.cli._app import WHERE_HELP, resolve_config
from orchestra.errors import ConfigurationError
from tests.unit._cli_apps import FIXED_DSN, FIXED_PASSWORD

FIXED = "tests.unit._cli_apps:fixed"
FROM_ENVIRONMENT = "tests.unit._cli_apps:from_environment"
OTHER_DSN = "postgresql://ops@replica.internal/app"


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """A copy of the environment for the test (resolve_config exports to it), without our variables."""
    copy = {
        k: v
        for k, v in os.environ.items()
        if k not in ("ORCHESTRA_DSN", "ORCHESTRA_SCHEMA", "ORCHESTRA_APP")
    }
    monkeypatch.setattr(os, "environ", copy)
    yield copy


def resolve(
    app_ref: str | None = None,
    dsn: str | None = None,
    schema: str | None = None,
    *,
    source: ParameterSource = ParameterSource.COMMANDLINE,
    runs_definitions: bool = False,
) -> Config:
    """resolve_config as a command would call it, each given value coming from ``source``."""
    ctx = click.Context(click.Command("test"))
    for name, value in (("app_ref", app_ref), ("dsn", dsn), ("schema", schema)):
        ctx.set_parameter_source(name, source if value is not None else ParameterSource.DEFAULT)
    return resolve_config(ctx, app_ref, dsn, schema, runs_definitions=runs_definitions)


def test_without_an_app_the_options_are_used_else_the_default_schema() -> None:
    """No app: the DSN and schema given, and the schema ``_queue`` when none is."""
    given = resolve(dsn=OTHER_DSN, schema="ops")
    assert (given.dsn, given.schema) == (OTHER_DSN, "ops")
    assert resolve(dsn=OTHER_DSN).schema == DEFAULT_SCHEMA


def test_an_app_alone_is_used_as_it_is() -> None:
    """Only --app: its own Config, DSN, schema and definitions."""
    config = resolve(FIXED)
    assert (config.dsn, config.schema) == (FIXED_DSN, "billing")
    assert list(config.definitions) == ["invoice"]


@pytest.mark.parametrize(
    "source", [ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT], ids=["option", "variable"]
)
def test_an_option_or_variable_overrides_the_apps_schema_and_dsn(source: ParameterSource) -> None:
    """--schema or $ORCHESTRA_SCHEMA (and the DSN alike) beat the app's; its definitions stay."""
    schema_only = resolve(FIXED, schema="ops", source=source)
    assert (schema_only.dsn, schema_only.schema) == (FIXED_DSN, "ops")
    assert list(schema_only.definitions) == ["invoice"]

    both = resolve(FIXED, dsn=OTHER_DSN, schema="ops", source=source)
    assert (both.dsn, both.schema) == (OTHER_DSN, "ops")


def test_an_app_that_reads_the_environment_follows_the_options(
    environment: dict[str, str],
) -> None:
    """--dsn and --schema are exported before the app is imported: its own Config follows them."""
    config = resolve(FROM_ENVIRONMENT, dsn=OTHER_DSN, schema="ops", runs_definitions=True)
    assert (config.dsn, config.schema) == (OTHER_DSN, "ops")
    assert (environment["ORCHESTRA_DSN"], environment["ORCHESTRA_SCHEMA"]) == (OTHER_DSN, "ops")


def test_a_daemon_may_repeat_its_apps_schema_and_dsn() -> None:
    """The daemon gets its app's Config when the options say the same."""
    config = resolve(FIXED, dsn=FIXED_DSN, schema="billing", runs_definitions=True)
    assert (config.dsn, config.schema, list(config.definitions)) == (
        FIXED_DSN,
        "billing",
        ["invoice"],
    )


@pytest.mark.parametrize(
    ("source", "named"),
    [(ParameterSource.COMMANDLINE, "--schema"), (ParameterSource.ENVIRONMENT, "$ORCHESTRA_SCHEMA")],
    ids=["option", "variable"],
)
def test_a_daemon_refuses_a_schema_that_is_not_its_apps(
    source: ParameterSource, named: str
) -> None:
    """Its definitions belong to the app's Config: another schema is a usage error naming both."""
    with pytest.raises(ConfigurationError) as raised:
        resolve(FIXED, schema="ops", source=source, runs_definitions=True)
    assert raised.value.argument == named
    assert "'ops'" in str(raised.value) and "'billing'" in str(raised.value)


def test_a_daemon_refuses_a_dsn_that_is_not_its_apps_without_showing_passwords() -> None:
    """Another DSN is a usage error naming both, the app's password hidden."""
    with pytest.raises(ConfigurationError) as raised:
        resolve(FIXED, dsn=OTHER_DSN, runs_definitions=True)
    message = str(raised.value)
    assert raised.value.argument == "--dsn"
    assert OTHER_DSN in message and "db.internal" in message
    assert FIXED_PASSWORD not in message


def test_the_precedence_is_stated_once_with_every_variable() -> None:
    """The help says the order and names the three variables."""
    for text in ("$ORCHESTRA_APP", "$ORCHESTRA_DSN", "$ORCHESTRA_SCHEMA", "else the Config"):
        assert text in WHERE_HELP
