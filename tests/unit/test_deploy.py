"""The files under ``deploy/``: well-formed, and consistent with each other and the code.

The timing rules matter most: whatever stops a worker (systemd, Kubernetes,
docker compose) must wait longer than the worker's ``--shutdown-grace-ms``, or
running jobs are killed instead of finishing or being handed back.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
#: Inside a container the dashboard must listen on every interface to be reachable.
ALL_INTERFACES = "0.0.0.0"  # noqa: S104
DEPLOY = REPO / "deploy"
SYSTEMD = DEPLOY / "systemd"
KUBERNETES = DEPLOY / "kubernetes"
YAML_FILES = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])
_GRACE_RE = re.compile(r"--shutdown-grace-ms[\s\"'\\-]*(\d+)")


def unit_entries(path: Path) -> list[tuple[str, str, str]]:
    """A systemd unit as (section, key, value) entries, continuation lines joined."""
    entries: list[tuple[str, str, str]] = []
    section = ""
    logical = ""
    for raw in path.read_text("utf-8").splitlines():
        line = raw.strip()
        if not logical and (not line or line.startswith(("#", ";"))):
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        line, logical = logical + line, ""
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not a key=value line: {line!r}"
        entries.append((section, key.strip(), value.strip()))
    return entries


def unit_value(path: Path, key: str, section: str = "Service") -> str:
    """The last value of ``key`` in ``section`` (systemd's rule for single-valued keys)."""
    values = [v for s, k, v in unit_entries(path) if s == section and k == key]
    assert values, f"{path.name}: no {key}= in [{section}]"
    return values[-1]


def seconds(value: str) -> float:
    """A systemd or compose time span ("45s", "45", "1min", "15min") in seconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(ms|s|sec|min|m)?", value.strip())
    assert match, f"unsupported time span {value!r}"
    number, unit = float(match.group(1)), match.group(2) or "s"
    return number * {"ms": 0.001, "s": 1, "sec": 1, "min": 60, "m": 60}[unit]


def grace_s(text: str) -> float:
    """The ``--shutdown-grace-ms`` a file passes to the worker, in seconds."""
    found = _GRACE_RE.findall(text)
    assert len(found) == 1, found
    return int(found[0]) / 1000


@pytest.mark.parametrize("name", ["orchestra-worker", "orchestra-orchestrator"])
def test_systemd_daemon_units_stop_gracefully_restart_and_are_hardened(name: str) -> None:
    """Both daemon units: SIGTERM to the main process, restart on failure, a non-root user."""
    unit = SYSTEMD / f"{name}.service"
    assert unit_value(unit, "KillMode") == "mixed"
    assert unit_value(unit, "Restart") == "on-failure"
    assert seconds(unit_value(unit, "RestartSec")) >= 1
    assert unit_value(unit, "RestartPreventExitStatus") == "2"
    assert unit_value(unit, "User") not in ("", "root", "0")
    for key, expected in (
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("PrivateTmp", "yes"),
        ("ProtectHome", "yes"),
    ):
        assert unit_value(unit, key) == expected, key
    exec_start = unit_value(unit, "ExecStart")
    assert " daemon --role " + name.removeprefix("orchestra-") in exec_start
    assert unit_value(unit, "EnvironmentFile").startswith("-/etc/orchestra/")
    assert not [k for _, k, _ in unit_entries(unit) if k == "ExecStartPre"]  # see migrate unit


def test_the_worker_unit_waits_longer_than_the_grace_period() -> None:
    """TimeoutStopSec > --shutdown-grace-ms, with room for the flush after it."""
    unit = SYSTEMD / "orchestra-worker.service"
    grace = grace_s(unit_value(unit, "ExecStart"))
    assert grace == 30
    assert seconds(unit_value(unit, "TimeoutStopSec")) >= grace + 10


def test_migrations_run_in_their_own_oneshot_unit_pulled_in_by_the_orchestrator() -> None:
    """orchestra-migrate.service migrates once; the orchestrator wants it, workers do not."""
    migrate = SYSTEMD / "orchestra-migrate.service"
    assert unit_value(migrate, "Type") == "oneshot"
    assert " migrate " in unit_value(migrate, "ExecStart") + " "
    orchestrator = SYSTEMD / "orchestra-orchestrator.service"
    assert "orchestra-migrate.service" in unit_value(orchestrator, "Wants", "Unit")
    assert "orchestra-migrate.service" in unit_value(orchestrator, "After", "Unit")
    worker = SYSTEMD / "orchestra-worker.service"
    assert not [
        v for s, k, v in unit_entries(worker) if k in ("Wants", "Requires") and "migrate" in v
    ]
    env = (SYSTEMD / "orchestra.env.example").read_text("utf-8")
    assert re.search(r"^ORCHESTRA_DSN=postgresql://", env, re.MULTILINE)


def test_kubernetes_workers_get_more_time_than_the_grace_period() -> None:
    """terminationGracePeriodSeconds of the workers > their --shutdown-grace-ms."""
    text = (KUBERNETES / "worker-deployment.yaml").read_text("utf-8")
    period = re.findall(r"terminationGracePeriodSeconds:\s*(\d+)", text)
    assert len(period) == 1
    assert int(period[0]) >= grace_s(text) + 10


def test_compose_workers_get_more_time_than_the_grace_period() -> None:
    """docker compose's stop_grace_period of the worker > its --shutdown-grace-ms."""
    text = (DEPLOY / "docker-compose.yml").read_text("utf-8")
    worker = text.split("\n  worker:\n", 1)[1].split("\n  orchestrator:\n", 1)[0]
    period = re.findall(r"stop_grace_period:\s*(\S+)", worker)
    assert len(period) == 1
    assert seconds(period[0]) >= grace_s(worker) + 10
    assert "image: postgres:15" in text
    assert "dockerfile: deploy/Dockerfile" in text
    assert (DEPLOY / "Dockerfile").read_text("utf-8").startswith("# syntax=docker/dockerfile:1")


def test_roles_sql_knows_every_table_of_the_migrations() -> None:
    """A migration that adds a table must teach deploy/sql/roles.sql who may use it.

    Tables a later migration drops (job_archive) are no longer there to grant on.
    """
    created = set()
    for migration in sorted((REPO / "schemas").glob("[0-9][0-9][0-9][0-9]_*.sql")):
        text = migration.read_text("utf-8")
        created |= set(
            re.findall(
                r"CREATE\s+(?:UNLOGGED\s+)?TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?\{schema\}\.(\w+)",
                text,
            )
        )
        created -= set(re.findall(r"DROP\s+TABLE\s+(?:IF\s+EXISTS\s+)?\{schema\}\.(\w+)", text))
    created.add("schema_version")  # created by the migrator itself
    roles = (DEPLOY / "sql" / "roles.sql").read_text("utf-8")
    granted = set(re.findall(r':"schema"\.(\w+)(?!\w|\()', roles))  # not functions
    assert created == granted
    guard = re.search(r"tablename IN \(([^)]*)\)", roles)
    assert guard is not None
    assert set(re.findall(r"'(\w+)'", guard.group(1))) == created
    assert f"SELECT count(*) = {len(created)}\n" in roles


def test_roles_sql_knows_every_function_of_the_migrations() -> None:
    """Each function a migration creates is checked for, revoked from PUBLIC and granted by name.

    The migrations leave EXECUTE to PUBLIC; the SECURITY DEFINER ones must be
    given only to the roles that call them.
    """
    created: dict[str, str] = {}
    for migration in sorted((REPO / "schemas").glob("[0-9][0-9][0-9][0-9]_*.sql")):
        for name, arguments in re.findall(
            r"CREATE\s+(?:OR\s+REPLACE\s+)?FUNCTION\s+\{schema\}\.(\w+)\(([^)]*)\)",
            migration.read_text("utf-8"),
        ):
            created[name] = ",".join(
                a.split()[-1] for a in re.split(r",\s*", arguments.strip()) if a
            )
    assert created, "no function in the migrations"
    roles = (DEPLOY / "sql" / "roles.sql").read_text("utf-8")
    guard = re.search(r"p\.proname IN \(([^)]*)\)\) = (\d+)", roles)
    assert guard is not None
    assert set(re.findall(r"'(\w+)'", guard.group(1))) == set(created)
    assert int(guard.group(2)) == len(created)
    revoke = roles.split("REVOKE ALL ON FUNCTION", 1)[1].split(";", 1)[0]
    assert "FROM PUBLIC" in revoke
    for name, types in created.items():
        signatures = re.findall(rf':"schema"\.{name}\(([^)]*)\)', revoke)
        assert [re.sub(r"\s+", "", s) for s in signatures] == [types], name


def test_every_yaml_file_under_deploy_parses() -> None:
    """Each YAML file is valid; Kubernetes manifests name an apiVersion and a kind."""
    yaml = pytest.importorskip(
        "yaml", reason="PyYAML is not installed in this environment (not a dependency of orchestra)"
    )
    assert YAML_FILES
    for path in YAML_FILES:
        documents = [d for d in yaml.safe_load_all(path.read_text("utf-8")) if d is not None]
        assert documents, path
        if path.parent == KUBERNETES:
            for document in documents:
                assert {"apiVersion", "kind", "metadata"} <= document.keys(), path


@pytest.mark.parametrize(
    ("manifest", "role"),
    [("worker-deployment.yaml", "worker"), ("orchestrator-deployment.yaml", "orchestrator")],
)
def test_kubernetes_probes_use_orchestra_health(manifest: str, role: str) -> None:
    """Liveness checks the pod's own daemon (--role), readiness only the database."""
    text = (KUBERNETES / manifest).read_text("utf-8")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert f"{probe}:" in text
    liveness = text.split("livenessProbe:", 1)[1]
    assert "- health" in liveness and f"- {role}" in liveness
    readiness = text.split("readinessProbe:", 1)[1].split("livenessProbe:", 1)[0]
    assert '"health"' in readiness and "--role" not in readiness
    if role == "orchestrator":
        assert re.search(r"^  replicas: 2$", text, re.MULTILINE)


def _yaml() -> Any:
    return pytest.importorskip(
        "yaml", reason="PyYAML is not installed in this environment (not a dependency of orchestra)"
    )


def _documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in _yaml().safe_load_all(path.read_text("utf-8")) if d is not None]


def _containers(manifest: Path) -> list[dict[str, Any]]:
    return [
        container
        for document in _documents(manifest)
        if document["kind"] in ("Deployment", "Job")
        for container in document["spec"]["template"]["spec"]["containers"]
    ]


def test_the_dashboard_unit_is_hardened_local_and_read_only() -> None:
    """orchestra-dashboard.service: 127.0.0.1 behind a proxy, no actions, hardened, restarts."""
    unit = SYSTEMD / "orchestra-dashboard.service"
    exec_start = unit_value(unit, "ExecStart")
    assert exec_start.startswith("/opt/orchestra/venv/bin/orchestra dashboard ")
    assert "--allow-actions" not in exec_start
    assert "--dsn" not in exec_start  # the DSN stays in the environment, out of argv
    environment = [v for s, k, v in unit_entries(unit) if s == "Service" and k == "Environment"]
    assert "ORCHESTRA_DASHBOARD_HOST=127.0.0.1" in environment
    assert "${ORCHESTRA_DASHBOARD_HOST}" in exec_start
    assert "-/etc/orchestra/dashboard.env" in [
        v for s, k, v in unit_entries(unit) if s == "Service" and k == "EnvironmentFile"
    ]
    assert unit_value(unit, "KillMode") == "mixed"
    assert unit_value(unit, "Restart") == "on-failure"
    assert unit_value(unit, "RestartPreventExitStatus") == "2"
    assert unit_value(unit, "User") not in ("", "root", "0")
    for key in ("NoNewPrivileges", "PrivateTmp", "ProtectHome"):
        assert unit_value(unit, key) == "yes", key
    assert unit_value(unit, "ProtectSystem") == "strict"
    assert unit_value(unit, "WantedBy", "Install") == "multi-user.target"


def test_kubernetes_dashboard_is_read_only_behind_a_token_and_probed() -> None:
    """The dashboard Deployment: a token from a secret, readiness by orchestra health, a Service."""
    manifest = KUBERNETES / "dashboard-deployment.yaml"
    kinds = [d["kind"] for d in _documents(manifest)]
    assert kinds == ["Deployment", "Service"]
    (container,) = _containers(manifest)
    command = container["command"]
    assert command[:2] == ["orchestra", "dashboard"]
    assert "--allow-actions" not in command
    assert command[command.index("--host") + 1] == ALL_INTERFACES
    port = int(command[command.index("--port") + 1])
    assert [p["containerPort"] for p in container["ports"]] == [port]
    env = {e["name"]: e for e in container["env"]}
    assert "secretKeyRef" in env["ORCHESTRA_DASHBOARD_TOKEN"]["valueFrom"]
    assert env["ORCHESTRA_DSN"]["valueFrom"]["secretKeyRef"]["key"] == "dashboard-dsn"
    readiness = container["readinessProbe"]["exec"]["command"]
    assert readiness[:2] == ["orchestra", "health"] and "--role" not in readiness
    assert container["livenessProbe"]["tcpSocket"]["port"] == "http"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    service = _documents(manifest)[1]
    assert service["spec"]["selector"] == _documents(manifest)[0]["spec"]["selector"]["matchLabels"]


def test_every_secret_the_manifests_read_is_in_the_example_secret() -> None:
    """Each secretKeyRef names a secret and key of secret.example.yaml; producers have a DSN too."""
    defined = {
        (document["metadata"]["name"], key)
        for document in _documents(KUBERNETES / "secret.example.yaml")
        for key in document["stringData"]
    }
    referenced = {
        (ref["name"], ref["key"])
        for manifest in sorted(KUBERNETES.glob("*.yaml"))
        for container in _containers(manifest)
        for env in container.get("env", [])
        if (ref := env.get("valueFrom", {}).get("secretKeyRef"))
    }
    assert referenced
    assert referenced <= defined, referenced - defined
    dsns = {key for name, key in defined if name == "orchestra-db"}
    assert dsns == {
        "migrator-dsn",
        "producer-dsn",
        "worker-dsn",
        "orchestrator-dsn",
        "dashboard-dsn",
    }


def test_compose_publishes_the_metrics_ports_and_the_dashboard_on_localhost() -> None:
    """Each --metrics-port and the dashboard's --port are published, on the host's 127.0.0.1."""
    services = _documents(DEPLOY / "docker-compose.yml")[0]["services"]
    published: dict[str, set[str]] = {}
    for name, service in services.items():
        command = service.get("command", [])
        for option in ("--metrics-port", "--port"):
            if option in command:
                container_port = command[command.index(option) + 1]
                targets = {p.rsplit(":", 1)[1] for p in service.get("ports", [])}
                assert container_port in targets, (name, option)
        for mapping in service.get("ports", []):
            host, host_port, _container = mapping.split(":")
            assert host == "127.0.0.1", (name, mapping)
            published.setdefault(host_port, set()).add(name)
    assert all(len(names) == 1 for names in published.values()), published
    assert {"worker", "orchestrator", "dashboard"} <= {n for ns in published.values() for n in ns}
    dashboard = services["dashboard"]["command"]
    assert dashboard[:2] == ["orchestra", "dashboard"]
    assert dashboard[dashboard.index("--host") + 1] == ALL_INTERFACES


def test_the_image_installs_the_extras_its_commands_need() -> None:
    """deploy/Dockerfile: psycopg's libpq (binary), metrics and dashboard; extras that exist."""
    dockerfile = (DEPLOY / "Dockerfile").read_text("utf-8")
    installed = re.search(
        r'pip install --quiet "\$\(ls /wheels/\*\.whl\)\[([a-z,]+)\]"', dockerfile
    )
    assert installed is not None
    extras = set(installed.group(1).split(","))
    assert {"binary", "metrics", "dashboard"} <= extras
    declared = tomllib.loads((REPO / "pyproject.toml").read_text("utf-8"))["project"]
    assert extras <= set(declared["optional-dependencies"])
    assert "LICENSE" in dockerfile.split("COPY pyproject.toml", 1)[1].splitlines()[0]


def test_the_docs_list_every_deploy_file() -> None:
    """The deploy table of the daemons guide names every file under deploy/."""
    guide = (REPO / "docs" / "how-to" / "daemons.md").read_text("utf-8")
    for path in sorted(DEPLOY.rglob("*")):
        if path.is_file() and path.name != "Dockerfile.dockerignore":
            assert path.name in guide, path.relative_to(REPO)
