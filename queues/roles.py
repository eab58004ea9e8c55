"""Roles: one RabbitMQ user per upstream producer and per fleet duty, each with least privilege.

    producer (order-management, …)  write ``fleet`` only, topic permission = its own routing keys
    fleet-worker-<domain>           read <domain> and <domain>.suspect; write fleet, fleet.retry,
                                    fleet.dead (topic permission on fleet = the catalogue's types)
    fleet-archiver                  read <domain>.dead and unroutable
    fleet-operator                  write fleet.replay; read the retry tiers (``retry flush``)
    fleet-admin                     declare and bind the topology; policies (``policymaker``)

Nobody may write the default exchange (``amq.default``): every message enters through a named
exchange whose bindings and permissions say where it may go. ``guest`` is not used by the fleet.
Passive declares need no permission, so workers have ``configure ^$``.

Users are cluster-wide, permissions per vhost. Passwords never live in the repository:
``apply_roles`` takes them from the caller (``fleet roles apply`` reads
``FLEET_ROLE_PASSWORD_<USER>``) or generates one for a new user and returns it once.
deploy/rabbitmq/roles.json is ``render_roles()``, committed; a test fails when it drifts.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from queues.contracts import MESSAGE_TYPES
from queues.errors import FleetError
from queues.topology import (
    DEAD_EXCHANGE,
    DOMAINS,
    FLEET_EXCHANGE,
    REPLAY_EXCHANGE,
    RETRY_EXCHANGE,
    UNROUTABLE_EXCHANGE,
    UNROUTABLE_QUEUE,
    Rabbitmqctl,
)

NOTHING = "^$"

# Who may publish which types (shell-style patterns, as in the key registry: ``*`` spans dots).
PRODUCER_TYPES: Mapping[str, tuple[str, ...]] = {
    "order-management": ("provisioning.service.*", "billing.account.open"),
    "self-care": ("crm.*",),
    "payment-gateway": ("billing.payment.*",),
    "network-inventory": ("provisioning.service.suspend", "provisioning.service.resume"),
}


class RolesError(FleetError):
    """The roles cannot be applied as asked."""

    reason = "roles"


@dataclass(frozen=True)
class Permissions:
    """Regular expressions over exchange and queue names, as ``rabbitmqctl set_permissions``."""

    configure: str
    write: str
    read: str


@dataclass(frozen=True)
class Role:
    """One user: what it is for, what it may touch, how many connections it may hold."""

    user: str
    purpose: str
    permissions: Permissions
    fleet_topic_write: str | None
    max_connections: int
    max_channels: int
    tags: tuple[str, ...] = ()


def _alternatives(names: Iterable[str]) -> str:
    return "|".join(re.escape(n) for n in names)


def types_regex(patterns: Iterable[str]) -> str:
    """An anchored regex matching exactly the types the shell-style ``patterns`` match."""
    parts = [".*".join(re.escape(piece) for piece in p.split("*")) for p in patterns]
    return f"^({'|'.join(parts)})$"


def password_env_var(user: str) -> str:
    """``fleet-worker-billing`` ▶ ``FLEET_ROLE_PASSWORD_FLEET_WORKER_BILLING``."""
    return "FLEET_ROLE_PASSWORD_" + re.sub(r"[^A-Za-z0-9]", "_", user).upper()


def fleet_roles() -> tuple[Role, ...]:
    """Every role, producers first."""
    domains = _alternatives(DOMAINS)
    exchanges = _alternatives(
        name.removeprefix(FLEET_EXCHANGE + ".")
        for name in (UNROUTABLE_EXCHANGE, RETRY_EXCHANGE, DEAD_EXCHANGE, REPLAY_EXCHANGE)
    )
    roles = [
        Role(
            user=producer,
            purpose=f"upstream producer: publishes {', '.join(types)} to {FLEET_EXCHANGE}",
            permissions=Permissions(NOTHING, f"^{re.escape(FLEET_EXCHANGE)}$", NOTHING),
            fleet_topic_write=types_regex(types),
            max_connections=50,
            max_channels=500,
        )
        for producer, types in PRODUCER_TYPES.items()
    ]
    for domain in DOMAINS:
        roles.append(
            Role(
                user=f"fleet-worker-{domain}",
                purpose=(
                    f"{domain} workers: consume {domain} and {domain}.suspect; publish retries, "
                    "dead letters and outbox follow-ups"
                ),
                permissions=Permissions(
                    configure=NOTHING,
                    write=f"^{re.escape(FLEET_EXCHANGE)}(\\.(retry|dead))?$",
                    read=f"^{re.escape(domain)}(\\.suspect)?$",
                ),
                fleet_topic_write=types_regex(MESSAGE_TYPES),
                max_connections=100,
                max_channels=1000,
            )
        )
    roles += [
        Role(
            user="fleet-archiver",
            purpose="archiver: consumes the dead-letter queues and unroutable into PostgreSQL",
            permissions=Permissions(
                NOTHING, NOTHING, f"^(({domains})\\.dead|{re.escape(UNROUTABLE_QUEUE)})$"
            ),
            fleet_topic_write=None,
            max_connections=10,
            max_channels=50,
        ),
        Role(
            user="fleet-operator",
            purpose="operators: replay to fleet.replay; read retry tiers (retry flush)",
            permissions=Permissions(
                NOTHING, f"^{re.escape(REPLAY_EXCHANGE)}$", f"^({domains})\\.retry\\.[0-9]+[smh]$"
            ),
            fleet_topic_write=None,
            max_connections=5,
            max_channels=20,
        ),
        Role(
            user="fleet-admin",
            purpose=(
                "topology apply: declares exchanges and queues, binds, sets policies; "
                "cannot publish or consume"
            ),
            permissions=Permissions(
                # Exchange declares and the alternate exchange (read on fleet, write on its AE);
                # queue declares and binds (write on the queue, read on the exchange).
                configure=(
                    f"^({re.escape(FLEET_EXCHANGE)}(\\.({exchanges}))?"
                    f"|{re.escape(UNROUTABLE_QUEUE)}|({domains})\\.[a-z0-9.]+|({domains}))$"
                ),
                write=(
                    f"^({re.escape(UNROUTABLE_EXCHANGE)}|{re.escape(UNROUTABLE_QUEUE)}"
                    f"|({domains})\\.[a-z0-9.]+|({domains}))$"
                ),
                read=f"^{re.escape(FLEET_EXCHANGE)}(\\.({exchanges}))?$",
            ),
            fleet_topic_write=None,
            max_connections=2,
            max_channels=10,
            tags=("policymaker",),
        ),
    ]
    return tuple(roles)


def roles_document(roles: Sequence[Role] | None = None) -> dict[str, Any]:
    """The roles as committed in deploy/rabbitmq/roles.json (no passwords, ever)."""
    return {
        "about": (
            "Generated by `fleet topology export` from queues/roles.py; applied per vhost by "
            "`fleet roles apply --vhost V`. Passwords come from FLEET_ROLE_PASSWORD_<USER> "
            "or are generated and printed once. guest is not used by the fleet: disable it."
        ),
        "users": [
            {
                "name": role.user,
                "purpose": role.purpose,
                "tags": list(role.tags),
                "permissions": {
                    "configure": role.permissions.configure,
                    "write": role.permissions.write,
                    "read": role.permissions.read,
                },
                "topic_permissions": (
                    [{"exchange": FLEET_EXCHANGE, "write": role.fleet_topic_write, "read": NOTHING}]
                    if role.fleet_topic_write
                    else []
                ),
                "limits": {
                    "max-connections": role.max_connections,
                    "max-channels": role.max_channels,
                },
                "password_env": password_env_var(role.user),
            }
            for role in (roles or fleet_roles())
        ],
    }


def render_roles(roles: Sequence[Role] | None = None) -> str:
    return json.dumps(roles_document(roles), indent=2, sort_keys=True) + "\n"


@dataclass(frozen=True)
class RoleChange:
    user: str
    item: Literal["user", "password", "tags", "permissions", "topic permissions", "limits"]
    action: Literal["created", "updated", "unchanged"]
    detail: str = ""

    def to_json(self) -> dict[str, str]:
        return {"user": self.user, "item": self.item, "action": self.action, "detail": self.detail}


@dataclass(frozen=True)
class RolesReport:
    vhost: str
    changes: tuple[RoleChange, ...]
    generated_passwords: Mapping[str, str] = field(repr=False)

    @property
    def changed(self) -> tuple[RoleChange, ...]:
        return tuple(c for c in self.changes if c.action != "unchanged")

    def users(self) -> list[str]:
        return sorted({c.user for c in self.changes})


HASHES: Mapping[str, Any] = {
    "rabbit_password_hashing_sha256": hashlib.sha256,
    "rabbit_password_hashing_sha512": hashlib.sha512,
}
HASHING = "rabbit_password_hashing_sha256"


def password_hash(password: str, salt: bytes | None = None, algorithm: str = HASHING) -> str:
    """RabbitMQ's salted hash: base64(salt ‖ H(salt ‖ UTF-8 password)), 4-byte random salt."""
    salt = secrets.token_bytes(4) if salt is None else salt
    digest = HASHES[algorithm](salt + password.encode()).digest()
    return base64.b64encode(salt + digest).decode()


def _password_matches(user: Mapping[str, Any], password: str) -> bool:
    algorithm = str(user.get("hashing_algorithm", HASHING))
    if algorithm not in HASHES:
        return False
    stored = base64.b64decode(str(user.get("password_hash", "")) or "AAAA")
    return hmac.compare_digest(
        password_hash(password, stored[:4], algorithm).encode(),
        base64.b64encode(stored).decode().encode(),
    )


def apply_roles(
    vhost: str,
    *,
    prefix: str = "",
    passwords: Mapping[str, str] | None = None,
    roles: Sequence[Role] | None = None,
    ctl: Rabbitmqctl | None = None,
) -> RolesReport:
    """Create or update every role's user (password, tags, limits), its permissions on ``vhost``
    and its topic permission on ``fleet``; idempotent. Needs rabbitmqctl on the broker node.

    ``passwords`` maps a full user name (prefix included) to its password: an existing user whose
    password differs gets it; a new user without one gets a generated password, returned once in
    ``generated_passwords``. An existing user without one keeps its password.

    The broker is read with one ``export_definitions`` and changed with one ``import_definitions``
    (users as salted hashes, never a clear password on a command line), instead of ~50
    add_user / set_permissions / set_topic_permissions / set_user_limits calls at ~0.3 s each.

    Raises:
        RolesError: the vhost does not exist.
        TopologyError: rabbitmqctl fails.
    """
    ctl = ctl or Rabbitmqctl()
    passwords = passwords or {}
    state = json.loads(ctl.run("export_definitions", "-", "--format", "json"))
    if vhost not in {v["name"] for v in state.get("vhosts", [])}:
        raise RolesError(f"vhost {vhost!r} does not exist: create it with rabbitmqctl add_vhost")
    users = {u["name"]: u for u in state.get("users", [])}
    permissions = {
        p["user"]: Permissions(p["configure"], p["write"], p["read"])
        for p in state.get("permissions", [])
        if p["vhost"] == vhost
    }
    topics = {
        t["user"]: (t["write"], t["read"])
        for t in state.get("topic_permissions", [])
        if t["vhost"] == vhost and t["exchange"] == FLEET_EXCHANGE
    }

    changes: list[RoleChange] = []
    generated: dict[str, str] = {}
    document: dict[str, list[dict[str, Any]]] = {
        "users": [],
        "permissions": [],
        "topic_permissions": [],
    }
    for role in roles or fleet_roles():
        user = prefix + role.user
        have = users.get(user)
        password = passwords.get(user)
        limits = {"max-connections": role.max_connections, "max-channels": role.max_channels}
        entry = {"name": user, "tags": list(role.tags), "limits": limits}
        if have is None:
            if password is None:
                password = generated[user] = secrets.token_urlsafe(24)
            entry |= {"password_hash": password_hash(password), "hashing_algorithm": HASHING}
            changes.append(RoleChange(user, "user", "created"))
        else:
            if password is not None and not _password_matches(have, password):
                entry |= {"password_hash": password_hash(password), "hashing_algorithm": HASHING}
                changes.append(RoleChange(user, "password", "updated"))
            else:
                entry |= {
                    "password_hash": have.get("password_hash", ""),
                    "hashing_algorithm": have.get("hashing_algorithm", HASHING),
                }
                detail = "kept" if password is None else ""
                changes.append(RoleChange(user, "password", "unchanged", detail))
            tags = have.get("tags") or []
            tags = tags.split(",") if isinstance(tags, str) else list(tags)
            tags_same = sorted(t for t in tags if t) == sorted(role.tags)
            changes.append(RoleChange(user, "tags", "unchanged" if tags_same else "updated"))
            limits_same = dict(have.get("limits") or {}) == limits
            changes.append(RoleChange(user, "limits", "unchanged" if limits_same else "updated"))
        if have is None or any(c.user == user and c.action != "unchanged" for c in changes):
            document["users"].append(entry)

        wanted = role.permissions
        if permissions.get(user) != wanted:
            document["permissions"].append(
                {
                    "user": user,
                    "vhost": vhost,
                    "configure": wanted.configure,
                    "write": wanted.write,
                    "read": wanted.read,
                }
            )
            action: Literal["created", "updated"] = (
                "created" if user not in permissions else "updated"
            )
            changes.append(RoleChange(user, "permissions", action))
        else:
            changes.append(RoleChange(user, "permissions", "unchanged"))

        if role.fleet_topic_write is not None:
            wanted_topic = (role.fleet_topic_write, NOTHING)
            if topics.get(user) != wanted_topic:
                document["topic_permissions"].append(
                    {
                        "user": user,
                        "vhost": vhost,
                        "exchange": FLEET_EXCHANGE,
                        "write": wanted_topic[0],
                        "read": wanted_topic[1],
                    }
                )
                action = "created" if user not in topics else "updated"
                changes.append(RoleChange(user, "topic permissions", action))
            else:
                changes.append(RoleChange(user, "topic permissions", "unchanged"))

    if any(document.values()):
        ctl.run("import_definitions", "--format", "json", stdin=json.dumps(document))
    return RolesReport(vhost=vhost, changes=tuple(changes), generated_passwords=generated)
