"""The source distribution carries what a packager or a reader needs, and no local caches."""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.e2e._support import REPO


@pytest.mark.slow
def test_sdist_ships_docs_deploy_and_license_and_no_caches(tmp_path: Path) -> None:
    """docs/, deploy/, LICENSE, mkdocs.yml and the tests are in; .hypothesis and bytecode are not."""
    result = subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(tmp_path)],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    (sdist,) = tmp_path.glob("*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    required = {
        "LICENSE",
        "README.md",
        "CHANGELOG.md",
        "mkdocs.yml",
        "pyproject.toml",
        "docs/index.md",
        "docs/operations.md",
        "deploy/docker-compose.yml",
        "deploy/sql/roles.sql",
        "schemas/0001_initial.sql",
        "orchestra/__init__.py",
        "tests/conftest.py",
        "examples/quickstart.py",
    }
    required |= {str(p.relative_to(REPO)) for p in (REPO / "deploy").rglob("*") if p.is_file()}
    assert sorted(required - names) == []
    assert not [n for n in names if n.startswith(".hypothesis/") or "/.hypothesis/" in n]
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
