"""The broker topology: exchanges, quorum queues, bindings and the policies that tune them.

A pure description (``desired_topology``) plus ``apply`` (idempotent, reports what changed),
``check`` (reports every difference with what to do) and ``definitions`` (RabbitMQ definitions
JSON, committed as deploy/rabbitmq/definitions.json). docs/topology.md explains the shape.

    upstream ─▶ fleet (topic) ── billing.# / provisioning.# / crm.# ─▶ <domain>   (quorum)
                 │  crm.customer.upsert ─▶ billing (fan-out)
                 └─ no binding ─▶ alternate exchange fleet.unroutable (fanout) ─▶ unroutable
    worker  ─▶ fleet.retry (direct) ── <domain>.<tier> ─▶ <domain>.retry.<tier>
                 │                                        └ TTL ─▶ default exchange ─▶ <domain>
                 └─ <domain>.suspect ─▶ <domain>.suspect
    worker  ─▶ fleet.dead (direct) ── <domain> ─▶ <domain>.dead
    operator ─▶ fleet.replay (direct) ── <domain> ─▶ <domain>        (never re-fanned out)

The only declare argument of a queue is ``x-queue-type: quorum``. Every tunable (delivery limit,
dead-letter exchange and key, dead-letter strategy, overflow, max length, tier TTL) is a policy,
because a declare argument can never change on a live queue (406 PRECONDITION_FAILED) while a
policy changes in place. One policy per queue, named ``fleet.<queue>``, pattern ``^<queue>$``:
RabbitMQ applies only the highest-priority matching policy, so each carries all of its keys.

Entities are declared over AMQP (pika). Policies, and the listing ``check`` needs, go through the
management HTTP API when it answers, else through ``rabbitmqctl`` on the broker's own machine.
This module imports only pika, the standard library and ``queues``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from base64 import b64encode
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import pika
import pika.exceptions

from queues.errors import FleetError

DOMAINS: tuple[str, ...] = ("billing", "provisioning", "crm")

FLEET_EXCHANGE = "fleet"
UNROUTABLE_EXCHANGE = "fleet.unroutable"
RETRY_EXCHANGE = "fleet.retry"
DEAD_EXCHANGE = "fleet.dead"
REPLAY_EXCHANGE = "fleet.replay"
UNROUTABLE_QUEUE = "unroutable"
DEFAULT_EXCHANGE = ""

QUEUE_ARGUMENTS: Mapping[str, Any] = {"x-queue-type": "quorum"}
POLICY_PREFIX = "fleet."
# Above the 0 of a stray catch-all policy: RabbitMQ applies only the highest-priority match.
POLICY_PRIORITY = 10

# Types that fan out beyond their own domain's queue: billing mirrors the account holder.
FAN_OUTS: Mapping[str, tuple[str, ...]] = {"crm.customer.upsert": ("billing",)}

MANAGEMENT_PORT = 15672

ExchangeType = Literal["topic", "direct", "fanout"]
Action = Literal["created", "updated", "unchanged"]
PolicyVia = Literal["auto", "http", "rabbitmqctl"]


class TopologyError(FleetError):
    """The topology cannot be applied or inspected as asked."""

    reason = "topology"


# ── configuration ──────────────────────────────────────────────────────────────────────────────


class TopologySettings(Protocol):
    """What the topology needs from the fleet's settings (``workers.settings.Settings`` fits)."""

    @property
    def retry_tiers_s(self) -> Sequence[int]: ...
    @property
    def delivery_limit(self) -> int: ...
    @property
    def suspect_delivery_limit(self) -> int: ...
    @property
    def queue_max_length(self) -> int: ...


@dataclass(frozen=True)
class TopologyConfig:
    """The topology's tunables; the defaults equal the fleet's default settings (a test pins it)."""

    retry_tiers_s: tuple[int, ...] = (5, 30, 120, 600, 3600)
    delivery_limit: int = 20
    suspect_delivery_limit: int = 3
    queue_max_length: int = 1_000_000

    def __post_init__(self) -> None:
        tiers = self.retry_tiers_s
        if not tiers or any(s <= 0 for s in tiers):
            raise TopologyError("retry tiers must be one or more positive numbers of seconds")
        if len({tier_name(s) for s in tiers}) != len(tiers):
            raise TopologyError("retry tiers must be distinct")
        if self.delivery_limit < 1 or self.suspect_delivery_limit < 1:
            raise TopologyError("delivery limits must be at least 1")
        if self.queue_max_length < 1:
            raise TopologyError("queue max length must be at least 1")

    @classmethod
    def from_settings(cls, settings: TopologySettings) -> TopologyConfig:
        return cls(
            retry_tiers_s=tuple(settings.retry_tiers_s),
            delivery_limit=settings.delivery_limit,
            suspect_delivery_limit=settings.suspect_delivery_limit,
            queue_max_length=settings.queue_max_length,
        )


# ── names ──────────────────────────────────────────────────────────────────────────────────────


def tier_name(seconds: int) -> str:
    """The name of a retry tier: 5 ▶ ``5s``, 120 ▶ ``2m``, 3600 ▶ ``1h``, 90 ▶ ``90s``."""
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    if seconds % 60 == 0:
        return f"{seconds // 60}m"
    return f"{seconds}s"


def suspect_queue(domain: str) -> str:
    return f"{domain}.suspect"


def retry_queue(domain: str, seconds: int) -> str:
    return f"{domain}.retry.{tier_name(seconds)}"


def retry_routing_key(domain: str, seconds: int) -> str:
    """The key on ``fleet.retry`` that parks a message of ``domain`` in a tier."""
    return f"{domain}.{tier_name(seconds)}"


def suspect_routing_key(domain: str) -> str:
    """The key on ``fleet.retry`` that moves a crash suspect to its lane."""
    return f"{domain}.suspect"


def dead_queue(domain: str) -> str:
    return f"{domain}.dead"


def policy_name(queue: str) -> str:
    return f"{POLICY_PREFIX}{queue}"


def queues_of(message_type: str) -> tuple[str, ...]:
    """The work queues a type published to ``fleet`` lands in (its domain's, then fan-outs)."""
    domain = message_type.split(".", 1)[0]
    own = (domain,) if domain in DOMAINS else ()
    return own + tuple(q for q in FAN_OUTS.get(message_type, ()) if q not in own)


# ── the description ────────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class Exchange:
    name: str
    type: ExchangeType
    arguments: Mapping[str, Any] = field(default_factory=dict)
    internal: bool = False


@dataclass(frozen=True)
class Queue:
    name: str
    role: Literal["work", "suspect", "retry", "dead", "unroutable"]


@dataclass(frozen=True, order=True)
class Binding:
    source: str
    destination: str
    routing_key: str

    def __str__(self) -> str:
        return f"{self.source} ▶ {self.destination} [{self.routing_key or '∅'}]"


@dataclass(frozen=True)
class Policy:
    name: str
    pattern: str
    definition: Mapping[str, Any]
    priority: int = POLICY_PRIORITY
    apply_to: str = "queues"

    def same_as(self, other: Policy) -> bool:
        return (
            self.pattern == other.pattern
            and dict(self.definition) == dict(other.definition)
            and self.priority == other.priority
            and self.apply_to == other.apply_to
        )


@dataclass(frozen=True)
class Topology:
    exchanges: tuple[Exchange, ...]
    queues: tuple[Queue, ...]
    bindings: tuple[Binding, ...]
    policies: tuple[Policy, ...]

    def exchange_names(self) -> set[str]:
        return {e.name for e in self.exchanges}


def _queue_policy(queue: str, definition: Mapping[str, Any]) -> Policy:
    return Policy(name=policy_name(queue), pattern=f"^{re.escape(queue)}$", definition=definition)


def desired_topology(config: TopologyConfig | None = None) -> Topology:
    """The whole desired state for ``config`` (default: the fleet's default settings)."""
    config = config or TopologyConfig()
    exchanges = (
        Exchange(FLEET_EXCHANGE, "topic", {"alternate-exchange": UNROUTABLE_EXCHANGE}),
        # Internal: only the broker routes into it (as fleet's alternate exchange).
        Exchange(UNROUTABLE_EXCHANGE, "fanout", internal=True),
        Exchange(RETRY_EXCHANGE, "direct"),
        Exchange(DEAD_EXCHANGE, "direct"),
        Exchange(REPLAY_EXCHANGE, "direct"),
    )
    at_least_once = {"dead-letter-strategy": "at-least-once", "overflow": "reject-publish"}
    queues: list[Queue] = []
    bindings: list[Binding] = []
    policies: list[Policy] = []
    for domain in DOMAINS:
        suspect, dead = suspect_queue(domain), dead_queue(domain)
        queues += [Queue(domain, "work"), Queue(suspect, "suspect")]
        bindings += [
            Binding(FLEET_EXCHANGE, domain, f"{domain}.#"),
            Binding(RETRY_EXCHANGE, suspect, suspect_routing_key(domain)),
            Binding(DEAD_EXCHANGE, dead, domain),
            Binding(REPLAY_EXCHANGE, domain, domain),
        ]
        dead_letter = {"dead-letter-exchange": DEAD_EXCHANGE, "dead-letter-routing-key": domain}
        policies += [
            _queue_policy(
                domain,
                {
                    "delivery-limit": config.delivery_limit,
                    "max-length": config.queue_max_length,
                    **dead_letter,
                    **at_least_once,
                },
            ),
            _queue_policy(
                suspect,
                {"delivery-limit": config.suspect_delivery_limit, **dead_letter, **at_least_once},
            ),
        ]
        for seconds in config.retry_tiers_s:
            tier = retry_queue(domain, seconds)
            queues.append(Queue(tier, "retry"))
            bindings.append(Binding(RETRY_EXCHANGE, tier, retry_routing_key(domain, seconds)))
            # Back through the default exchange, straight to the work queue: through "fleet"
            # a fanned-out type would be delivered to its other queues a second time.
            policies.append(
                _queue_policy(
                    tier,
                    {
                        "message-ttl": seconds * 1000,
                        "dead-letter-exchange": DEFAULT_EXCHANGE,
                        "dead-letter-routing-key": domain,
                        **at_least_once,
                    },
                )
            )
        queues.append(Queue(dead, "dead"))
        # Dead letters are never dropped: no max length, no delivery limit, no DLX. The policy
        # pins the queue (no stray policy governs it) and makes any max length that an operator
        # policy adds refuse instead of dropping the oldest dead letters.
        policies.append(_queue_policy(dead, {"overflow": "reject-publish"}))
    queues.append(Queue(UNROUTABLE_QUEUE, "unroutable"))
    bindings.append(Binding(UNROUTABLE_EXCHANGE, UNROUTABLE_QUEUE, ""))
    policies.append(_queue_policy(UNROUTABLE_QUEUE, {"overflow": "reject-publish"}))
    for message_type, targets in FAN_OUTS.items():
        bindings += [Binding(FLEET_EXCHANGE, queue, message_type) for queue in targets]
    return Topology(
        exchanges=exchanges,
        queues=tuple(queues),
        bindings=tuple(sorted(bindings)),
        policies=tuple(policies),
    )


def definitions(config: TopologyConfig | None = None, vhost: str = "/") -> dict[str, Any]:
    """The desired state as RabbitMQ definitions JSON (``rabbitmqctl import_definitions``).

    No users or permissions: passwords never live in the repository (see queues.roles).
    """
    topology = desired_topology(config)
    return {
        "vhosts": [{"name": vhost}],
        "exchanges": [
            {
                "name": e.name,
                "vhost": vhost,
                "type": e.type,
                "durable": True,
                "auto_delete": False,
                "internal": e.internal,
                "arguments": dict(e.arguments),
            }
            for e in topology.exchanges
        ],
        "queues": [
            {
                "name": q.name,
                "vhost": vhost,
                "durable": True,
                "auto_delete": False,
                "arguments": dict(QUEUE_ARGUMENTS),
            }
            for q in topology.queues
        ],
        "bindings": [
            {
                "source": b.source,
                "vhost": vhost,
                "destination": b.destination,
                "destination_type": "queue",
                "routing_key": b.routing_key,
                "arguments": {},
            }
            for b in topology.bindings
        ],
        "policies": [_policy_json(vhost, p) for p in topology.policies],
    }


def render_definitions(config: TopologyConfig | None = None, vhost: str = "/") -> str:
    """``definitions`` as stable text (sorted keys, trailing newline), as committed."""
    return json.dumps(definitions(config, vhost), indent=2, sort_keys=True) + "\n"


# ── what the broker has ────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class ExchangeState:
    name: str
    type: str
    durable: bool
    auto_delete: bool
    internal: bool
    arguments: Mapping[str, Any]


@dataclass(frozen=True)
class QueueState:
    name: str
    type: str
    durable: bool
    auto_delete: bool
    arguments: Mapping[str, Any]
    policy: str | None
    messages: int


@dataclass(frozen=True)
class BrokerState:
    """One vhost as the broker lists it (default exchange and its implicit bindings left out)."""

    exchanges: Mapping[str, ExchangeState]
    queues: Mapping[str, QueueState]
    bindings: frozenset[Binding]
    policies: Mapping[str, Policy]


class BrokerAdmin(Protocol):
    """Lists a vhost and sets policies: the management API or rabbitmqctl."""

    name: str

    def read_state(self, vhost: str) -> BrokerState: ...
    def set_policies(self, vhost: str, policies: Sequence[Policy]) -> None: ...


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


def _table(raw: Any) -> dict[str, Any]:
    """rabbitmqctl prints arguments as ``[[key, type, value], ...]``; the HTTP API as an object."""
    if isinstance(raw, dict):
        return dict(raw)
    return {str(item[0]): item[2] for item in raw or []}


def _policy_json(vhost: str, policy: Policy) -> dict[str, Any]:
    return {
        "vhost": vhost,
        "name": policy.name,
        "pattern": policy.pattern,
        "apply-to": policy.apply_to,
        "definition": dict(policy.definition),
        "priority": policy.priority,
    }


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
            exchanges={
                row["name"]: ExchangeState(
                    name=row["name"],
                    type=row["type"],
                    durable=bool(row["durable"]),
                    auto_delete=bool(row["auto_delete"]),
                    internal=bool(row["internal"]),
                    arguments=_table(row["arguments"]),
                )
                for row in exchanges
                if row["name"]
            },
            queues={
                row["name"]: QueueState(
                    name=row["name"],
                    type=str(row["type"]),
                    durable=bool(row["durable"]),
                    auto_delete=bool(row["auto_delete"]),
                    arguments=_table(row["arguments"]),
                    policy=row.get("policy") or None,
                    messages=int(row.get("messages") or 0),
                )
                for row in queues
            },
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
            "policies": [_policy_json(vhost, policy) for policy in policies],
        }
        self.ctl.run("import_definitions", "--format", "json", stdin=json.dumps(document))


class HttpAdmin:
    """Policies and listings through the management HTTP API (user needs ``policymaker``)."""

    name = "management API"

    def __init__(self, base_url: str, username: str, password: str, timeout_s: float = 10) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        token = b64encode(f"{username}:{password}".encode()).decode()
        self._auth = f"Basic {token}"
        self.username = username

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """One call; JSON in and out.

        Raises:
            TopologyError: the API refuses (401/403/…); OSError when it cannot be reached.
        """
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(  # noqa: S310 - the URL is the operator's management URL
            self.base_url + path,
            data=data,
            method=method,
            headers={"Authorization": self._auth, "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as response:  # noqa: S310
                text = response.read().decode()
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                raise TopologyError(
                    f"management API refused user {self.username} ({exc.code}): check the "
                    "password and give the user the policymaker tag, or use --via rabbitmqctl"
                ) from None
            raise TopologyError(f"management API {method} {path} failed: HTTP {exc.code}") from None
        return json.loads(text) if text.strip() else None

    def _list(self, path: str) -> list[dict[str, Any]]:
        rows = self.request("GET", path)
        return list(rows or [])

    def read_state(self, vhost: str) -> BrokerState:
        v = urllib.parse.quote(vhost, safe="")
        columns = "name,type,durable,auto_delete,arguments,policy,messages"
        return BrokerState(
            exchanges={
                row["name"]: ExchangeState(
                    name=row["name"],
                    type=row["type"],
                    durable=bool(row["durable"]),
                    auto_delete=bool(row["auto_delete"]),
                    internal=bool(row["internal"]),
                    arguments=_table(row.get("arguments")),
                )
                for row in self._list(f"/api/exchanges/{v}")
                if row["name"]
            },
            queues={
                row["name"]: QueueState(
                    name=row["name"],
                    type=str(row.get("type", "classic")),
                    durable=bool(row["durable"]),
                    auto_delete=bool(row["auto_delete"]),
                    arguments=_table(row.get("arguments")),
                    policy=row.get("policy") or None,
                    messages=int(row.get("messages") or 0),
                )
                for row in self._list(f"/api/queues/{v}?columns={columns}")
            },
            bindings=frozenset(
                Binding(row["source"], row["destination"], row["routing_key"])
                for row in self._list(f"/api/bindings/{v}")
                if row["source"] and row["destination_type"] == "queue"
            ),
            policies={
                row["name"]: Policy(
                    name=row["name"],
                    pattern=row["pattern"],
                    definition=row["definition"],
                    priority=int(row["priority"]),
                    apply_to=row["apply-to"],
                )
                for row in self._list(f"/api/policies/{v}")
            },
        )

    def set_policies(self, vhost: str, policies: Sequence[Policy]) -> None:
        v = urllib.parse.quote(vhost, safe="")
        for policy in policies:
            body = _policy_json(vhost, policy)
            del body["vhost"], body["name"]
            self.request(
                "PUT", f"/api/policies/{v}/{urllib.parse.quote(policy.name, safe='')}", body
            )


@dataclass(frozen=True)
class BrokerAddress:
    """An AMQP URL taken apart."""

    url: str
    host: str
    port: int
    vhost: str
    username: str
    password: str
    tls: bool

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        try:
            params = pika.URLParameters(url)
        except Exception as exc:
            raise TopologyError(f"not an AMQP URL ({type(exc).__name__}): check the URL") from None
        credentials = params.credentials
        return cls(
            url=url,
            host=str(params.host),
            port=int(params.port),
            vhost=str(params.virtual_host),
            username=str(getattr(credentials, "username", "")),
            password=str(getattr(credentials, "password", "")),
            tls=url.startswith("amqps://"),
        )

    def is_local(self) -> bool:
        return self.host in {"127.0.0.1", "localhost", "::1"}

    def management_url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.host}:{MANAGEMENT_PORT}"


def serves_amqp(listeners: Iterable[Mapping[str, Any]], port: int) -> bool:
    """Whether a node's listener list (``rabbitmqctl status`` or ``/api/overview``) includes
    AMQP (plain or TLS) on ``port``."""
    return any(
        str(listener.get("protocol", "")).startswith("amqp") and listener.get("port") == port
        for listener in listeners
    )


def broker_admin(
    address: BrokerAddress,
    via: PolicyVia = "auto",
    management_url: str | None = None,
    ctl: Rabbitmqctl | None = None,
) -> BrokerAdmin:
    """How to list the vhost and set policies.

    ``auto``: the management API at ``management_url`` (default ``http://<host>:15672``) when it
    answers (a default one only when its broker serves the URL's AMQP port); otherwise
    rabbitmqctl if the broker is this machine. rabbitmqctl is used only on the node that serves
    the URL's AMQP port: never another broker's policies by mistake. A refusal
    (wrong password, no ``policymaker`` tag) is an error, never a silent switch of identity.

    Raises:
        TopologyError: neither way is available, or the management API refuses the user.
    """
    http = HttpAdmin(management_url or address.management_url(), address.username, address.password)
    if via == "http":
        return http
    if via == "rabbitmqctl":
        return RabbitmqctlAdmin(ctl, amqp_port=address.port)
    hint = "enable the management plugin (port 15672) or run on the broker node"
    try:
        overview = http.request("GET", "/api/overview")
    except (OSError, ValueError):
        if management_url is not None:
            raise TopologyError(
                f"management API at {management_url} does not answer: check --management-url"
            ) from None
    else:
        # A guessed management URL may belong to another broker on the same host: use it only
        # when that broker serves the URL's AMQP port.
        listeners = overview.get("listeners", []) if isinstance(overview, dict) else []
        if management_url is not None or serves_amqp(listeners, address.port):
            return http
        hint = (
            f"the management API at {http.base_url} serves no AMQP on port {address.port} "
            "(another broker, or a forwarded port): pass --management-url"
        )
    if ctl is not None or (address.is_local() and shutil.which("rabbitmqctl")):
        return RabbitmqctlAdmin(ctl, amqp_port=address.port)
    raise TopologyError(f"cannot manage policies on {address.host}: {hint}")


# ── comparing ──────────────────────────────────────────────────────────────────────────────────


def _exchange_differences(want: Exchange, have: ExchangeState) -> list[str]:
    problems = []
    if have.type != want.type:
        problems.append(f"type {have.type}, want {want.type}")
    if not have.durable or have.auto_delete:
        problems.append("not durable or auto-delete")
    if have.internal != want.internal:
        problems.append(f"internal={have.internal}, want {want.internal}")
    if dict(have.arguments) != dict(want.arguments):
        problems.append(f"arguments {dict(have.arguments)}, want {dict(want.arguments)}")
    return problems


def _queue_differences(have: QueueState) -> list[str]:
    problems = []
    if have.type != "quorum":
        problems.append(f"type {have.type}, want quorum")
    if not have.durable or have.auto_delete:
        problems.append("not durable or auto-delete")
    extra = sorted(set(have.arguments) - set(QUEUE_ARGUMENTS))
    if extra:
        problems.append(f"declare arguments {', '.join(extra)} (tunables belong in policies)")
    return problems


def _definition_diff(have: Policy, want: Policy) -> str:
    keys = sorted(set(have.definition) | set(want.definition))
    changes = [
        f"{k}: {have.definition.get(k, '∅')} → {want.definition.get(k, '∅')}"
        for k in keys
        if have.definition.get(k) != want.definition.get(k)
    ]
    if have.pattern != want.pattern:
        changes.append(f"pattern: {have.pattern} → {want.pattern}")
    if have.priority != want.priority:
        changes.append(f"priority: {have.priority} → {want.priority}")
    if have.apply_to != want.apply_to:
        changes.append(f"apply-to: {have.apply_to} → {want.apply_to}")
    return "; ".join(changes)


def _owned_queue_name(name: str) -> bool:
    return name == UNROUTABLE_QUEUE or name.split(".", 1)[0] in DOMAINS


# ── apply ──────────────────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class Change:
    """What ``apply`` did to one entity."""

    kind: Literal["exchange", "queue", "binding", "policy"]
    name: str
    action: Action
    detail: str = ""

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "name": self.name, "action": self.action, "detail": self.detail}


@dataclass(frozen=True)
class ApplyReport:
    vhost: str
    via: str
    changes: tuple[Change, ...]

    @property
    def changed(self) -> tuple[Change, ...]:
        return tuple(c for c in self.changes if c.action != "unchanged")

    def to_json(self) -> dict[str, Any]:
        return {
            "vhost": self.vhost,
            "policies_via": self.via,
            "changed": len(self.changed),
            "changes": [c.to_json() for c in self.changes],
        }


def _connect(address: BrokerAddress) -> pika.BlockingConnection:
    try:
        return pika.BlockingConnection(pika.URLParameters(address.url))
    except pika.exceptions.AMQPError as exc:
        raise TopologyError(
            f"cannot connect to {address.host}:{address.port} vhost {address.vhost!r} "
            f"as {address.username} ({type(exc).__name__}): check the URL, vhost and credentials"
        ) from None


def apply(
    url: str,
    config: TopologyConfig | None = None,
    *,
    via: PolicyVia = "auto",
    management_url: str | None = None,
    ctl: Rabbitmqctl | None = None,
) -> ApplyReport:
    """Make the vhost of ``url`` match the desired topology; idempotent.

    Policies first (so a new queue is governed from its first message), then exchanges, queues
    and bindings over AMQP. Nothing is deleted or re-declared differently: a changed tunable is
    a changed policy, applied live to queues that keep their messages.

    Raises:
        TopologyError: the broker is unreachable, or an entity exists in a form that can only be
            fixed by deleting it (e.g. a classic queue named like a fleet queue).
    """
    address = BrokerAddress.parse(url)
    topology = desired_topology(config)
    admin = broker_admin(address, via, management_url, ctl)
    state = admin.read_state(address.vhost)
    conflicts = [
        f"exchange {e.name}: {'; '.join(problems)}"
        for e in topology.exchanges
        if e.name in state.exchanges
        and (problems := _exchange_differences(e, state.exchanges[e.name]))
    ] + [
        f"queue {q.name}: {'; '.join(problems)}"
        for q in topology.queues
        if q.name in state.queues and (problems := _queue_differences(state.queues[q.name]))
    ]
    if conflicts:
        raise TopologyError(
            f"{conflicts[0]}{f' (and {len(conflicts) - 1} more)' if len(conflicts) > 1 else ''}"
            " — cannot change in place: see `fleet topology check` for what to do"
        )

    changes: list[Change] = []
    admin.set_policies(
        address.vhost,
        [
            policy
            for policy in topology.policies
            if not ((have := state.policies.get(policy.name)) and have.same_as(policy))
        ],
    )
    for policy in topology.policies:
        have = state.policies.get(policy.name)
        if have is not None and have.same_as(policy):
            changes.append(Change("policy", policy.name, "unchanged"))
        elif have is None:
            changes.append(Change("policy", policy.name, "created"))
        else:
            changes.append(Change("policy", policy.name, "updated", _definition_diff(have, policy)))

    connection = _connect(address)
    try:
        channel = connection.channel()
        # The alternate exchange first, so "fleet" never exists without it.
        for exchange in sorted(topology.exchanges, key=lambda e: e.name != UNROUTABLE_EXCHANGE):
            channel.exchange_declare(
                exchange.name,
                exchange.type,
                durable=True,
                internal=exchange.internal,
                arguments=dict(exchange.arguments) or None,
            )
            action: Action = "unchanged" if exchange.name in state.exchanges else "created"
            changes.append(Change("exchange", exchange.name, action))
        for queue in topology.queues:
            channel.queue_declare(queue.name, durable=True, arguments=dict(QUEUE_ARGUMENTS))
            action = "unchanged" if queue.name in state.queues else "created"
            changes.append(Change("queue", queue.name, action))
        for binding in topology.bindings:
            channel.queue_bind(binding.destination, binding.source, binding.routing_key)
            action = "unchanged" if binding in state.bindings else "created"
            changes.append(Change("binding", str(binding), action))
    except pika.exceptions.ChannelClosedByBroker as exc:
        raise TopologyError(
            f"broker refused a declare ({exc.reply_code} {exc.reply_text}): "
            "the user needs the fleet-admin permissions"
        ) from None
    finally:
        if connection.is_open:
            connection.close()
    return ApplyReport(vhost=address.vhost, via=admin.name, changes=tuple(changes))


# ── check ──────────────────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class Finding:
    """One difference between the broker and the desired topology, and what to do about it."""

    kind: Literal["exchange", "queue", "binding", "policy"]
    name: str
    problem: Literal["missing", "different", "extra", "not governing"]
    detail: str
    todo: str

    def to_json(self) -> dict[str, str]:
        return {
            "kind": self.kind,
            "name": self.name,
            "problem": self.problem,
            "detail": self.detail,
            "todo": self.todo,
        }


@dataclass(frozen=True)
class CheckReport:
    vhost: str
    via: str
    findings: tuple[Finding, ...]

    @property
    def ok(self) -> bool:
        return not self.findings

    def to_json(self) -> dict[str, Any]:
        return {
            "vhost": self.vhost,
            "via": self.via,
            "ok": self.ok,
            "findings": [f.to_json() for f in self.findings],
        }


APPLY = "run `fleet topology apply`"


def compare(topology: Topology, state: BrokerState, vhost: str) -> list[Finding]:
    """Every difference between ``state`` and ``topology``, each with what to do."""
    findings: list[Finding] = []
    p = f"-p {vhost} " if vhost != "/" else ""

    for e in topology.exchanges:
        have = state.exchanges.get(e.name)
        if have is None:
            findings.append(Finding("exchange", e.name, "missing", "not declared", APPLY))
        elif problems := _exchange_differences(e, have):
            findings.append(
                Finding(
                    "exchange",
                    e.name,
                    "different",
                    "; ".join(problems),
                    "an exchange never changes in place: delete it (management UI or "
                    f"rabbitmqadmin; publishes fail until it is back), then {APPLY}",
                )
            )
    for name in sorted(state.exchanges.keys() - topology.exchange_names()):
        if name.startswith(FLEET_EXCHANGE):
            findings.append(
                Finding(
                    "exchange",
                    name,
                    "extra",
                    "not part of the topology",
                    "delete it once nothing publishes to it",
                )
            )

    wanted_queues = {q.name for q in topology.queues}
    for q in topology.queues:
        have_q = state.queues.get(q.name)
        if have_q is None:
            findings.append(Finding("queue", q.name, "missing", "not declared", APPLY))
        elif problems := _queue_differences(have_q):
            findings.append(
                Finding(
                    "queue",
                    q.name,
                    "different",
                    "; ".join(problems),
                    f"a queue's type and declare arguments never change in place: stop its "
                    f"consumers, drain it ({have_q.messages} messages), "
                    f"rabbitmqctl delete_queue {p}{q.name}, then {APPLY}",
                )
            )
        elif have_q.policy is not None and have_q.policy != policy_name(q.name):
            # Only a named other policy counts: the management API lists a queue's policy only
            # after its next stats emission (~5 s), so "none" may just mean "not yet known".
            findings.append(
                Finding(
                    "queue",
                    q.name,
                    "not governing",
                    f"governed by {have_q.policy}, not {policy_name(q.name)}",
                    f"{APPLY}; if another policy still wins, clear it or give it a priority "
                    f"below {POLICY_PRIORITY}",
                )
            )
    for name in sorted(state.queues.keys() - wanted_queues):
        if _owned_queue_name(name):
            findings.append(
                Finding(
                    "queue",
                    name,
                    "extra",
                    f"not part of the topology, holds {state.queues[name].messages} messages",
                    f"a leftover (e.g. a removed retry tier drains by itself): once empty, "
                    f"rabbitmqctl delete_queue {p}{name} and clear_policy {p}{policy_name(name)}",
                )
            )

    wanted_bindings = set(topology.bindings)
    for b in topology.bindings:
        if b not in state.bindings:
            findings.append(
                Finding("binding", str(b), "missing", "messages for it do not arrive", APPLY)
            )
    owned_sources = topology.exchange_names()
    for b in sorted(state.bindings - wanted_bindings):
        if b.source in owned_sources:
            findings.append(
                Finding(
                    "binding",
                    str(b),
                    "extra",
                    "routes messages where the topology does not",
                    f"unbind it (management UI, or queue.unbind from a client): "
                    f"{b.destination} gets {b.routing_key or 'everything'} from {b.source}",
                )
            )

    wanted_policies = {pol.name for pol in topology.policies}
    for pol in topology.policies:
        have_p = state.policies.get(pol.name)
        if have_p is None:
            findings.append(
                Finding(
                    "policy",
                    pol.name,
                    "missing",
                    f"queue {pol.name.removeprefix(POLICY_PREFIX)} runs without its limits "
                    "and dead-lettering",
                    APPLY,
                )
            )
        elif not have_p.same_as(pol):
            findings.append(
                Finding("policy", pol.name, "different", _definition_diff(have_p, pol), APPLY)
            )
    for name in sorted(state.policies.keys() - wanted_policies):
        if name.startswith(POLICY_PREFIX):
            findings.append(
                Finding(
                    "policy",
                    name,
                    "extra",
                    f"matches {state.policies[name].pattern}, not part of the topology",
                    f"once its queue is gone: rabbitmqctl clear_policy {p}{name}",
                )
            )
    return findings


def check(
    url: str,
    config: TopologyConfig | None = None,
    *,
    via: PolicyVia = "auto",
    management_url: str | None = None,
    ctl: Rabbitmqctl | None = None,
) -> CheckReport:
    """Compare the vhost of ``url`` with the desired topology; changes nothing.

    Raises:
        TopologyError: the broker cannot be inspected.
    """
    address = BrokerAddress.parse(url)
    admin = broker_admin(address, via, management_url, ctl)
    state = admin.read_state(address.vhost)
    findings = compare(desired_topology(config), state, address.vhost)
    return CheckReport(vhost=address.vhost, via=admin.name, findings=tuple(findings))
