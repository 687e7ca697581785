"""``orchestra jobs show ID`` prints the job's workflow: what it depends on and what
depends on it, as two trees with each job's definition and status; --json has the graph."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from orchestra import Config, JobDefinition, chord
from orchestra.testing import drain
from tests.e2e._support import REPO, orchestra_argv


def square(payload: dict[str, int]) -> int:
    return payload["n"] ** 2


def run(*args: str, env: dict[str, str]) -> str:
    """Run ``orchestra *args``; assert exit 0 and no traceback; return stdout."""
    done = subprocess.run(
        orchestra_argv(*args),
        env={**env, "COLUMNS": "100"},
        cwd=REPO,
        input="",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    return done.stdout


def test_jobs_show_prints_dependencies_and_dependents_as_trees(
    e2e_env: dict[str, str], test_dsn: str, schema: str, config: Config
) -> None:
    """A chord's callback: its members above it (succeeded), the job after it below."""
    squares = JobDefinition(config, name="square", job_function=square)
    totals = JobDefinition(config, name="sum-squares", job_function=square)
    workflow = chord([squares.job({"n": n}) for n in (1, 2)], then=totals.job({"n": 0}))
    assert workflow.callback is not None
    report = JobDefinition(config, name="report", job_function=square).defer(
        {"n": 0}, depends_on=[workflow.callback]
    )
    drain(config, definitions=[squares])
    target = ["--dsn", test_dsn, "--schema", schema]

    shown = run("jobs", "show", str(workflow.callback.id), *target, env=e2e_env)
    lines = shown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("dependencies (2 jobs)"))
    first, second = workflow.jobs
    assert lines[start + 1].endswith(f"job {first.id}  square  succeeded")
    assert lines[start + 2].endswith(f"job {second.id}  square  succeeded")
    assert lines[start + 3] == "dependents (1 job)"
    assert lines[start + 4].endswith(f"job {report.id}  report  waiting")

    member = run("jobs", "show", str(first.id), *target, env=e2e_env)
    assert "dependencies (" not in member
    assert "dependents (2 jobs)" in member
    tree = member[member.index("dependents (2 jobs)") :].splitlines()
    assert tree[1].endswith(f"job {workflow.callback.id}  sum-squares  available")
    assert tree[2].endswith(f"job {report.id}  report  waiting")
    assert tree[2].index("job") > tree[1].index("job")  # one level deeper

    document = json.loads(
        run("jobs", "show", str(workflow.callback.id), "--json", *target, env=e2e_env)
    )
    graph: dict[str, Any] = document["graph"]
    assert graph["job_id"] == workflow.callback.id
    assert (graph["upstream_truncated"], graph["downstream_truncated"]) == (False, False)
    assert [(n["id"], n["side"], n["depth"]) for n in graph["nodes"]] == [
        (workflow.callback.id, "self", 0),
        (first.id, "upstream", -1),
        (second.id, "upstream", -1),
        (report.id, "downstream", 1),
    ]


def test_jobs_show_of_a_lone_job_prints_no_tree_and_a_large_one_says_it_was_cut(
    e2e_env: dict[str, str], test_dsn: str, schema: str, config: Config
) -> None:
    """No dependencies, no trees; past 200 jobs a side, the heading says where it was cut."""
    squares = JobDefinition(config, name="square", job_function=square)
    alone = squares.defer({"n": 1})
    target = ["--dsn", test_dsn, "--schema", schema]
    shown = run("jobs", "show", str(alone.id), *target, env=e2e_env)
    assert "dependencies (" not in shown and "dependents (" not in shown

    workflow = chord([squares.job({"n": n}) for n in range(205)], then=squares.job({"n": 0}))
    assert workflow.callback is not None
    big = run("jobs", "show", str(workflow.callback.id), *target, env=e2e_env)
    assert "dependencies (200 jobs, cut at the nearest 200)" in big
