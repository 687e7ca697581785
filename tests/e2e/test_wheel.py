"""The built wheel is complete: it migrates a schema with no help from the source tree."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.e2e._support import REPO

#: Run by the installed wheel's interpreter: argv is (site dir, dsn, schema).
CHECK_SCRIPT = """
import sys
from pathlib import Path

import orchestra
from orchestra import Config, _migrate

site = Path(sys.argv[1]).resolve()
for where in (orchestra.__file__, _migrate._schemas_dir()):
    assert Path(str(where)).resolve().is_relative_to(site), f"{where} is not under {site}"
with Config(sys.argv[2], schema=sys.argv[3]) as config:
    print("applied:", config.prepare_schema())
"""


def _run(argv: list[str], *, cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert result.returncode == 0, f"{argv} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.mark.slow
def test_wheel_ships_sql_and_migrates_outside_the_repo(
    tmp_path: Path,
    e2e_env: dict[str, str],
    test_dsn: str,
    schema: str,
    db: psycopg.Connection[Any],
) -> None:
    """The wheel carries its SQL files and py.typed, and prepare_schema works from it alone."""
    dist = tmp_path / "dist"
    _run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist)],
        cwd=REPO,
    )
    wheels = list(dist.glob("*.whl"))
    assert len(wheels) == 1, wheels
    with zipfile.ZipFile(wheels[0]) as archive:
        names = set(archive.namelist())
    required = {
        "orchestra/schemas/0001_initial.sql",
        "orchestra/sql/worker.sql",
        "orchestra/py.typed",
    }
    required |= {f"orchestra/schemas/{p.name}" for p in (REPO / "schemas").glob("*.sql")}
    required |= {f"orchestra/sql/{p.name}" for p in (REPO / "orchestra" / "sql").glob("*.sql")}
    required.add("orchestra/_bench/bench.sql")  # `orchestra bench` loads it from the package
    assert sorted(required - names) == [], sorted(names)
    assert not [n for n in names if n.startswith("tests/")], "the wheel ships the tests"

    site = tmp_path / "site"
    _run(
        [
            sys.executable, "-m", "pip", "install", "--no-deps", "--no-index",
            "--disable-pip-version-check", "--target", str(site), str(wheels[0]),
        ],
        cwd=tmp_path,
    )  # fmt: skip
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**e2e_env, "PYTHONPATH": str(site), "PYTHONSAFEPATH": "1"}
    out = _run(
        [sys.executable, "-c", CHECK_SCRIPT, str(site), test_dsn, schema], cwd=elsewhere, env=env
    )
    shipped = sorted(p.stem for p in (REPO / "schemas").glob("[0-9][0-9][0-9][0-9]_*.sql"))
    assert shipped[0] == "0001_initial"
    assert f"applied: {shipped!r}" in out

    tables = {
        row[0]
        for row in db.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", [schema]
        )
    }
    assert {
        "job",
        "job_history",
        "job_definition",
        "job_attempt",
        "job_dependency",
        "worker",
    } <= tables
    assert "job_archive" not in tables  # folded into job_history
