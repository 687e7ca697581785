"""orchestra.pytest_plugin: an application's tests use orchestra_drain and orchestra_inline.

Each test runs an inner pytest session in a subprocess, with the plugin loaded by
``-p`` (automatic loading is turned off there, so that the test does not
depend on how orchestra was installed).
"""

from __future__ import annotations

import textwrap

import pytest

from tests.conftest import REPO

pytest_plugins = ("pytester",)

CONFTEST = """
import psycopg
import pytest

from orchestra import Config

from app import config as app_config


@pytest.fixture
def orchestra_config():
    app_config.prepare_schema()
    yield app_config
    app_config.close()
    with psycopg.connect({dsn!r}, autocommit=True) as conn:
        conn.execute('DROP SCHEMA IF EXISTS "{schema}" CASCADE')
"""

APP = """
from orchestra import Config, JobDefinition

config = Config({dsn!r}, schema="{schema}")
sent = []


def send_welcome(payload):
    if payload["email"].endswith("@bounce.example"):
        raise ValueError("mailbox unavailable")
    sent.append(payload["email"])
    return "sent"


welcome = JobDefinition(config, name="welcome", job_function=send_welcome, num_attempts=2)


def sign_up(email):
    # The application's code under test: it defers, it does not run the job.
    return welcome.defer({{"email": email}})
"""

TESTS = """
import pytest

from orchestra import JobFailed
from orchestra.testing import DrainResult, assert_deferred

import app


def test_sign_up_defers_a_welcome_mail(orchestra_config):
    app.sign_up("ada@example.com")
    assert_deferred(orchestra_config, app.welcome, {"email": "ada@example.com"})
    assert app.sent == []


def test_drain_sends_it(orchestra_config, orchestra_drain):
    app.sent.clear()
    app.sign_up("bob@example.com")
    app.sign_up("eve@bounce.example")
    result = orchestra_drain(with_scheduled=True)
    assert result == DrainResult(succeeded=1, retried=1, failed=1)
    assert app.sent == ["bob@example.com"]


def test_inline_sends_it_before_defer_returns(orchestra_inline):
    app.sent.clear()
    handle = app.sign_up("cleo@example.com")
    assert app.sent == ["cleo@example.com"]
    assert handle.result(timeout=0) == "sent"
    with pytest.raises(JobFailed, match="mailbox unavailable"):
        app.sign_up("dan@bounce.example").result(timeout=0)
    assert [a.status for a in orchestra_inline.attempts] == ["succeeded", "available", "failed"]


def test_inline_ends_with_the_test(orchestra_config):
    app.sent.clear()
    app.sign_up("fay@example.com")
    assert app.sent == []
"""


def _write_project(pytester: pytest.Pytester, dsn: str, schema: str) -> None:
    pytester.makepyfile(app=APP.format(dsn=dsn, schema=schema))
    pytester.makeconftest(CONFTEST.format(dsn=dsn, schema=schema))
    pytester.makepyfile(test_signup=TESTS)


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(
        "-p", "orchestra.pytest_plugin", "-p", "no:cacheprovider", *args
    )


@pytest.fixture
def inner(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A pytester whose sessions find orchestra and load no plugin by themselves."""
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    return pytester


def test_an_applications_tests_use_the_fixtures(
    inner: pytest.Pytester, test_dsn: str, schema: str
) -> None:
    """Assertions, drain and inline work from a user's test module, inline for one test only."""
    _write_project(inner, test_dsn, schema)
    result = _run(inner, "-q")
    result.assert_outcomes(passed=4)


def test_without_an_orchestra_config_the_error_says_what_to_define(
    inner: pytest.Pytester,
) -> None:
    """A test asking for a fixture without orchestra_config overridden errors with one line."""
    inner.makepyfile(
        test_missing=textwrap.dedent(
            """
            def test_drain(orchestra_drain):
                pass
            """
        )
    )
    result = _run(inner, "-q")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*orchestra_config: define a fixture of that name*"])
    result.stdout.no_fnmatch_line("*Traceback*")


def test_the_plugin_imports_nothing_of_orchestra_until_a_fixture_is_used(
    inner: pytest.Pytester,
) -> None:
    """Loading the plugin leaves orchestra.testing (and the worker) unimported."""
    inner.makepyfile(
        test_lazy=textwrap.dedent(
            """
            import sys

            def test_nothing_imported():
                assert "orchestra.testing" not in sys.modules
                assert "orchestra._worker" not in sys.modules
            """
        )
    )
    _run(inner, "-q").assert_outcomes(passed=1)


def test_the_testing_example_passes(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, test_dsn: str, schema: str
) -> None:
    """examples/signup_tests.py, a user's tests of their jobs, passes as it is shown."""
    monkeypatch.setenv("ORCHESTRA_DSN", test_dsn)
    monkeypatch.setenv("EXAMPLE_SCHEMA", schema)
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    result = pytester.runpytest_subprocess(
        str(REPO / "examples" / "signup_tests.py"),
        "-p",
        "orchestra.pytest_plugin",
        "-p",
        "no:cacheprovider",
        "-q",
    )
    result.assert_outcomes(passed=4)
