"""``rabbitmqctl`` as an admin backend: listings and policies on the broker's own machine."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from queues.topology.entities import Binding, Policy, TopologyError
from queues.topology.export import policy_json
from queues.topology.state import BrokerState, exchange_states, queue_states, serves_amqp


class Rabbitmqctl:
    """``rabbitmqctl`` on the broker's own machine (needs the node's Erlang cookie: root)."""

    def __init__(self, node: str | None = None, executable: str = "rabbitmqctl") -> None:
        self.node = node
        self.executable = executable

    def run(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        """Run one command; secrets go through ``stdin``, never the argument list (ps shows it).

        Raises:
            TopologyError: rabbitmqctl is missing, times out or fails (when ``check``).
        """
        command = [self.executable, "-q", *(["-n", self.node] if self.node else []), *args]
        try:
            result = subprocess.run(
                command, input=stdin, capture_output=True, text=True, timeout=60, check=False
            )
        except FileNotFoundError:
            raise TopologyError(
                "rabbitmqctl not found: run on a broker node or enable the management plugin"
            ) from None
        except subprocess.TimeoutExpired:
            raise TopologyError(f"rabbitmqctl {args[0]} timed out: is the broker up?") from None
        if check and result.returncode != 0:
            detail = " ".join((result.stderr or result.stdout).split())[:300]
            if "does not exist" in detail:
                hint = "create it or fix the name"
            elif any(w in detail.lower() for w in ("unable to connect", "nodedown", "cookie")):
                hint = "run as root on a broker node, or pass the node name"
            else:
                hint = "see the broker log"
            raise TopologyError(f"rabbitmqctl {args[0]} failed: {detail}; {hint}")
        return result.stdout

    def json_many(self, listings: Mapping[str, Sequence[str]]) -> dict[str, list[dict[str, Any]]]:
        """Several ``list_*`` commands at once: each call spends most of its time booting an
        Erlang VM, so they run in parallel."""
        with ThreadPoolExecutor(max_workers=len(listings)) as pool:
            futures = {key: pool.submit(self.json, *args) for key, args in listings.items()}
            return {key: future.result() for key, future in futures.items()}

    def json(self, *args: str) -> list[dict[str, Any]]:
        """A ``list_*`` command's rows (``--formatter json``)."""
        text = self.run(*args, "--formatter", "json").strip()
        if not text:
            return []
        rows = json.loads(text)
        if not isinstance(rows, list):
            raise TopologyError(f"rabbitmqctl {args[0]} printed no JSON list: broker too old?")
        return rows


# (node, port) pairs found serving AMQP, asked once per process: each check boots an Erlang VM
# and listeners rarely move.
_SERVING: set[tuple[str | None, int]] = set()


class RabbitmqctlAdmin:
    """Policies and listings through rabbitmqctl."""

    name = "rabbitmqctl"

    def __init__(self, ctl: Rabbitmqctl | None = None, *, amqp_port: int | None = None) -> None:
        """``amqp_port``: refuse to work unless the node rabbitmqctl reaches serves AMQP there
        (rabbitmqctl talks to the machine's default node, which may be another broker)."""
        self.ctl = ctl or Rabbitmqctl()
        self.amqp_port = amqp_port

    def verify(self) -> None:
        """Raises TopologyError when the node does not serve ``amqp_port``."""
        if self.amqp_port is None or (self.ctl.node, self.amqp_port) in _SERVING:
            return
        status = json.loads(self.ctl.run("status", "--formatter", "json") or "{}")
        listeners = status.get("listeners", []) if isinstance(status, dict) else []
        if not serves_amqp(listeners, self.amqp_port):
            node = f"node {self.ctl.node}" if self.ctl.node else "the default node"
            raise TopologyError(
                f"rabbitmqctl reaches {node}, which does not serve AMQP on port "
                f"{self.amqp_port}: name the broker's node (--node) or use its management API "
                "(--management-url)"
            )
        _SERVING.add((self.ctl.node, self.amqp_port))

    def read_state(self, vhost: str) -> BrokerState:
        listings = {
            "exchanges": ("list_exchanges", "-p", vhost, "name", "type", "durable",
                          "auto_delete", "internal", "arguments"),
            "queues": ("list_queues", "-p", vhost, "name", "type", "durable", "auto_delete",
                       "arguments", "policy", "messages"),
            "bindings": ("list_bindings", "-p", vhost, "source_name", "source_kind",
                         "destination_name", "destination_kind", "routing_key"),
            "policies": ("list_policies", "-p", vhost),
        }  # fmt: skip
        with ThreadPoolExecutor(max_workers=1) as pool:
            verified = pool.submit(self.verify)  # in parallel: each call boots an Erlang VM
            rows = self.ctl.json_many(listings)
            verified.result()
        exchanges, queues = rows["exchanges"], rows["queues"]
        bindings, policies = rows["bindings"], rows["policies"]
        return BrokerState(
            exchanges=exchange_states(exchanges),
            queues=queue_states(queues),
            bindings=frozenset(
                Binding(row["source_name"], row["destination_name"], row["routing_key"])
                for row in bindings
                if row["source_name"] and row["destination_kind"] == "queue"
            ),
            policies={
                row["name"]: Policy(
                    name=row["name"],
                    pattern=row["pattern"],
                    definition=json.loads(row["definition"])
                    if isinstance(row["definition"], str)
                    else row["definition"],
                    priority=int(row["priority"]),
                    apply_to=row["apply-to"],
                )
                for row in policies
            },
        )

    def set_policies(self, vhost: str, policies: Sequence[Policy]) -> None:
        # One definitions import instead of one set_policy per policy: each rabbitmqctl call
        # boots an Erlang VM (~0.3 s). Importing puts each policy as set_policy would.
        if not policies:
            return
        self.verify()
        document = {
            "policies": [policy_json(vhost, policy) for policy in policies],
        }
        self.ctl.run("import_definitions", "--format", "json", stdin=json.dumps(document))
