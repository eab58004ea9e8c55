"""deploy/k8s: the invariants a cluster would only reveal under load, a drain or a rollout.

Schema validity (Kubernetes and KEDA OpenAPI schemas) is checked in test_deploy.py; kubeconform
and its kind cannot be installed from PyPI, Debian or npm, so these structural checks are the
rest of the validation (docs/deploy.md).
"""

from __future__ import annotations

import functools
import inspect
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from handlers.store.db import DEFAULT_MAX_OVERFLOW
from queues.topology import DOMAINS
from tests.support.deploy import K8S_DIR, k8s_objects, load_documents
from workers.commands import worker as worker_command
from workers.settings import Settings

SETTINGS = frozenset(f"FLEET_{name.upper()}" for name in Settings.model_fields)
SHUTDOWN_MARGIN_S = 10
NODE_CPU_CORES = 2
READINESS = ["fleet", "health"]
LIVENESS = ["fleet", "health", "--liveness"]  # only what a restart cures
SECRET_NAMES = ("URL", "PASSWORD", "KEYS_JSON", "SECRET", "TOKEN")


@functools.cache
def _objects() -> dict[str, dict[str, dict[str, Any]]]:
    """kind ▶ name ▶ object (parsed on first use: collection must not need Node.js)."""
    objects: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for _path, obj in k8s_objects():
        name = obj["metadata"]["name"]
        assert name not in objects[obj["kind"]], f"two {obj['kind']}s named {name}"
        objects[obj["kind"]][name] = obj
    return objects


class _Manifests:
    @property
    def objects(self) -> dict[str, dict[str, dict[str, Any]]]:
        return _objects()

    @property
    def deployments(self) -> dict[str, dict[str, Any]]:
        return _objects()["Deployment"]

    @property
    def config(self) -> dict[str, str]:
        data: dict[str, str] = _objects()["ConfigMap"]["fleet-config"]["data"]
        return data

    @property
    def budget(self) -> dict[str, str]:
        data: dict[str, str] = _objects()["ConfigMap"]["fleet-connection-budget"]["data"]
        return data


K8S = _Manifests()


def _container(workload: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = workload["spec"]["template"]["spec"]["containers"]
    [container] = containers
    return container


def _option(args: list[str], name: str, default: Any) -> Any:
    return args[args.index(name) + 1] if name in args else default


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in container.get("env", [])}


def _typer_default(parameter: str) -> Any:
    return inspect.signature(worker_command.worker).parameters[parameter].default.default


def connections_per_pod(deployment: dict[str, Any]) -> int:
    """Peak PostgreSQL connections of one pod (handlers/store/db.py's budget formula)."""
    container = _container(deployment)
    args = container["args"]
    env = _env(container)
    default_threads = Settings.model_fields["worker_threads"].default
    shared_threads = K8S.config.get("FLEET_WORKER_THREADS", default_threads)
    threads_setting = env.get("FLEET_WORKER_THREADS", {}).get("value", shared_threads)
    if args[:1] == ["worker"]:
        processes = int(_option(args, "--processes", _typer_default("processes")))
        threads = int(_option(args, "--threads", threads_setting))
        suspect = "--no-suspect-lane" not in args and (
            "--suspect-lane" in args or _typer_default("suspect_lane")
        )
        relay = "--outbox-relay" in args or (
            "--no-outbox-relay" not in args and _typer_default("outbox_relay")
        )
        # pool_size = threads per worker process; the one-thread processes hold one each.
        return processes * (threads + DEFAULT_MAX_OVERFLOW) + int(suspect) + int(relay)
    if args[:2] == ["outbox", "relay"]:
        return int(threads_setting) + DEFAULT_MAX_OVERFLOW
    if args[:2] == ["dlq", "archive"]:
        return int(K8S.budget["archiver_connections_per_pod"])
    raise AssertionError(f"no connection count for `fleet {' '.join(args)}`")


def _scaled_objects_of(deployment: str) -> list[dict[str, Any]]:
    return [
        scaled
        for scaled in K8S.objects["ScaledObject"].values()
        if scaled["spec"]["scaleTargetRef"]["name"] == deployment
    ]


def _max_replicas(name: str) -> int:
    scaled = _scaled_objects_of(name)
    if scaled:
        return int(scaled[0]["spec"]["maxReplicaCount"])
    return int(K8S.deployments[name]["spec"].get("replicas", 1))


def test_kustomization_lists_every_manifest() -> None:
    [kustomization] = load_documents(K8S_DIR / "kustomization.yaml")
    listed = set(kustomization["resources"])
    present = {p.name for p in K8S_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


def test_no_secret_values_in_the_manifests() -> None:
    assert "Secret" not in K8S.objects, "Secrets are created out of band (docs/deploy.md)"
    for kind in ("Deployment", "Job"):
        for name, workload in K8S.objects[kind].items():
            for item in _env(_container(workload)).values():
                if any(word in item["name"] for word in SECRET_NAMES):
                    assert "secretKeyRef" in item.get("valueFrom", {}), f"{name}: {item['name']}"
    for key in K8S.config:
        assert not any(word in key for word in ("PASSWORD", "KEYS_JSON", "AMQP_URL", "DATABASE"))


def test_every_fleet_variable_is_a_setting() -> None:
    names = set(K8S.config)
    for kind in ("Deployment", "Job"):
        for workload in K8S.objects[kind].values():
            names |= set(_env(_container(workload)))
    fleet = {n for n in names if n.startswith("FLEET_")}
    assert fleet == names
    assert fleet <= SETTINGS, fleet - SETTINGS


def test_a_deployment_per_domain_plus_relay_and_archiver() -> None:
    for domain in DOMAINS:
        args = _container(K8S.deployments[f"worker-{domain}"])["args"]
        assert args[:3] == ["worker", "--queue", domain]
        assert "--outbox-relay" not in args, "the relay has a Deployment of its own"
        assert "--no-suspect-lane" not in args, "each domain's suspect lane runs in its workers"
    assert _container(K8S.deployments["outbox-relay"])["args"] == ["outbox", "relay"]
    assert _container(K8S.deployments["archiver"])["args"] == ["dlq", "archive"]


def test_jobs_migrate_and_apply_the_topology() -> None:
    jobs = {tuple(_container(job)["args"]): job for job in K8S.objects["Job"].values()}
    assert set(jobs) == {("db", "upgrade"), ("topology", "apply")}
    for job in jobs.values():
        assert job["spec"]["template"]["spec"]["restartPolicy"] in ("Never", "OnFailure")
        assert job["spec"]["backoffLimit"] >= 1
    topology_env = _env(_container(jobs[("topology", "apply")]))
    assert topology_env["FLEET_AMQP_URL"]["valueFrom"]["secretKeyRef"]["name"] == "fleet-amqp-admin"


def test_grace_period_outlasts_the_shutdown_timeout() -> None:
    shutdown_s = float(K8S.config["FLEET_SHUTDOWN_TIMEOUT_S"])
    for name, deployment in K8S.deployments.items():
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace > shutdown_s + SHUTDOWN_MARGIN_S, name
        assert "FLEET_SHUTDOWN_TIMEOUT_S" not in _env(_container(deployment)), (
            f"{name}: one shutdown timeout for all, in fleet-config"
        )


@pytest.mark.parametrize("domain", DOMAINS)
def test_workers_are_probed_with_fleet_health(domain: str) -> None:
    container = _container(K8S.deployments[f"worker-{domain}"])
    assert container["readinessProbe"]["exec"]["command"] == READINESS
    assert container["livenessProbe"]["exec"]["command"] == LIVENESS
    assert container["startupProbe"]["exec"]["command"] == LIVENESS
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["timeoutSeconds"] >= 5, "a Python CLI needs a moment to start"


def test_resources_fit_two_core_nodes() -> None:
    def cores(value: str) -> float:
        return float(value[:-1]) / 1000 if value.endswith("m") else float(value)

    for kind in ("Deployment", "Job"):
        for name, workload in K8S.objects[kind].items():
            resources = _container(workload)["resources"]
            for key in ("cpu", "memory"):
                assert key in resources["requests"] and key in resources["limits"], name
            request, limit = cores(resources["requests"]["cpu"]), cores(resources["limits"]["cpu"])
            assert request <= limit <= NODE_CPU_CORES - 0.5, f"{name}: leave room for the node"


def test_pods_run_unprivileged() -> None:
    for kind in ("Deployment", "Job"):
        for name, workload in K8S.objects[kind].items():
            pod = workload["spec"]["template"]["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True, name
            assert pod["securityContext"]["runAsUser"] != 0, name
            context = _container(workload)["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, name
            assert _container(workload)["image"].split(":")[0] == "telco-fleet", name


@pytest.mark.parametrize("domain", DOMAINS)
def test_each_domain_scales_on_its_work_queue(domain: str) -> None:
    [scaled] = _scaled_objects_of(f"worker-{domain}")
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] in K8S.deployments
    assert spec["minReplicaCount"] >= 1, "never zero: docs/deploy.md"
    assert spec["maxReplicaCount"] >= spec["minReplicaCount"]
    [trigger] = spec["triggers"]
    assert trigger["type"] == "rabbitmq"
    assert trigger["metadata"]["mode"] == "QueueLength"
    assert trigger["metadata"]["queueName"] == domain
    assert int(trigger["metadata"]["value"]) > 0
    assert trigger["authenticationRef"]["name"] in K8S.objects["TriggerAuthentication"]
    assert "replicas" not in K8S.deployments[f"worker-{domain}"]["spec"], "KEDA owns the count"


def test_every_scaled_object_targets_a_deployment() -> None:
    for name, scaled in K8S.objects["ScaledObject"].items():
        assert scaled["spec"]["scaleTargetRef"]["name"] in K8S.deployments, name


@pytest.mark.parametrize("domain", DOMAINS)
def test_each_domain_has_a_disruption_budget_that_selects_its_pods(domain: str) -> None:
    deployment = K8S.deployments[f"worker-{domain}"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    budgets = [
        pdb
        for pdb in K8S.objects["PodDisruptionBudget"].values()
        if pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ]
    assert len(budgets) == 1
    [budget] = budgets
    assert "minAvailable" not in budget["spec"], "minAvailable 1 would block drains at 1 replica"
    assert budget["spec"]["maxUnavailable"] == 1
    for other, pod in K8S.deployments.items():
        other_labels = pod["spec"]["template"]["metadata"]["labels"]
        if other != f"worker-{domain}":
            assert not budget["spec"]["selector"]["matchLabels"].items() <= other_labels.items()


def test_max_replicas_stay_within_the_connection_budget() -> None:
    available = (
        int(K8S.budget["postgres_max_connections"])
        - int(K8S.budget["superuser_reserved_connections"])
        - int(K8S.budget["headroom_connections"])
    )
    used = {
        name: _max_replicas(name) * connections_per_pod(deployment)
        for name, deployment in K8S.deployments.items()
    }
    assert sum(used.values()) <= available, used
    for name, deployment in K8S.deployments.items():
        rolling = deployment["spec"]["strategy"]["rollingUpdate"]
        assert rolling["maxSurge"] == 0, f"{name}: a surge pod would exceed the budget"


def test_the_budget_formula_counts_what_db_py_says() -> None:
    """(pool_size + max_overflow) × processes, pool_size = threads; + 1 per one-thread process."""
    deployment = {"spec": {"template": {"spec": {"containers": [{"args": [
        "worker", "--queue", "crm", "--processes", "2", "--threads", "4",
        "--suspect-lane", "--outbox-relay",
    ]}]}}}}  # fmt: skip
    assert connections_per_pod(deployment) == 2 * (4 + 2) + 1 + 1


def test_manifest_files_are_named_after_what_they_hold() -> None:
    for path, obj in k8s_objects():
        name = obj["metadata"]["name"]
        if obj["kind"] in ("Deployment", "Job"):
            assert Path(path).stem in (name, name.removeprefix("fleet-") + "-job"), path
