"""Which admin backend to use for a broker URL: its management API, or rabbitmqctl on its node.

Entities are declared over AMQP (``queues.topology.reconcile``); policies, and the listings a
check needs, go through the management HTTP API when it answers, else through ``rabbitmqctl``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from typing import Literal

import pika

from queues.topology.entities import TopologyError
from queues.topology.management import HttpAdmin
from queues.topology.rabbitmqctl import Rabbitmqctl, RabbitmqctlAdmin
from queues.topology.state import BrokerAdmin, serves_amqp

MANAGEMENT_PORT = 15672

PolicyVia = Literal["auto", "http", "rabbitmqctl"]


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
