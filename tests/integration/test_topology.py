"""The topology on the real broker: apply is idempotent, tunables change live, routing is exact."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel
from pika.exceptions import NackError

from queues.contracts import MESSAGE_TYPES
from queues.roles import apply_roles
from queues.topology import (
    HttpAdmin,
    PolicyVia,
    Rabbitmqctl,
    RabbitmqctlAdmin,
    TopologyConfig,
    TopologyError,
    admin,
    apply,
    check,
    desired_topology,
)
from tests.support.polling import poll
from tests.support.rabbit import (
    amqp_url,
    effective_policies,
    private_node,
    rabbitmqctl,
    scratch_vhost,
    unused_port,
)

pytestmark = pytest.mark.broker

CONFIG = TopologyConfig(retry_tiers_s=(1, 2))
DEFINITIONS = Path(__file__).parents[2] / "deploy" / "rabbitmq" / "definitions.json"
WORK_QUEUES = ("billing", "provisioning", "crm")


@pytest.fixture
def ready_vhost() -> Iterator[str]:
    """A scratch vhost with the topology in place (tiers of 1 s and 2 s), imported as
    definitions: the starting state of the tests whose subject is what comes after."""
    with scratch_vhost("test-topology", CONFIG) as name:
        yield name


@pytest.fixture
def url(ready_vhost: str) -> str:
    return amqp_url(ready_vhost)


@contextlib.contextmanager
def confirmed_channel(url: str) -> Iterator[BlockingChannel]:
    """A guest channel in confirm mode: every publish below waits for the broker's ack."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        ch = connection.channel()
        ch.confirm_delivery()
        yield ch
    finally:
        if connection.is_open:
            connection.close()


@pytest.fixture
def channel(vhost_url: str) -> Iterator[BlockingChannel]:
    with confirmed_channel(vhost_url) as ch:
        yield ch


@pytest.fixture
def ready_channel(url: str) -> Iterator[BlockingChannel]:
    with confirmed_channel(url) as ch:
        yield ch


@pytest.fixture(scope="module")
def routing_url() -> Iterator[str]:
    """One vhost with the topology, shared by the tests that only publish and consume."""
    with scratch_vhost("test-routing", CONFIG) as name:
        yield amqp_url(name)


@pytest.fixture
def routed(routing_url: str) -> Iterator[BlockingChannel]:
    """A confirm-mode channel on the shared vhost, every queue purged afterwards."""
    with confirmed_channel(routing_url) as ch:
        try:
            yield ch
        finally:
            for queue in desired_topology(CONFIG).queues:
                ch.queue_purge(queue.name)


def depth(channel: BlockingChannel, queue: str) -> int:
    # A passive declare asks the queue itself; list_queues lags for quorum queues (seconds).
    return int(channel.queue_declare(queue, passive=True).method.message_count)


def drain(channel: BlockingChannel, queue: str) -> list[tuple[Any, Any, bytes]]:
    messages = []
    while True:
        method, properties, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return messages
        messages.append((method, properties, body))


def publish(
    channel: BlockingChannel, exchange: str, key: str, body: bytes = b"x", **properties: Any
) -> None:
    channel.basic_publish(
        exchange,
        key,
        body,
        properties=pika.BasicProperties(delivery_mode=2, **properties),
        mandatory=True,
    )


def test_apply_twice_changes_nothing_the_second_time_and_check_is_clean(
    vhost_url: str, vhost: str
) -> None:
    first = apply(vhost_url, CONFIG)
    second = apply(vhost_url, CONFIG)

    topology = desired_topology(CONFIG)
    entities = (
        len(topology.exchanges)
        + len(topology.queues)
        + len(topology.bindings)
        + len(topology.policies)
    )
    assert len(first.changed) == entities
    assert {c.action for c in first.changed} == {"created"}
    assert second.changed == ()
    assert len(second.changes) == entities
    report = check(vhost_url, CONFIG)
    assert report.ok, report.findings

    queues = json.loads(
        rabbitmqctl("list_queues", "-p", vhost, "name", "type", "arguments", "--formatter", "json")
    )
    assert {q["name"] for q in queues} == {q.name for q in topology.queues}
    for queue in queues:
        assert queue["type"] == "quorum"
        assert queue["arguments"] == [["x-queue-type", "longstr", "quorum"]], queue["name"]
    governed = effective_policies(vhost)
    assert all(governed[q.name]["policy"] == f"fleet.{q.name}" for q in topology.queues)


def test_a_changed_delivery_limit_and_max_length_apply_live_to_a_queue_holding_messages(
    url: str, ready_vhost: str, ready_channel: BlockingChannel
) -> None:
    for _ in range(3):
        publish(ready_channel, "fleet", "billing.charge.post")
    assert depth(ready_channel, "billing") == 3

    changed = dataclasses.replace(CONFIG, delivery_limit=2, queue_max_length=4)
    report = apply(url, changed)

    assert {(c.kind, c.name, c.action) for c in report.changed} == {
        ("policy", f"fleet.{q}", "updated") for q in WORK_QUEUES
    }
    effective = effective_policies(ready_vhost)["billing"]["definition"]
    assert effective["delivery-limit"] == 2
    assert effective["max-length"] == 4
    assert depth(ready_channel, "billing") == 3, "the queue kept its messages"

    # The new max length holds: reject-publish ▶ nack. A quorum queue refuses only once it is
    # *over* its limit, so it admits max-length + 1 messages.
    publish(ready_channel, "fleet", "billing.charge.post")
    publish(ready_channel, "fleet", "billing.charge.post")
    with pytest.raises(NackError):
        publish(ready_channel, "fleet", "billing.charge.post")
    assert depth(ready_channel, "billing") == 5
    # The new delivery limit holds: 2 ▶ the third return dead-letters the message.
    for _ in range(3):
        method, _, _ = ready_channel.basic_get("billing")
        assert method is not None
        ready_channel.basic_nack(method.delivery_tag, requeue=True)
    poll(lambda: depth(ready_channel, "billing.dead") == 1, 10, "a message in billing.dead")
    assert depth(ready_channel, "billing") == 4
    [(_, properties, _)] = drain(ready_channel, "billing.dead")
    assert properties.headers["x-death"][0]["reason"] == "delivery_limit"
    assert check(url, changed).ok


def test_a_changed_tier_ttl_applies_live_but_parked_messages_keep_their_expiry(
    url: str, ready_vhost: str, ready_channel: BlockingChannel
) -> None:
    # Given a tier whose policy drifted to 60 s, holding a message parked under it.
    tier_policy = next(p for p in desired_topology(CONFIG).policies if p.name.endswith("retry.1s"))
    drifted = {**tier_policy.definition, "message-ttl": 60_000}
    rabbitmqctl(
        "set_policy", "-p", ready_vhost, "--apply-to", "queues", "--priority", "10",
        "fleet.billing.retry.1s", "^billing\\.retry\\.1s$", json.dumps(drifted),
    )  # fmt: skip
    [finding] = check(url, CONFIG).findings
    assert (finding.name, finding.problem) == ("fleet.billing.retry.1s", "different")
    assert "message-ttl: 60000 → 1000" in finding.detail
    publish(ready_channel, "fleet.retry", "billing.1s", b"parked-under-60s")

    # When apply restores 1 s.
    report = apply(url, CONFIG)

    assert [(c.name, c.action) for c in report.changed] == [("fleet.billing.retry.1s", "updated")]
    assert effective_policies(ready_vhost)["billing.retry.1s"]["definition"]["message-ttl"] == 1000
    assert depth(ready_channel, "billing.retry.1s") == 1, "the tier kept its message"
    # Then a message parked now is due after 1 s, yet waits behind the older one: quorum queues
    # stamp the expiry at enqueue and expire only from the head.
    publish(ready_channel, "fleet.retry", "billing.1s", b"parked-under-1s")
    time.sleep(2)
    assert (depth(ready_channel, "billing.retry.1s"), depth(ready_channel, "billing")) == (2, 0)
    # Once the head is gone the new TTL governs: the younger message is past due at once.
    _, _, body = ready_channel.basic_get("billing.retry.1s", auto_ack=True)
    assert body == b"parked-under-60s"
    poll(lambda: depth(ready_channel, "billing") == 1, 10, "a message in billing")
    assert [body for _, _, body in drain(ready_channel, "billing")] == [b"parked-under-1s"]


def test_check_reports_a_deleted_binding_and_a_deleted_policy_with_what_to_do(
    url: str, ready_vhost: str, ready_channel: BlockingChannel
) -> None:
    ready_channel.queue_unbind("billing", "fleet", "crm.customer.upsert")
    rabbitmqctl("clear_policy", "-p", ready_vhost, "fleet.crm")

    report = check(url, CONFIG)

    assert not report.ok
    found = {(f.kind, f.name, f.problem): f for f in report.findings}
    assert set(found) == {
        ("binding", "fleet ▶ billing [crm.customer.upsert]", "missing"),
        ("policy", "fleet.crm", "missing"),
    }
    assert all("fleet topology apply" in f.todo for f in found.values())
    repaired = apply(url, CONFIG)
    assert {(c.kind, c.action) for c in repaired.changed} == {
        ("binding", "created"),
        ("policy", "created"),
    }
    assert check(url, CONFIG).ok


def test_check_reports_a_stray_binding_and_a_leftover_tier(
    url: str, ready_vhost: str, ready_channel: BlockingChannel
) -> None:
    ready_channel.queue_bind("billing", "fleet", "crm.#")
    shorter = dataclasses.replace(CONFIG, retry_tiers_s=(1,))

    findings = {(f.kind, f.name, f.problem): f for f in check(url, shorter).findings}

    stray = findings.pop(("binding", "fleet ▶ billing [crm.#]", "extra"))
    assert "unbind" in stray.todo
    leftover = findings.pop(("queue", "billing.retry.2s", "extra"))
    assert "delete_queue" in leftover.todo
    assert all(problem == "extra" for _, _, problem in findings)


def test_every_catalogue_type_lands_in_its_queues_and_an_unknown_type_in_unroutable(
    routed: BlockingChannel,
) -> None:
    unknown = f"nobody.knows.{uuid.uuid4().hex[:8]}"
    for message_type in (*MESSAGE_TYPES, unknown):
        publish(routed, "fleet", message_type, message_type.encode())

    received = {
        queue: sorted(method.routing_key for method, _, _ in drain(routed, queue))
        for queue in (*WORK_QUEUES, "unroutable")
    }

    by_prefix = {q: sorted(t for t in MESSAGE_TYPES if t.startswith(f"{q}.")) for q in WORK_QUEUES}
    assert received["billing"] == sorted([*by_prefix["billing"], "crm.customer.upsert"])
    assert received["crm"] == by_prefix["crm"]
    assert "crm.customer.upsert" in received["crm"]
    assert received["provisioning"] == by_prefix["provisioning"]
    assert received["unroutable"] == [unknown]


def test_lanes_dead_letters_and_replays_reach_exactly_one_queue(routed: BlockingChannel) -> None:
    publish(routed, "fleet.retry", "billing.suspect", b"suspect", type="billing.charge.post")
    publish(routed, "fleet.dead", "crm", b"dead", type="crm.customer.upsert")
    publish(routed, "fleet.replay", "crm", b"replayed", type="crm.customer.upsert")

    counts = {q.name: depth(routed, q.name) for q in desired_topology(CONFIG).queues}

    assert {q: n for q, n in counts.items() if n} == {"billing.suspect": 1, "crm.dead": 1, "crm": 1}


def test_a_parked_retry_returns_only_to_its_work_queue_with_its_headers(
    routed: BlockingChannel, routing_url: str
) -> None:
    message_id = str(uuid.uuid4())
    headers = {"x-fleet-attempt": 2, "x-fleet-reason": "not_yet"}
    # A fanned-out type: back through "fleet" it would reach crm too.
    publish(
        routed,
        "fleet.retry",
        "billing.1s",
        b"envelope",
        message_id=message_id,
        type="crm.customer.upsert",
        content_type="application/jose",
        headers=headers,
    )

    # Parked: the tier holds it, its work queue does not; it leaves when the tier's TTL (1 s,
    # read back from the broker) expires it.
    assert (depth(routed, "billing.retry.1s"), depth(routed, "billing")) == (1, 0)
    vhost = unquote(urlsplit(routing_url).path.lstrip("/"))
    assert effective_policies(vhost)["billing.retry.1s"]["definition"]["message-ttl"] == 1000
    poll(lambda: depth(routed, "billing") == 1, 10, "a message in billing")

    [(method, properties, body)] = drain(routed, "billing")
    assert (method.exchange, method.routing_key) == ("", "billing")
    assert body == b"envelope"
    assert properties.message_id == message_id
    assert properties.type == "crm.customer.upsert"
    assert properties.content_type == "application/jose"
    assert {k: properties.headers[k] for k in headers} == headers
    [death] = properties.headers["x-death"]
    assert (death["reason"], death["queue"], death["exchange"]) == (
        "expired",
        "billing.retry.1s",
        "fleet.retry",
    )
    assert depth(routed, "crm") == 0
    assert depth(routed, "billing.retry.1s") == 0
    assert depth(routed, "unroutable") == 0


def test_a_rejected_message_is_dead_lettered_at_least_once_to_its_dead_queue(
    routing_url: str, routed: BlockingChannel
) -> None:
    vhost = pika.URLParameters(routing_url).virtual_host
    publish(routed, "fleet", "provisioning.service.activate", b"poison")
    method, _, _ = routed.basic_get("provisioning")
    routed.basic_reject(method.delivery_tag, requeue=False)

    poll(lambda: depth(routed, "provisioning.dead") == 1, 10, "a message in provisioning.dead")

    [(_, properties, body)] = drain(routed, "provisioning.dead")
    assert body == b"poison"
    assert properties.headers["x-death"][0]["reason"] == "rejected"
    effective = effective_policies(vhost)
    for queue in desired_topology(CONFIG).queues:
        definition = effective[queue.name]["definition"]
        if queue.role in ("work", "suspect", "retry"):
            # at-least-once silently falls back to at-most-once without reject-publish.
            assert definition["dead-letter-strategy"] == "at-least-once", queue.name
            assert definition["overflow"] == "reject-publish", queue.name
        else:
            assert "max-length" not in definition, "dead letters are never dropped"
            assert "dead-letter-exchange" not in definition
    assert effective["provisioning"]["definition"]["dead-letter-exchange"] == "fleet.dead"
    assert effective["provisioning"]["definition"]["dead-letter-routing-key"] == "provisioning"


def test_apply_refuses_a_classic_queue_in_the_way_and_check_says_what_to_do(
    vhost_url: str, channel: BlockingChannel
) -> None:
    channel.queue_declare("crm", durable=True)

    with pytest.raises(TopologyError, match="queue crm: type classic"):
        apply(vhost_url, CONFIG)

    [finding] = [f for f in check(vhost_url, CONFIG).findings if f.name == "crm"]
    assert finding.problem == "different"
    assert "delete_queue" in finding.todo


def test_the_committed_definitions_import_into_a_clean_vhost_and_check_clean(
    vhost: str, vhost_url: str
) -> None:
    document = json.loads(DEFINITIONS.read_text())
    document["vhosts"] = [{"name": vhost}]
    for section in ("exchanges", "queues", "bindings", "policies"):
        for item in document[section]:
            item["vhost"] = vhost
    # Through stdin: Debian's rabbitmqctl runs as the rabbitmq user, which cannot read tmp_path.
    Rabbitmqctl().run("import_definitions", "--format", "json", stdin=json.dumps(document))

    report = check(vhost_url, TopologyConfig())
    assert report.ok, report.findings
    assert apply(vhost_url, TopologyConfig()).changed == ()


@pytest.mark.slow
def test_the_management_api_path_reads_and_writes_what_rabbitmqctl_does() -> None:
    # The shared node has no management plugin (and must keep it that way): a private one has.
    with private_node(management=True) as node:
        node.ctl("add_vhost", "fleet")
        apply_roles("fleet", passwords={"fleet-admin": "admin-pw"}, ctl=Rabbitmqctl(node.name))
        admin_url = node.amqp_url("fleet", "fleet-admin", "admin-pw")
        api = node.management_url

        first = apply(admin_url, CONFIG, management_url=api)

        assert first.via == "management API", "auto picks the API when it answers"
        assert apply(admin_url, CONFIG, management_url=api).changed == ()
        assert check(admin_url, CONFIG, management_url=api).ok
        over_http = HttpAdmin(api, "fleet-admin", "admin-pw").read_state("fleet")
        over_ctl = RabbitmqctlAdmin(Rabbitmqctl(node.name)).read_state("fleet")
        assert over_http.exchanges == over_ctl.exchanges
        assert over_http.bindings == over_ctl.bindings
        assert over_http.policies == over_ctl.policies
        assert {n: (q.type, dict(q.arguments)) for n, q in over_http.queues.items()} == {
            n: (q.type, dict(q.arguments)) for n, q in over_ctl.queues.items()
        }
        drifted = check(
            admin_url, dataclasses.replace(CONFIG, delivery_limit=7), management_url=api
        )
        assert {f.name for f in drifted.findings} == {f"fleet.{q}" for q in WORK_QUEUES}
        with pytest.raises(TopologyError, match="policymaker"):
            check(node.amqp_url("fleet", "fleet-admin", "wrong"), CONFIG, management_url=api)


@pytest.mark.slow
def test_a_guessed_management_api_of_another_broker_is_not_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The default management port answers for a node that does not serve the URL's AMQP port
    # (two brokers on one host): auto must not write that node's policies.
    with private_node(management=True) as node, scratch_vhost("guess") as vhost:
        monkeypatch.setattr(admin, "MANAGEMENT_PORT", node.management_port)
        assert apply(amqp_url(vhost), CONFIG).via == "rabbitmqctl"
        other_vhosts = node.ctl("list_vhosts", "--no-table-headers").split()
        assert other_vhosts == ["/"], "nothing written on the other node"
        assert effective_policies(vhost)


@pytest.mark.parametrize("via", ["auto", "rabbitmqctl"])
def test_rabbitmqctl_is_never_used_on_a_node_that_does_not_serve_the_url(
    via: PolicyVia,
) -> None:
    # rabbitmqctl reaches this machine's default node; a URL naming another port is another
    # broker (a private node, a tunnel), and its policies must not land on the default node.
    with scratch_vhost("other") as vhost:
        url = amqp_url(vhost, port=unused_port())
        with pytest.raises(TopologyError, match=r"does not serve AMQP on port \d+: name the"):
            apply(url, CONFIG, via=via)
        assert rabbitmqctl("list_policies", "-p", vhost).strip() == ""
