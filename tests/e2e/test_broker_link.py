"""The link between workers and RabbitMQ: reset, stalled (blackholed) and slow.

The workers reach the broker through ``tests.support.tcp_proxy``; the test publishes directly.
Workers run with a 4 s heartbeat so a stall is noticed in seconds, on both sides: the broker
drops the silent connection (and returns its unacked deliveries), the worker drops its side and
reconnects. Every scenario ends with the ledger and with nothing left unacknowledged.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from queues.contracts import Contract
from tests.e2e.test_faults import workload
from tests.support.factories import sample
from tests.support.fleet import FleetUnderTest, fleet_under_test
from tests.support.polling import CTL_FIRST_S, poll
from tests.support.rabbit import AMQP_HOST, AMQP_PORT, vhost_connections
from tests.support.tcp_proxy import TcpProxy, tcp_proxy

pytestmark = [pytest.mark.broker, pytest.mark.db, pytest.mark.slow]

HEARTBEAT_S = 4
# The longest either side hears nothing before it calls the link dead: pika checks once per
# interval of heartbeat + 5 s, the broker allows two heartbeats.
DEAD_AFTER_S = max(HEARTBEAT_S + 5, 2 * HEARTBEAT_S)
# pika drops a link after a whole check interval without a byte, so up to two intervals, then
# Dramatiq restarts the consumer 3 s later; the broker takes about 2 heartbeats.
DETECTED_WITHIN_S = 8 * HEARTBEAT_S
# Slow for two of those windows: at least one whole window of each side falls inside.
SLOW_FOR_S = 2 * DEAD_AFTER_S
# More deliveries than the fleet holds prefetched (2 processes × FLEET_BATCH_PREFETCH 64 × the
# two batched queues, + 4 threads for provisioning): progress this large needs the link to keep
# delivering.
PROGRESS = 300
ACCOUNTS, CHARGES_PER_ACCOUNT = 40, 60  # 2,440 messages, charges at 100 a second


def via(proxy: TcpProxy, url: str) -> str:
    """``url`` with its host and port replaced by the proxy's."""
    parts = urlsplit(url)
    return urlunsplit(
        parts._replace(netloc=f"{parts.username}:{parts.password}@{AMQP_HOST}:{proxy.port}")
    )


def broker_peer_ports(vhost: str) -> set[int]:
    """Client ports of the connections the broker holds open in ``vhost`` (rabbitmqctl: poll it
    with ``first_s=CTL_FIRST_S``)."""
    return {int(port) for port in vhost_connections(vhost, "peer_port") if port.isdigit()}


@pytest.fixture
def linked(tmp_path: Path) -> Iterator[tuple[FleetUnderTest, TcpProxy, list[Contract]]]:
    """A fleet whose workers reach the broker through a proxy, busy with a stream of charges.

    Yields once the fleet is mid-way: some charges processed, others delivered but unacked.
    """
    env = {
        "FLEET_AMQP_HEARTBEAT_S": str(HEARTBEAT_S),
        "FLEET_PUBLISH_TIMEOUT_S": "10",
        # Batches wait for company long enough that deliveries are in hand whenever it strikes.
        "FLEET_BATCH_WAIT_MS": "200",
    }
    with (
        tcp_proxy((AMQP_HOST, AMQP_PORT)) as proxy,
        fleet_under_test(tmp_path, env=env) as fleet,
    ):
        opens, charges = workload(ACCOUNTS, CHARGES_PER_ACCOUNT)
        fleet.publish(opens, "order-management")
        fleet.start_workers(processes=2, threads=4, extra={"FLEET_AMQP_URL": via(proxy, fleet.url)})
        # Published over ~25 s, so the faults land in a run however fast the fleet drains
        # (wait_settled waits for the upstream too).
        fleet.upstream(charges, batch=50, interval_s=0.5)
        fleet.wait_for(
            lambda: fleet.processed() > 200 and fleet.in_hand() > 0,
            timeout_s=60,
            what="the fleet at work, with deliveries in hand",
        )
        yield fleet, proxy, charges


def reset_and_recover(fleet: FleetUnderTest, proxy: TcpProxy) -> None:
    accepted, progress = proxy.accepted, fleet.processed()
    proxy.reset()
    fleet.wait_for(lambda: proxy.accepted > accepted, 60, "the workers to reconnect")
    fleet.wait_for(
        lambda: fleet.processed() > progress + 100 or not fleet.expected() - fleet.settled(),
        60,
        "progress after the reset",
    )


def test_connection_resets_lose_and_double_nothing(
    linked: tuple[FleetUnderTest, TcpProxy, list[Contract]],
) -> None:
    fleet, proxy, charges = linked
    for _ in range(3):
        reset_and_recover(fleet, proxy)
    fleet.assert_charged_exactly_once(len(charges))
    print(f"{proxy.accepted} connections through the proxy")


def test_a_stalled_link_is_dropped_by_heartbeats_on_both_sides_and_nothing_is_lost(
    linked: tuple[FleetUnderTest, TcpProxy, list[Contract]],
) -> None:
    fleet, proxy, charges = linked
    stalled = proxy.upstream_ports()
    accepted = proxy.accepted
    assert stalled & broker_peer_ports(fleet.vhost), "the workers' connections go through the proxy"
    seen = len(fleet.events())
    proxy.stall()

    # The broker stops hearing heartbeats and closes the connections; their unacked
    # deliveries go back to the queues.
    poll(
        lambda: not stalled & broker_peer_ports(fleet.vhost),
        DETECTED_WITHIN_S,
        "the broker to drop the stalled connections",
        first_s=CTL_FIRST_S,
    )
    # The workers stop hearing heartbeats too, drop their side and connect again (and those
    # attempts hang in the blackhole until it heals).
    fleet.wait_for(lambda: proxy.accepted > accepted, DETECTED_WITHIN_S, "the workers to reconnect")
    proxy.restore()

    fleet.assert_charged_exactly_once(len(charges))
    # Deliveries that were in hand when the link stalled came back as redeliveries: processed
    # again and absorbed by the inbox, or moved to the suspect lane first.
    again = [e for e in fleet.events()[seen:] if e["event"] in ("duplicate", "suspect")]
    assert again, "no delivery in hand at the stall was redelivered"
    print(f"stalled {len(stalled)} connections; {len(again)} deliveries in hand came back")


def test_a_slow_link_slows_the_fleet_without_dropping_connections(
    linked: tuple[FleetUnderTest, TcpProxy, list[Contract]],
) -> None:
    fleet, proxy, charges = linked
    accepted = proxy.accepted
    through_proxy = proxy.upstream_ports()
    assert through_proxy and through_proxy <= broker_peer_ports(fleet.vhost)
    # A backlog on top of the stream: more than the slow link brings in the slow period
    # (about the prefetch, 2 × 64 per batched queue, per 1 s round trip).
    backlog = [
        sample("billing.charge.post", account_id=charges[n % len(charges)].account_id)  # type: ignore[attr-defined]
        for n in range(6000)
    ]
    fleet.upstream(backlog, batch=1000)
    before = fleet.processed()
    proxy.slow(0.5)  # each way, on every chunk: a 1 s round trip

    # Slow long enough that either side would have called a silent link dead, twice over.
    time.sleep(SLOW_FOR_S)
    during = fleet.processed() - before
    # Slow is not dead: heartbeats kept arriving, late, so no side dropped a connection ...
    assert proxy.accepted == accepted, "a slow link was mistaken for a dead one"
    assert proxy.upstream_ports() == through_proxy, "a slow connection was closed"
    assert through_proxy <= broker_peer_ports(fleet.vhost), "the broker dropped a slow connection"
    # ... and the same connections still carry work, more than the fleet holds prefetched.
    assert fleet.depth("billing") > 0 or fleet.expected() - fleet.settled(), (
        "the work ran out before the link was slow enough"
    )
    after = fleet.processed()
    poll(lambda: fleet.processed() >= after + PROGRESS, 60, "progress over the slow link, later")
    assert proxy.accepted == accepted, "a slow link was mistaken for a dead one"
    delayed = proxy.delayed_chunks
    proxy.restore()

    fleet.assert_charged_exactly_once(len(charges) + len(backlog))
    assert delayed > 0
    print(f"{during} processed over the slow link in {SLOW_FOR_S} s, {len(through_proxy)} links")
