"""Roles on the real broker: every grant used, every denial proven (403 ACCESS_REFUSED)."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from dataclasses import dataclass

import pika
import pytest
from pika.exceptions import (
    ChannelClosedByBroker,
    ProbableAccessDeniedError,
    ProbableAuthenticationError,
)

from queues.contracts import MESSAGE_TYPES
from queues.roles import apply_roles, fleet_roles
from queues.topology import TopologyConfig, apply, check, desired_topology
from tests.support.rabbit import amqp_url, scratch_users, scratch_vhost

pytestmark = pytest.mark.broker

CONFIG = TopologyConfig(retry_tiers_s=(1, 2))

# Written out, not derived from queues.roles, so a wrong pattern there fails here.
MAY_PUBLISH = {
    "order-management": {
        "billing.account.open",
        "provisioning.service.activate",
        "provisioning.service.suspend",
        "provisioning.service.resume",
        "provisioning.service.terminate",
    },
    "self-care": {"crm.customer.upsert", "crm.interaction.log"},
    "payment-gateway": {"billing.payment.record"},
    "network-inventory": {"provisioning.service.suspend", "provisioning.service.resume"},
}


@dataclass(frozen=True)
class Fleet:
    vhost: str
    prefix: str
    passwords: dict[str, str]

    def url(self, role: str) -> str:
        user = self.prefix + role
        return amqp_url(self.vhost, user, self.passwords[user])

    @contextlib.contextmanager
    def connect(self, role: str) -> Iterator[pika.BlockingConnection]:
        connection = pika.BlockingConnection(pika.URLParameters(self.url(role)))
        try:
            yield connection
        finally:
            if connection.is_open:
                connection.close()


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    """One vhost with the topology and every role (unique user names, deleted afterwards)."""
    with scratch_vhost("test-roles", CONFIG) as vhost, scratch_users() as prefix:
        passwords = {prefix + role.user: secrets.token_urlsafe(16) for role in fleet_roles()}
        apply_roles(vhost, prefix=prefix, passwords=passwords)
        yield Fleet(vhost, prefix, passwords)


@pytest.fixture
def guest(fleet: Fleet) -> Iterator[pika.adapters.blocking_connection.BlockingChannel]:
    """A guest channel to look at queue depths; every queue is purged afterwards."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url(fleet.vhost)))
    try:
        channel = connection.channel()
        yield channel
        for queue in desired_topology(CONFIG).queues:
            channel.queue_purge(queue.name)
    finally:
        connection.close()


def publish(connection: pika.BlockingConnection, exchange: str, key: str) -> str:
    """``ok`` when the broker confirmed the message, ``refused`` on 403 ACCESS_REFUSED."""
    channel = connection.channel()
    channel.confirm_delivery()
    try:
        channel.basic_publish(exchange, key, b"x", pika.BasicProperties(delivery_mode=2))
    except ChannelClosedByBroker as exc:
        assert exc.reply_code == 403, exc
        assert "ACCESS_REFUSED" in exc.reply_text
        return "refused"
    channel.close()
    return "ok"


def consume(connection: pika.BlockingConnection, queue: str) -> str:
    """``ok`` when a basic.consume on ``queue`` is allowed, ``refused`` on 403."""
    channel = connection.channel()
    try:
        tag = channel.basic_consume(queue, lambda *_: None)
    except ChannelClosedByBroker as exc:
        assert exc.reply_code == 403, exc
        assert "ACCESS_REFUSED" in exc.reply_text
        return "refused"
    channel.basic_cancel(tag)
    channel.close()
    return "ok"


def depth(channel: pika.adapters.blocking_connection.BlockingChannel, queue: str) -> int:
    return int(channel.queue_declare(queue, passive=True).method.message_count)


def test_applying_the_roles_again_changes_nothing(fleet: Fleet) -> None:
    again = apply_roles(fleet.vhost, prefix=fleet.prefix, passwords=fleet.passwords)

    assert again.changed == ()
    assert again.generated_passwords == {}
    assert len(again.users()) == len(fleet_roles())


def test_each_producer_may_publish_exactly_its_own_routing_keys(
    fleet: Fleet, guest: pika.adapters.blocking_connection.BlockingChannel
) -> None:
    for producer, allowed in MAY_PUBLISH.items():
        with fleet.connect(producer) as connection:
            outcomes = {t: publish(connection, "fleet", t) for t in MESSAGE_TYPES}
            assert {t for t, o in outcomes.items() if o == "ok"} == allowed, producer
            assert publish(connection, "fleet.replay", "billing") == "refused"
            assert publish(connection, "fleet.retry", "billing.1s") == "refused"
            assert consume(connection, "billing") == "refused"
    published = sum(len(allowed) for allowed in MAY_PUBLISH.values())
    fanned_out = 1  # self-care's crm.customer.upsert lands in crm and billing
    assert (
        sum(depth(guest, q) for q in ("billing", "provisioning", "crm")) == published + fanned_out
    )


def test_nobody_may_write_the_default_exchange(fleet: Fleet) -> None:
    for role in fleet_roles():
        with fleet.connect(role.user) as connection:
            assert publish(connection, "", "billing") == "refused", role.user


def test_a_worker_consumes_its_own_queues_and_publishes_retries_dead_letters_and_follow_ups(
    fleet: Fleet, guest: pika.adapters.blocking_connection.BlockingChannel
) -> None:
    with fleet.connect("fleet-worker-billing") as connection:
        assert consume(connection, "billing") == "ok"
        assert consume(connection, "billing.suspect") == "ok"
        assert consume(connection, "crm") == "refused"
        assert consume(connection, "billing.dead") == "refused"
        assert consume(connection, "billing.retry.1s") == "refused"
        assert publish(connection, "fleet.retry", "billing.suspect") == "ok"
        assert publish(connection, "fleet.dead", "billing") == "ok"
        assert publish(connection, "fleet", "crm.interaction.log") == "ok"
        assert publish(connection, "fleet", "nobody.knows.this") == "refused"
        assert publish(connection, "fleet.replay", "billing") == "refused"
    arrived = {q: depth(guest, q) for q in ("billing.suspect", "billing.dead", "crm")}
    assert arrived == {"billing.suspect": 1, "billing.dead": 1, "crm": 1}


def test_the_operator_replays_but_never_touches_work_queues(
    fleet: Fleet, guest: pika.adapters.blocking_connection.BlockingChannel
) -> None:
    with fleet.connect("fleet-operator") as connection:
        assert consume(connection, "billing") == "refused"
        assert consume(connection, "billing.suspect") == "refused"
        assert consume(connection, "billing.dead") == "refused"
        assert consume(connection, "billing.retry.1s") == "ok"
        assert publish(connection, "fleet", "billing.charge.post") == "refused"
        assert publish(connection, "fleet.retry", "billing.1s") == "refused"
        assert publish(connection, "fleet.replay", "billing") == "ok"
    assert depth(guest, "billing") == 1


def test_the_archiver_only_reads_dead_letters_and_unroutable(fleet: Fleet) -> None:
    with fleet.connect("fleet-archiver") as connection:
        assert consume(connection, "crm.dead") == "ok"
        assert consume(connection, "unroutable") == "ok"
        assert consume(connection, "crm") == "refused"
        assert consume(connection, "crm.retry.1s") == "refused"
        assert publish(connection, "fleet.dead", "crm") == "refused"


def test_the_admin_applies_the_topology_but_cannot_publish_or_consume(fleet: Fleet) -> None:
    with scratch_vhost("test-admin") as other:
        apply_roles(other, prefix=fleet.prefix, passwords=fleet.passwords)
        admin = fleet.prefix + "fleet-admin"
        admin_url = amqp_url(other, admin, fleet.passwords[admin])

        report = apply(admin_url, CONFIG)

        assert report.changed
        assert check(admin_url, CONFIG).ok
        with contextlib.closing(pika.BlockingConnection(pika.URLParameters(admin_url))) as conn:
            assert publish(conn, "fleet", "billing.charge.post") == "refused"
            assert publish(conn, "fleet.replay", "billing") == "refused"
            assert consume(conn, "billing") == "refused"


def test_a_users_connection_limit_is_enforced(fleet: Fleet) -> None:
    admin = next(r for r in fleet_roles() if r.user == "fleet-admin")
    with contextlib.ExitStack() as stack:
        for _ in range(admin.max_connections):
            stack.enter_context(fleet.connect("fleet-admin"))
        with pytest.raises(ProbableAccessDeniedError, match="connection limit"):
            pika.BlockingConnection(pika.URLParameters(fleet.url("fleet-admin")))


def test_a_new_user_gets_a_generated_password_once_and_an_env_password_replaces_it(
    fleet: Fleet,
) -> None:
    operator = [r for r in fleet_roles() if r.user == "fleet-operator"]
    with scratch_users() as prefix:
        user = prefix + "fleet-operator"
        first = apply_roles(fleet.vhost, prefix=prefix, roles=operator)
        generated = first.generated_passwords[user]
        pika.BlockingConnection(pika.URLParameters(amqp_url(fleet.vhost, user, generated))).close()

        kept = apply_roles(fleet.vhost, prefix=prefix, roles=operator)
        rotated = apply_roles(fleet.vhost, prefix=prefix, roles=operator, passwords={user: "n3w"})

        assert kept.generated_passwords == {} and kept.changed == ()
        assert [(c.item, c.action) for c in rotated.changed] == [("password", "updated")]
        pika.BlockingConnection(pika.URLParameters(amqp_url(fleet.vhost, user, "n3w"))).close()
        with pytest.raises(ProbableAuthenticationError):
            pika.BlockingConnection(pika.URLParameters(amqp_url(fleet.vhost, user, generated)))
