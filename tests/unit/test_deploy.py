"""The image, docker-compose.yml and the bench scripts, validated without a Docker engine.

No Docker engine runs on these machines, so nothing here builds or starts a container. What is
checked: every file against its published schema (tests/support/deploy.py), every command a
container runs is a real ``fleet`` subcommand with real options, every FLEET_* variable is a
setting, secrets only come from .env, and the ordering and health contracts of the stack.
"""

from __future__ import annotations

import inspect
import json
import py_compile
import re
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from queues.topology import DOMAINS
from tests.support.deploy import (
    COMPOSE_FILE,
    GRAFANA_DIR,
    ROOT,
    deploy_files,
    k8s_objects,
    load_compose,
    load_documents,
    schema_report,
    subcommand,
)
from workers.cli import app
from workers.commands import worker as worker_command
from workers.settings import Settings

FLEET_IMAGE = "telco-fleet"
ONE_SHOTS = frozenset({"migrate", "topology", "roles"})
# Long-running, but no health state of their own for `fleet health` to read.
NO_HEALTH_STATE = frozenset({"archiver"})
SETTINGS = frozenset(f"FLEET_{name.upper()}" for name in Settings.model_fields)
ROLE_PASSWORD = re.compile(r"^FLEET_ROLE_PASSWORD_[A-Z0-9_]+$")
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-?][^}]*)?\}")
SHUTDOWN_MARGIN_S = 10

# Every `fleet` subcommand the deployment files run. Those still being written elsewhere are
# expected to fail (strictly: the mark must go once the command lands).
SUBCOMMANDS: dict[tuple[str, ...], str | None] = {
    ("db", "upgrade"): None,
    ("topology", "apply"): None,
    ("worker",): None,
    ("outbox", "relay"): None,
    ("simulate", "network"): None,
    ("dlq", "archive"): None,
    ("health",): None,
}


def _pending(path: tuple[str, ...]) -> Any:
    reason = SUBCOMMANDS.get(path)
    return [pytest.mark.xfail(strict=True, reason=reason)] if reason else []


def _duration_s(value: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    total = 0.0
    for amount, unit in re.findall(r"([0-9.]+)(ms|s|m|h)", value):
        total += float(amount) * units[unit]
    return total


def _fleet_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in compose["services"].items()
        if str(service.get("image", "")).split(":")[0] == FLEET_IMAGE
    }


def _used_argvs() -> list[list[str]]:
    """The ``fleet`` argument vectors of every container, healthcheck and probe we deploy."""
    compose = load_compose()
    argvs: list[list[str]] = []
    for service in _fleet_services(compose).values():
        argvs.append([str(a) for a in service["command"]])
        test = service.get("healthcheck", {}).get("test", [])
        if test[:2] == ["CMD", "fleet"]:
            argvs.append(test[2:])
    for _path, obj in k8s_objects():
        template = obj.get("spec", {}).get("template", {}).get("spec", {})
        if obj["kind"] == "Deployment" or obj["kind"] == "Job":
            for container in template["containers"]:
                argvs.append(list(container["args"]))
                for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                    command = container.get(probe, {}).get("exec", {}).get("command", [])
                    if command[:1] == ["fleet"]:
                        argvs.append(command[1:])
    return argvs


def _env_example() -> dict[str, str]:
    pairs = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


# -- schemas ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", deploy_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_deployment_file_matches_its_published_schema(path: Path) -> None:
    checked = schema_report()[path]
    assert checked.documents, f"{path} has no YAML document"
    assert checked.errors == []


# -- commands -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [pytest.param(path, marks=_pending(path), id=" ".join(path)) for path in SUBCOMMANDS],
)
def test_deployed_subcommand_exists(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output


def test_every_deployed_command_is_a_known_subcommand() -> None:
    used = {subcommand(argv) for argv in _used_argvs()}
    assert used <= set(SUBCOMMANDS), used - set(SUBCOMMANDS)
    assert {("worker",), ("db", "upgrade"), ("topology", "apply"), ("dlq", "archive")} <= used


def test_every_deployed_command_line_parses() -> None:
    """Each option exists: click parses the whole line before the eager --help answers."""
    for argv in _used_argvs():
        if SUBCOMMANDS.get(subcommand(argv)):
            continue  # not registered yet: test_deployed_subcommand_exists reports it
        result = CliRunner().invoke(app, [*argv, "--help"])
        assert result.exit_code == 0, f"fleet {' '.join(argv)}: {result.output}"


# -- settings and secrets -----------------------------------------------------------------------


def test_every_fleet_variable_in_compose_is_a_setting() -> None:
    for name, service in load_compose()["services"].items():
        environment = service.get("environment") or {}
        assert isinstance(environment, dict), f"{name}: environment as a mapping"
        unknown = {k for k in environment if k.startswith("FLEET_")} - SETTINGS
        assert not unknown, f"{name}: {unknown} are not in workers/settings.py"


def test_env_example_holds_placeholders_and_known_names_only() -> None:
    roles = json.loads((ROOT / "deploy" / "rabbitmq" / "roles.json").read_text())
    password_vars = {user["password_env"] for user in roles["users"]}
    for key, value in _env_example().items():
        if key.startswith("FLEET_"):
            assert key in SETTINGS or key in password_vars, f"{key} is neither a setting nor a role"
        if "PASSWORD" in key:
            assert value.startswith("change-me"), f"{key} must be a placeholder, not a secret"
    assert password_vars <= set(_env_example()), "every role's password variable is listed"


def test_compose_takes_every_secret_from_env_and_defines_every_variable() -> None:
    text = COMPOSE_FILE.read_text()
    defined = set(_env_example())
    for name in INTERPOLATION.findall(text):
        assert name in defined, f"${{{name}}} is not in .env.example"
    for match in re.finditer(r"://[^:/@\s\"]+:([^@\s\"]+)@", text):
        assert match.group(1).startswith("${"), f"a literal password in {match.group(0)!r}"
    for key in ("POSTGRES_PASSWORD", "GF_SECURITY_ADMIN_PASSWORD"):
        for line in text.splitlines():
            if line.strip().startswith(f"{key}:"):
                assert "${" in line, f"{key} must come from .env"
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert ".env" in ignored


def test_the_key_registry_is_a_mounted_secret_file() -> None:
    compose = load_compose()
    assert "file" in compose["secrets"]["fleet_keys"]
    for name, service in _fleet_services(compose).items():
        environment = service.get("environment") or {}
        if "FLEET_KEYS_FILE" in environment:
            assert environment["FLEET_KEYS_FILE"] == "/run/secrets/fleet_keys", name
            assert "fleet_keys" in service.get("secrets", []), name
        assert "FLEET_KEYS_JSON" not in environment, f"{name}: keys as a file, not in the env"
    for domain in DOMAINS:
        assert "FLEET_KEYS_FILE" in compose["services"][f"worker-{domain}"]["environment"]


# -- the stack ----------------------------------------------------------------------------------


def test_the_stack_has_every_part() -> None:
    services = load_compose()["services"]
    assert {
        "rabbitmq",
        "postgres",
        "migrate",
        "topology",
        "network",
        "archiver",
        "prometheus",
        "grafana",
        *(f"worker-{domain}" for domain in DOMAINS),
    } <= set(services)
    assert services["rabbitmq"]["image"].startswith("rabbitmq:3.10")
    assert services["postgres"]["image"].startswith("postgres:15")
    for name, service in services.items():
        assert service.get("image"), f"{name} has no image"


def test_rabbitmq_runs_the_fleets_config_and_both_plugins() -> None:
    rabbitmq = load_compose()["services"]["rabbitmq"]
    mounts = {str(v).split(":")[0]: str(v).split(":")[1] for v in rabbitmq["volumes"]}
    assert mounts["./deploy/rabbitmq/rabbitmq.conf"].startswith("/etc/rabbitmq/conf.d/")
    [plugins_file] = [s for s, t in mounts.items() if t == "/etc/rabbitmq/enabled_plugins"]
    plugins = (ROOT / plugins_file).read_text()
    assert "rabbitmq_management" in plugins
    assert "rabbitmq_prometheus" in plugins
    published = {str(p).rsplit(":", 1)[-1] for p in rabbitmq["ports"]}
    assert {"5672", "15672", "15692"} <= published


def test_every_mounted_file_exists() -> None:
    for name, service in load_compose()["services"].items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which is missing"


def test_long_running_services_have_healthchecks_and_one_shots_do_not_restart() -> None:
    for name, service in load_compose()["services"].items():
        if name in ONE_SHOTS:
            assert service.get("restart") == "no", name
        elif name in NO_HEALTH_STATE:
            assert "healthcheck" not in service, f"{name}: `fleet health` would always fail"
        else:
            test = service.get("healthcheck", {}).get("test")
            assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name} has no healthcheck"


def test_start_order_waits_for_health_and_one_shots() -> None:
    services = load_compose()["services"]
    topology = services["topology"]["depends_on"]
    assert topology["rabbitmq"]["condition"] == "service_healthy"
    assert "fleet-admin:" in services["topology"]["environment"]["FLEET_AMQP_URL"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in [f"worker-{d}" for d in DOMAINS] + ["archiver"]:
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["topology"]["condition"] == "service_completed_successfully", name


def test_one_worker_per_domain_and_one_outbox_relay() -> None:
    services = load_compose()["services"]
    relays = 0
    for domain in DOMAINS:
        command = [str(a) for a in services[f"worker-{domain}"]["command"]]
        assert command[:3] == ["worker", "--queue", domain]
        relays += "--outbox-relay" in command
    assert relays == 1


def test_workers_get_more_time_to_stop_than_their_shutdown_timeout() -> None:
    for name, service in _fleet_services(load_compose()).items():
        environment = service.get("environment") or {}
        if name.startswith("worker-") or name == "archiver":
            timeout = float(environment["FLEET_SHUTDOWN_TIMEOUT_S"])
            grace = _duration_s(service["stop_grace_period"])
            assert grace > timeout + SHUTDOWN_MARGIN_S, name


def test_prometheus_and_grafana_are_provisioned() -> None:
    services = load_compose()["services"]
    assert "--config.file=/etc/prometheus/fleet/prometheus.yml" in services["prometheus"]["command"]
    assert "./deploy/prometheus:/etc/prometheus/fleet:ro" in services["prometheus"]["volumes"]
    [datasources] = load_documents(GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml")
    [datasource] = datasources["datasources"]
    assert datasource["url"] == "http://prometheus:9090"
    dashboard = json.loads((GRAFANA_DIR / "dashboards" / "fleet.json").read_text())
    queries = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for metric in (
        "fleet_messages_total",
        "fleet_message_age_seconds_bucket",
        "fleet_dead_letters_total",
        "rabbitmq_detailed_queue_messages_ready",
    ):
        assert metric in queries
    uids = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p["targets"]}
    assert uids == {datasource["uid"]}


# -- the image ----------------------------------------------------------------------------------


def test_dockerfile_installs_the_lock_by_hash_and_runs_fleet_unprivileged() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    instructions = [
        line for line in dockerfile.splitlines() if line and not line.startswith(("#", " "))
    ]
    assert instructions[0] == "FROM python:3.11-slim"
    assert "--require-hashes -r requirements.lock" in dockerfile
    assert "--no-deps" in dockerfile
    [user] = [line for line in instructions if line.startswith("USER ")]
    uid = user.split()[1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "a numeric non-root user (runAsNonRoot can check it)"
    assert 'ENTRYPOINT ["fleet"]' in instructions
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert {".env", ".venv", ".git", ".fleet", "keys*.json"} <= set(ignored)


def test_fleet_worker_defaults_the_budget_relies_on() -> None:
    """test_k8s computes connections from `fleet worker` arguments; its defaults count too."""
    parameters = inspect.signature(worker_command.worker).parameters
    assert parameters["processes"].default.default == 2
    assert parameters["suspect_lane"].default.default is True
    assert parameters["outbox_relay"].default.default is False


# -- the benchmarks (never run here: they only have to compile) ---------------------------------


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "bench").glob("*.py")))
def test_bench_scripts_compile(script: str, tmp_path: Path) -> None:
    py_compile.compile(
        str(ROOT / "bench" / script), cfile=str(tmp_path / f"{script}c"), doraise=True
    )


def test_make_bench_target_exists() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^bench:", makefile, re.MULTILINE)
    assert re.search(r"^\.PHONY:.*\bbench\b", makefile, re.MULTILINE)
