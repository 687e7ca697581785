"""Importing the embedded PostgreSQL (pgserver) prints nothing where XDG_RUNTIME_DIR is unset.

pgserver asks platformdirs for a runtime directory when it is imported;
without XDG_RUNTIME_DIR (servers, containers, sudo) platformdirs warns, and
every command without a DSN printed that warning and a line of its source.
Only that warning is silenced, only around that import.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest

from orchestra import _embedded

pytest.importorskip("pgserver")

UNSET_MESSAGE = "XDG_RUNTIME_DIR is not set"


def _python(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter without XDG_RUNTIME_DIR, every warning shown."""
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    return subprocess.run(
        [sys.executable, "-W", "default", "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_plain_import_of_pgserver_warns_without_a_runtime_dir() -> None:
    """What the filter is for: pgserver's own import warns (else there is nothing to silence)."""
    result = _python("import pgserver")
    assert result.returncode == 0, result.stderr
    if UNSET_MESSAGE not in result.stderr:
        pytest.skip("this platformdirs does not warn about an unset XDG_RUNTIME_DIR")


def test_orchestra_imports_pgserver_without_the_runtime_dir_warning() -> None:
    """The import orchestra does prints nothing at all."""
    result = _python("from orchestra._embedded import _import_pgserver; _import_pgserver()")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_the_warning_filter_does_not_outlive_the_import() -> None:
    """Other code's warnings (and this one, elsewhere) are shown as before."""
    before = list(warnings.filters)
    _embedded._import_pgserver()
    assert warnings.filters == before
