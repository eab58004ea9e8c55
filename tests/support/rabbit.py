"""The real RabbitMQ for tests: scratch vhosts through rabbitmqctl (root on these machines)."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from queues.topology import TopologyConfig, definitions
from tests.support import janitor, tier

AMQP_HOST = "127.0.0.1"
AMQP_PORT = 5672


def rabbitmqctl(*args: str, check: bool = True, stdin: str | None = None) -> str:
    result = subprocess.run(
        ["rabbitmqctl", "-q", *args], input=stdin, capture_output=True, text=True, timeout=60
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def queue_counts(listing: str) -> dict[str, int]:
    """``rabbitmqctl list_queues … name <count>`` output ▶ queue ▶ count."""
    counts = {}
    for line in listing.splitlines():
        name, _, count = line.partition("\t")
        if count.strip().isdigit():
            counts[name] = int(count)
    return counts


def amqp_url(
    vhost: str, user: str = "guest", password: str = "guest", port: int = AMQP_PORT
) -> str:
    return f"amqp://{user}:{password}@{AMQP_HOST}:{port}/{quote(vhost, safe='')}"


def vhost_connections(vhost: str, column: str = "pid") -> list[str]:
    """One ``column`` of each connection the shared broker holds in ``vhost``.

    The table format prints pids the way ``close_connection`` takes them (JSON does not).
    """
    lines = rabbitmqctl("list_connections", column, "vhost").splitlines()
    return [value for value, _, v in (line.partition("\t") for line in lines) if v == vhost]


def import_definitions(document: dict[str, Any], node: str | None = None) -> None:
    """Load RabbitMQ definitions (vhosts, permissions, policies, exchanges, queues, bindings)
    in one rabbitmqctl call: each call boots an Erlang VM, so one import beats a chain of them."""
    target = ["-n", node] if node else []
    rabbitmqctl(*target, "import_definitions", "--format", "json", stdin=json.dumps(document))


def vhost_definitions(vhost: str, topology: TopologyConfig | None = None) -> dict[str, Any]:
    """Definitions that create ``vhost``, let guest use it fully and, given a ``topology``,
    declare the fleet's exchanges, queues, bindings and policies in it."""
    document: dict[str, Any] = definitions(topology, vhost) if topology is not None else {}
    document["vhosts"] = [{"name": vhost}]
    document["permissions"] = [
        {"user": "guest", "vhost": vhost, "configure": ".*", "write": ".*", "read": ".*"}
    ]
    return document


def delete_vhost(vhost: str) -> None:
    rabbitmqctl("delete_vhost", vhost, check=False)


@contextlib.contextmanager
def scratch_vhost(prefix: str = "test", topology: TopologyConfig | None = None) -> Iterator[str]:
    """A fresh vhost that guest may use fully — with the fleet's topology for ``topology``
    already declared — in one rabbitmqctl call; deleted afterwards, in the background."""
    vhost = f"{prefix}-{uuid.uuid4().hex[:10]}"
    try:
        import_definitions(vhost_definitions(vhost, topology))
        yield vhost
    finally:
        janitor.later(f"delete vhost {vhost}", delete_vhost, vhost)


def effective_policies(vhost: str) -> dict[str, dict[str, Any]]:
    """Queue ▶ ``{"policy": name, "definition": {...}}`` as the broker applies them right now.

    rabbitmqctl 3.10 has no ``effective_policy_definition`` column, so this asks the node.
    """
    name = vhost.replace("\\", "\\\\").replace('"', '\\"')
    expression = (
        'io:format("~s~n", [rabbit_json:encode(['
        '#{<<"queue">> => element(4, amqqueue:get_name(Q)),'
        ' <<"policy">> => rabbit_policy:name(Q),'
        ' <<"definition">> => case rabbit_policy:effective_definition(Q) of'
        "  undefined -> #{}; D -> maps:from_list(D) end}"
        f' || Q <- rabbit_amqqueue:list(<<"{name}">>)])]).'
    )
    first_line = rabbitmqctl("eval", expression).splitlines()[0]
    return {
        row["queue"]: {"policy": row["policy"], "definition": row["definition"]}
        for row in json.loads(first_line)
    }


def delete_users(prefix: str) -> None:
    """Delete every user whose name starts with ``prefix`` (users are cluster-wide)."""
    users = [
        row["user"]
        for row in json.loads(rabbitmqctl("list_users", "--formatter", "json") or "[]")
        if row["user"].startswith(prefix)
    ]
    # In parallel: each rabbitmqctl call spends most of its time booting an Erlang VM.
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda user: rabbitmqctl("delete_user", user, check=False), users))


@contextlib.contextmanager
def scratch_users(prefix: str = "t") -> Iterator[str]:
    """A unique user-name prefix; every user created under it is deleted afterwards."""
    unique = f"{prefix}{uuid.uuid4().hex[:8]}-"
    try:
        yield unique
    finally:
        delete_users(unique)


@dataclass(frozen=True)
class PrivateNode:
    """A RabbitMQ node of its own (never the shared one): its name, AMQP and management ports."""

    name: str
    amqp_port: int
    management_port: int

    def amqp_url(self, vhost: str, user: str = "guest", password: str = "guest") -> str:
        return amqp_url(vhost, user, password, port=self.amqp_port)

    @property
    def management_url(self) -> str:
        return f"http://{AMQP_HOST}:{self.management_port}"

    def ctl(self, *args: str) -> str:
        return rabbitmqctl("-n", self.name, *args)


def _answers(node: PrivateNode, *args: str) -> bool:
    result = subprocess.run(
        ["rabbitmqctl", "-q", "-n", node.name, *args], capture_output=True, timeout=90
    )
    return result.returncode == 0


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind((AMQP_HOST, 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def private_node(*, management: bool = False, timeout_s: float = 60) -> Iterator[PrivateNode]:
    """Start a throw-away node (as the rabbitmq user, like the packaged server), stop it after.

    Slow (~10 s): for tests that need a plugin or must disturb a broker. Without root or the
    packaged RabbitMQ server it skips locally and fails in CI (never a silent pass there).
    """
    tier.require_slow("a private RabbitMQ node")
    server = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
    if os.geteuid() != 0 or not server.exists():
        message = "a private RabbitMQ node needs root and the packaged rabbitmq-server"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    node = PrivateNode(f"fleet-test-{uuid.uuid4().hex[:8]}@localhost", unused_port(), unused_port())
    base = Path(tempfile.mkdtemp(prefix="fleet-node-"))
    (base / "rabbitmq.conf").write_text(
        f"listeners.tcp.local = {AMQP_HOST}:{node.amqp_port}\n"
        f"management.tcp.ip = {AMQP_HOST}\nmanagement.tcp.port = {node.management_port}\n"
    )
    (base / "enabled_plugins").write_text("[rabbitmq_management]." if management else "[].")
    shutil.chown(base, "rabbitmq", "rabbitmq")
    environment = {
        "HOME": "/var/lib/rabbitmq",
        "RABBITMQ_NODENAME": node.name,
        "RABBITMQ_DIST_PORT": str(unused_port()),
        "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
        "RABBITMQ_LOG_BASE": str(base / "log"),
        "RABBITMQ_PID_FILE": str(base / "pid"),
        "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq"),
        "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
    }
    assignments = " ".join(f"{k}={shlex.quote(v)}" for k, v in environment.items())
    start = f"cd /var/lib/rabbitmq && env {assignments} {server} -detached"
    try:
        subprocess.run(["su", "rabbitmq", "-s", "/bin/sh", "-c", start], check=True, timeout=30)
        deadline = time.monotonic() + timeout_s
        # await_startup fails at once while the node is not yet reachable: ask until it answers.
        while not _answers(node, "await_startup"):
            if time.monotonic() > deadline:
                logs = " ".join(p.read_text()[-500:] for p in (base / "log").glob("*.log"))
                raise RuntimeError(f"private node {node.name} did not start: {logs}")
            time.sleep(0.5)
        yield node
    finally:
        rabbitmqctl("-n", node.name, "stop", check=False)
        shutil.rmtree(base, ignore_errors=True)
