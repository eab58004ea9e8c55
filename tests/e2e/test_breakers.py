"""Circuit breakers: an outage pauses only what needs the broken dependency and burns nothing."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from tests.support.db import DATABASE_URL
from tests.support.factories import sample
from tests.support.fleet import FleetUnderTest, fleet_under_test
from tests.support.rabbit import rabbitmqctl
from tests.support.tcp_proxy import tcp_proxy

pytestmark = [pytest.mark.broker, pytest.mark.db, pytest.mark.slow]

# A small retry budget (4 attempts over 1 s and 2 s tiers, about 5 s) that the outages below
# outlast many times over: anything that used up attempts would be dead-lettered.
FAILURE_THRESHOLD = 3
BREAKER_ENV = {
    "FLEET_MAX_ATTEMPTS": "4",
    "FLEET_BREAKER_FAILURE_THRESHOLD": str(FAILURE_THRESHOLD),
    "FLEET_BREAKER_OPEN_S": "1",
}


def _ok_count(fleet: FleetUnderTest, ids: set[str]) -> int:
    return sum(1 for e in fleet.events() if e["event"] == "ok" and e["message_id"] in ids)


def _consumers(fleet: FleetUnderTest) -> Counter[str]:
    """Queue ▶ consumers on it now (``list_consumers`` is live; ``list_queues`` lags seconds)."""
    args = ("list_consumers", "-p", fleet.vhost, "queue_name", "--no-table-headers")
    return Counter(rabbitmqctl(*args).split())


# How the network element fails: it answers 503 to everything, or it answers too late (after
# the call's timeout; it still applies the operation, so the retry meets its idempotency key).
NETWORK_FAULTS = {
    "down": ({"failure_rate": 1.0}, {"failure_rate": 0.0}),
    "slow": ({"latency_ms": 2000}, {"latency_ms": 0}),
}


@pytest.mark.parametrize("fault", sorted(NETWORK_FAULTS))
def test_network_element_down_or_slow_pauses_only_provisioning_and_burns_no_attempt(
    tmp_path: Path, fault: str
) -> None:
    broken, healed = NETWORK_FAULTS[fault]
    env = {**BREAKER_ENV, "FLEET_NETWORK_TIMEOUT_S": "0.5"}
    with fleet_under_test(tmp_path, env=env) as fleet:
        # Given open accounts (an activation before its account would burn attempts on NotYet)
        accounts = [uuid.uuid4() for _ in range(20)]
        fleet.start_workers(processes=1, threads=4)
        fleet.publish(
            [sample("billing.account.open", account_id=a) for a in accounts], "order-management"
        )
        fleet.wait_settled()

        # When the network element breaks under a stream of activations
        fleet.simulator(**broken)
        activations = fleet.publish(
            [sample("provisioning.service.activate", account_id=a) for a in accounts],
            "order-management",
        )
        activated = {str(r.message_id) for r in activations}

        # Then provisioning pauses: what it holds is parked without burning an attempt, and the
        # broker sees its consumer cancelled while CRM and billing keep theirs
        fleet.wait_for(
            lambda: any(
                e["event"] == "retried" and not e.get("burned", True) for e in fleet.events()
            ),
            what="the network breaker to park an activation without burning an attempt",
        )
        paused: Counter[str] = Counter()

        def provisioning_paused() -> bool:
            paused.clear()
            paused.update(_consumers(fleet))
            return paused["provisioning"] == 0

        fleet.wait_for(
            provisioning_paused, timeout_s=60, what="the provisioning consumer cancelled"
        )
        assert paused["crm"] >= 1 and paused["billing"] >= 1, paused

        # And CRM is not held up: a whole batch settles while the network element is still down
        crm = {
            str(r.message_id)
            for r in fleet.publish([sample("crm.interaction.log") for _ in range(200)], "self-care")
        }
        fleet.wait_for(
            lambda: _ok_count(fleet, crm) == len(crm),
            timeout_s=120,
            what="the CRM batch to settle during the network outage",
        )
        assert _ok_count(fleet, activated) == 0
        time.sleep(8)  # the outage outlasts the whole retry budget
        assert _ok_count(fleet, activated) == 0
        fleet.simulator(**healed)

        fleet.wait_settled(timeout_s=120)
        report = fleet.ledger()
        assert report.ok, report.summary()
        assert not report.dead_by_reason, report.summary()
        assert _ok_count(fleet, activated) == len(accounts)
        # Only the failures that opened a breaker used up an attempt (one breaker per process:
        # the worker's, and the suspect lane's for what a pause returned to the queue); every
        # retry after that was parked, and the attempt counters agree
        retried = [
            e for e in fleet.events() if e["event"] == "retried" and e["message_id"] in activated
        ]
        burned = [e for e in retried if e["burned"]]
        burned_by_process = Counter(e["pid"] for e in burned)
        assert max(burned_by_process.values(), default=0) <= FAILURE_THRESHOLD - 1, burned
        assert len(retried) > len(burned)
        finished = [
            e for e in fleet.events() if e["event"] == "ok" and e["message_id"] in activated
        ]
        assert sum(e["attempt"] - 1 for e in finished) == len(burned), finished


def test_database_outage_longer_than_the_retry_budget_pauses_and_loses_nothing(
    tmp_path: Path,
) -> None:
    with tcp_proxy(("127.0.0.1", 5432)) as proxy:
        proxied = DATABASE_URL.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
        with fleet_under_test(
            tmp_path, env={**BREAKER_ENV, "FLEET_DATABASE_URL": proxied}
        ) as fleet:
            fleet.start_workers(processes=1, threads=4)
            fleet.publish([sample("crm.interaction.log") for _ in range(100)], "self-care")
            fleet.wait_settled()
            proxy.cut()
            during = fleet.publish([sample("crm.interaction.log") for _ in range(100)], "self-care")
            fleet.wait_for(
                lambda: any(e["event"] == "retried" for e in fleet.events()),
                what="a message to fail on the database",
            )
            time.sleep(10)  # several tiers, twice the retry budget
            proxy.restore()
            fleet.wait_settled(timeout_s=120)
            report = fleet.ledger()
            assert report.ok, report.summary()
            assert not report.dead_by_reason, report.summary()
            during_ids = {str(r.message_id) for r in during}
            assert _ok_count(fleet, during_ids) == 100
            retried = [e for e in fleet.events() if e["event"] == "retried"]
            assert len(retried) < 100, "a retry storm: every message hammered the broken database"
