"""The fleet end to end: real worker processes, real RabbitMQ and PostgreSQL, ledger-checked."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from queues.contracts.money import Money
from tests.support.factories import sample
from tests.support.fleet import FleetUnderTest, fleet_under_test
from tests.support.jose import flip_ciphertext_bit, header_for, seal_raw

pytestmark = [pytest.mark.broker, pytest.mark.db, pytest.mark.slow]


@pytest.fixture
def fleet(tmp_path: Path) -> FleetUnderTest:
    with fleet_under_test(tmp_path) as under_test:
        yield under_test


def customer_journey(
    customer: uuid.UUID, account: uuid.UUID, service: uuid.UUID
) -> dict[str, list]:
    return {
        "self-care": [
            sample("crm.customer.upsert", customer_id=customer, entity_version=1),
            sample("crm.interaction.log", customer_id=customer),
        ],
        "order-management": [
            sample("billing.account.open", account_id=account, customer_id=customer),
            sample(
                "provisioning.service.activate",
                service_id=service,
                customer_id=customer,
                account_id=account,
            ),
        ],
    }


def test_every_type_lands_once_with_fan_out_and_follow_ups(fleet: FleetUnderTest) -> None:
    customer, account, service = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    fleet.start_workers(processes=2, threads=4)
    for producer, payloads in customer_journey(customer, account, service).items():
        fleet.publish(payloads, producer)
    fleet.publish([sample("billing.charge.post", account_id=account)], "fleet")
    fleet.wait_settled()
    for kind in ("suspend", "resume", "terminate"):
        fleet.publish(
            [sample(f"provisioning.service.{kind}", service_id=service)], "order-management"
        )
        fleet.wait_settled()

    assert fleet.query(
        "SELECT entity_version FROM crm_customers WHERE customer_id = :c", c=customer
    ) == [(1,)]
    assert (
        len(fleet.query("SELECT 1 FROM billing_account_holders WHERE customer_id = :c", c=customer))
        == 1
    )
    assert fleet.query(
        "SELECT state FROM provisioning_services WHERE service_id = :s", s=service
    ) == [("terminated",)]
    charges = fleet.query(
        "SELECT source_reference FROM billing_charges WHERE account_id = :a ORDER BY 1", a=account
    )
    assert len(charges) == 2 and charges[0][0] == f"activation:{service}"
    assert (
        len(fleet.query("SELECT 1 FROM crm_interactions WHERE customer_id = :c", c=customer)) == 2
    )
    report = fleet.ledger()
    assert report.ok, report.summary()
    assert report.processed["ok"] == report.expected_deliveries
    assert not report.dead_by_reason


def test_transient_failure_twice_then_success_parks_on_the_broker_not_in_the_worker(
    tmp_path: Path,
) -> None:
    with fleet_under_test(tmp_path, tiers=(2, 3)) as fleet:
        account, service = uuid.uuid4(), uuid.uuid4()
        fleet.start_workers(processes=1, threads=2)
        fleet.publish([sample("billing.account.open", account_id=account)], "order-management")
        fleet.wait_settled()
        fleet.simulator(fail_next=2)
        [result] = fleet.publish(
            [sample("provisioning.service.activate", service_id=service, account_id=account)],
            "order-management",
        )
        message_id = str(result.message_id)
        fleet.wait_for(
            lambda: any(e["event"] == "retried" for e in fleet.events_for(message_id)),
            what="the first retry",
        )
        parked = fleet.depth("provisioning.retry.2s") + fleet.depth("provisioning.retry.3s")
        assert parked == 1
        assert fleet.unacked("provisioning") == 0
        fleet.wait_settled()
        kinds = [
            e["event"] for e in fleet.events_for(message_id) if e.get("queue") == "provisioning"
        ]
        assert kinds == ["retried", "retried", "ok"]
        tiers = [e["tier"] for e in fleet.events_for(message_id) if e["event"] == "retried"]
        assert tiers == ["2s", "3s"]
        assert fleet.simulator()["applied"] == 1
        report = fleet.ledger()
        assert report.ok, report.summary()


def test_suspend_before_activate_waits_and_an_older_upsert_is_stale(fleet: FleetUnderTest) -> None:
    customer, account, service = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    fleet.start_workers(processes=1, threads=4)
    [suspend] = fleet.publish(
        [sample("provisioning.service.suspend", service_id=service)], "network-inventory"
    )
    fleet.wait_for(
        lambda: any(e["event"] == "retried" for e in fleet.events_for(str(suspend.message_id))),
        what="the suspend to be retried",
    )
    fleet.publish(
        [
            sample("billing.account.open", account_id=account, customer_id=customer),
            sample("provisioning.service.activate", service_id=service, account_id=account),
        ],
        "order-management",
    )
    fleet.publish(
        [sample("crm.customer.upsert", customer_id=customer, entity_version=5, name="Newer")],
        "self-care",
    )
    fleet.wait_settled()
    [older] = fleet.publish(
        [sample("crm.customer.upsert", customer_id=customer, entity_version=3, name="Older")],
        "self-care",
    )
    fleet.wait_settled()
    assert fleet.query(
        "SELECT state FROM provisioning_services WHERE service_id = :s", s=service
    ) == [("suspended",)]
    assert fleet.query(
        "SELECT name, entity_version FROM crm_customers WHERE customer_id = :c", c=customer
    ) == [("Newer", 5)]
    outcomes = {e["queue"]: e["event"] for e in fleet.events_for(str(older.message_id))}
    assert outcomes == {"crm": "stale", "billing": "stale"}
    report = fleet.ledger()
    assert report.ok, report.summary()
    assert report.processed["stale"] == 2


def test_bad_envelopes_die_at_once_with_their_reason_while_the_worker_keeps_serving(
    fleet: FleetUnderTest,
) -> None:
    service = uuid.uuid4()
    fleet.start_workers(processes=1, threads=2)
    tampered = fleet.seal(sample("crm.interaction.log"), "self-care")
    fleet.publish_raw(
        flip_ciphertext_bit(tampered.body), "crm.interaction.log", str(tampered.message_id)
    )
    thief = fleet.keys.sealing_key("payment-gateway")
    stolen_id = str(uuid.uuid4())
    header = header_for(thief, "billing.payment.record", message_id=stolen_id, producer="self-care")
    fleet.publish_raw(
        seal_raw(header, sample("billing.payment.record").model_dump_json().encode(), thief),
        "billing.payment.record",
        stolen_id,
    )
    account = uuid.uuid4()
    fleet.publish(
        [
            sample("billing.account.open", account_id=account),
            sample("provisioning.service.activate", service_id=service, account_id=account),
            sample("provisioning.service.terminate", service_id=service),
        ],
        "order-management",
    )
    fleet.wait_settled()
    [illegal] = fleet.publish(
        [sample("provisioning.service.resume", service_id=service)], "network-inventory"
    )
    [healthy] = fleet.publish(
        [sample("crm.interaction.log", customer_id=uuid.uuid4())], "self-care"
    )
    fleet.wait_settled()

    report = fleet.ledger()
    assert report.ok, report.summary()
    assert report.dead_by_reason == {
        "authentication_failed": 1,
        "not_authorized": 1,
        "illegal_transition": 1,
    }
    for message_id in (str(tampered.message_id), stolen_id, str(illegal.message_id)):
        assert [e["event"] for e in fleet.events_for(message_id)] == ["dead"]
    assert [e["event"] for e in fleet.events_for(str(healthy.message_id))] == ["ok"]


def test_a_charge_in_another_currency_is_dead_lettered_with_currency_mismatch(
    fleet: FleetUnderTest,
) -> None:
    account = uuid.uuid4()
    fleet.start_workers(processes=1, threads=2)
    fleet.publish(
        [sample("billing.account.open", account_id=account, currency="EUR")], "order-management"
    )
    fleet.wait_settled()
    [charge] = fleet.publish(
        [sample("billing.charge.post", account_id=account, amount=Money.of(500, "JPY"))]
    )
    fleet.wait_settled()
    report = fleet.ledger()
    assert report.ok, report.summary()
    assert report.dead_by_reason == {"currency_mismatch": 1}
    assert [e["event"] for e in fleet.events_for(str(charge.message_id))] == ["dead"]
    assert fleet.query("SELECT count(*) FROM billing_charges WHERE account_id = :a", a=account) == [
        (0,)
    ]
