"""The bench is a package of its own: its queries and modules stay out of the runtime."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from orchestra import _sql
from orchestra._bench._measure import bench_queries

BENCH_DIR = Path(__file__).resolve().parents[2] / "orchestra" / "_bench"


def test_the_runtime_query_set_holds_no_bench_query() -> None:
    """The queries every Config renders come from orchestra/sql alone, without the bench's."""
    assert [name for name in _sql.all_queries() if name.startswith("bench_")] == []


def test_bench_queries_render_for_the_bench_schema() -> None:
    """bench.sql loads beside the bench's modules and renders with the schema quoted."""
    queries = bench_queries("orchestra_bench_x")
    assert {"bench_lean_claim", "bench_reset", "bench_pgqueuer_reset"} <= set(queries)
    for name, rendered in queries.items():
        assert b"{schema}" not in rendered, name
        assert b'"orchestra_bench_x".' in rendered, name


def test_every_bench_query_is_used_by_the_bench() -> None:
    """No query of bench.sql is left unread by the bench's modules."""
    source = "\n".join(path.read_text() for path in BENCH_DIR.glob("*.py"))
    used = set(re.findall(r'"(bench_[a-z_]+)"', source))
    assert sorted(set(bench_queries("x")) - used) == []


def test_importing_the_runtime_and_the_cli_does_not_load_the_bench() -> None:
    """Config, workers, orchestrators, the dashboard and the CLI import none of the bench."""
    code = (
        "import sys\n"
        "import orchestra, orchestra._worker, orchestra._orchestrator, orchestra.dashboard\n"
        "import orchestra.cli\n"
        "orchestra.Config('postgresql://nobody@127.0.0.1:1/x').queries['job_claim']\n"
        "print(sorted(m for m in sys.modules if m.startswith('orchestra._bench')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]", done.stderr
