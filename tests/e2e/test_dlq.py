"""Dead letters end to end: real worker processes with the archiver, then the operator's tools —
every death archived once, replay after the fix processed once, canary, parked-retry flush."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from sqlalchemy import text
from typer.testing import CliRunner

from queues.contracts.money import Money
from tests.support.factories import sample
from tests.support.fleet import FleetUnderTest, Supervisor, fleet_under_test
from tests.support.jose import flip_ciphertext_bit
from workers.commands.dlq import app as dlq_app
from workers.commands.dlq import retry_app
from workers.ledger import archived_dead_letters, check_ledger
from workers.settings import get_settings

pytestmark = [pytest.mark.broker, pytest.mark.db, pytest.mark.slow]

DEAD_QUEUES = ("billing.dead", "provisioning.dead", "crm.dead", "unroutable")


def cli(fleet: FleetUnderTest, *args: str, retry: bool = False) -> Result:
    get_settings.cache_clear()
    try:
        return CliRunner().invoke(retry_app if retry else dlq_app, list(args), env=fleet.local.env)
    finally:
        get_settings.cache_clear()


def cli_json(fleet: FleetUnderTest, *args: str, retry: bool = False) -> Any:
    result = cli(fleet, *args, "--json", retry=retry)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def archived(fleet: FleetUnderTest) -> dict[str, list[tuple[str, str]]]:
    """message id ▶ [(queue, reason), …] in archive order."""
    rows = fleet.query("SELECT message_id, queue, reason FROM dead_letters ORDER BY id")
    found: dict[str, list[tuple[str, str]]] = {}
    for message_id, queue, reason in rows:
        found.setdefault(str(message_id), []).append((queue, reason))
    return found


def ledger_ok(fleet: FleetUnderTest, poison: tuple[str, ...] = ()) -> None:
    report = check_ledger(
        fleet.engine, fleet.confirmed, archived_dead_letters(fleet.engine), poison=poison
    )
    assert report.ok, report.summary()


def dead_queues_empty(fleet: FleetUnderTest) -> bool:
    return all(fleet.depth(q) == 0 for q in DEAD_QUEUES)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[FleetUnderTest]:
    env = {"FLEET_MAX_ATTEMPTS": "2", "FLEET_CANARY_WAIT_S": "20"}
    with fleet_under_test(tmp_path, tiers=(1, 2), env=env) as under_test:
        yield under_test


def test_every_dead_letter_path_of_the_fleet_ends_as_one_archive_row(
    fleet: FleetUnderTest,
) -> None:
    fleet.start_workers(processes=1, threads=4, archiver=True)
    account, service = uuid.uuid4(), uuid.uuid4()
    fleet.publish([sample("billing.account.open", account_id=account)], "order-management")
    fleet.wait_settled()
    # permanent: a charge in another currency
    [permanent] = fleet.publish(
        [sample("billing.charge.post", account_id=account, amount=Money.of(500, "JPY"))]
    )
    # NotYet past its attempts: a charge for an account that never opens
    [not_yet] = fleet.publish([sample("billing.charge.post", account_id=uuid.uuid4())])
    # retries exhausted: the network element answers 503 to every try
    fleet.simulator(fail_next=10)
    [exhausted] = fleet.publish(
        [sample("provisioning.service.activate", service_id=service, account_id=account)],
        "order-management",
    )
    # an envelope that fails authentication
    tampered = fleet.seal(sample("crm.interaction.log"), "self-care")
    fleet.publish_raw(
        flip_ciphertext_bit(tampered.body), "crm.interaction.log", str(tampered.message_id)
    )
    # a routing key nothing is bound for
    stray = str(uuid.uuid4())
    fleet.publish_raw(b"{}", "marketing.offer.send", stray)
    fleet.wait_settled()
    fleet.wait_for(
        lambda: len(archived(fleet)) == 5 and dead_queues_empty(fleet),
        timeout_s=60,
        what="five archived deaths and empty dead-letter queues",
    )

    assert archived(fleet) == {
        str(permanent.message_id): [("billing", "currency_mismatch")],
        str(not_yet.message_id): [("billing", "not_yet_expired")],
        str(exhausted.message_id): [("provisioning", "retries_exhausted")],
        str(tampered.message_id): [("crm", "authentication_failed")],
        stray: [("unroutable", "unroutable")],
    }
    assert fleet.query(
        "SELECT last_reason, attempts FROM dead_letters WHERE message_id = :m",
        m=str(exhausted.message_id),
    ) == [("network_unavailable", 2)]
    ledger_ok(fleet)


def test_replay_after_the_fix_is_processed_once_canary_stops_while_still_broken(
    fleet: FleetUnderTest,
) -> None:
    # Given billing cannot store account holders: the fanned-out upserts die on billing only
    with fleet.engine.begin() as connection:
        connection.execute(text("ALTER TABLE billing_account_holders RENAME TO holders_away"))
    fleet.start_workers(processes=1, threads=4, archiver=True)
    upserts = fleet.publish([sample("crm.customer.upsert") for _ in range(3)], "self-care")
    ids = [str(r.message_id) for r in upserts]
    fleet.wait_settled()
    fleet.wait_for(lambda: len(archived(fleet)) == 3, what="three archived deaths")
    assert archived(fleet) == {m: [("billing", "retries_exhausted")] for m in ids}
    [group] = cli_json(fleet, "groups")
    assert group["count"] == 3 and group["queues"] == ["billing"]

    # When an operator replays with a canary before fixing the cause: it dies again, batch stops
    stopped = cli(fleet, "replay", "--group", group["group"], "--canary", "1", "--yes", "--json")
    assert stopped.exit_code == 1, stopped.output
    report = json.loads(stopped.stdout)
    assert [c["verdict"] for c in report["canary"]] == ["died_again"]
    assert report["published"] == 1 and "2 not replayed" in report["stopped"]
    died_twice = report["canary"][0]["message_id"]
    assert archived(fleet)[died_twice] == [("billing", "retries_exhausted")] * 2
    assert fleet.query(
        "SELECT count(*) FROM dead_letters WHERE previous_id IS NOT NULL AND message_id = :m",
        m=died_twice,
    ) == [(1,)]

    # After the fix, the canary is processed and the rest follow
    with fleet.engine.begin() as connection:
        connection.execute(text("ALTER TABLE holders_away RENAME TO billing_account_holders"))
    done = cli(fleet, "replay", "--group", group["group"], "--canary", "1", "--yes", "--json")
    assert done.exit_code == 0, done.output
    report = json.loads(done.stdout)
    assert [c["verdict"] for c in report["canary"]] == ["processed"]
    assert report["published"] == 3 and report["stopped"] is None
    fleet.wait_for(
        lambda: (
            fleet.query(
                "SELECT count(*) FROM inbox WHERE handler = 'mirror_account_holder' "
                "AND message_id = ANY(CAST(:ids AS uuid[]))",
                ids=ids,
            )
            == [(3,)]
        ),
        what="billing to process the replays",
    )
    ledger_ok(fleet)
    assert fleet.query("SELECT count(*) FROM billing_account_holders") == [(3,)]
    for message_id in ids:  # crm processed its copy once and never saw a replay
        crm = [e["event"] for e in fleet.events_for(message_id) if e["queue"] == "crm"]
        assert crm == ["ok"]

    # Replaying one again is absorbed by the inbox
    letter = fleet.query(
        "SELECT id FROM dead_letters WHERE message_id = :m ORDER BY id DESC LIMIT 1", m=ids[0]
    )[0][0]
    again = cli(fleet, "replay", str(letter), "--again", "--yes")
    assert again.exit_code == 0, again.output
    fleet.wait_for(
        lambda: (
            [e["event"] for e in fleet.events_for(ids[0]) if e["queue"] == "billing"][-1:]
            == ["duplicate"]
        ),
        what="the second replay to be absorbed",
    )
    ledger_ok(fleet)
    audit = cli_json(fleet, "audit")
    assert {a["action"] for a in audit} >= {"replay", "canary"}


def test_retry_flush_brings_parked_messages_back_now_and_they_are_processed_once(
    tmp_path: Path,
) -> None:
    with fleet_under_test(tmp_path, tiers=(120, 600)) as fleet:
        fleet.start_workers(processes=1, threads=4, archiver=True)
        account = uuid.uuid4()
        charges = [sample("billing.charge.post", account_id=account) for _ in range(5)]
        fleet.publish(charges)
        fleet.wait_for(lambda: fleet.depth("billing.retry.2m") == 5, what="five parked charges")
        parked = cli_json(fleet, "ls", "--queue", "billing", retry=True)
        assert parked[0]["by_type"] == {"billing.charge.post": 5}

        fleet.publish([sample("billing.account.open", account_id=account)], "order-management")
        fleet.wait_for(
            lambda: fleet.query("SELECT count(*) FROM billing_accounts") == [(1,)],
            what="the account to open",
        )
        flushed = cli_json(fleet, "flush", "billing", "--yes", retry=True)
        assert sum(t["moved"] for t in flushed) == 5
        fleet.wait_settled(timeout_s=30)  # long before the 2-minute tier would let them go

        assert fleet.depth("billing.retry.2m") == 0
        assert fleet.query(
            "SELECT count(*) FROM billing_charges WHERE account_id = :a", a=account
        ) == [(5,)]
        ledger_ok(fleet)


def test_a_message_that_kills_its_worker_dies_in_the_suspect_lane_and_is_archived_once(
    tmp_path: Path,
) -> None:
    poison_id = str(uuid.uuid4())
    env = {"FLEET_FAULT_CRASH_MESSAGE_IDS": json.dumps([poison_id])}
    with fleet_under_test(tmp_path, env=env) as fleet:
        supervisor = Supervisor(fleet, processes=1, threads=2, archiver=True)
        fleet.publish([sample("crm.interaction.log") for _ in range(10)], "self-care")
        fleet.publish(
            [
                fleet.seal(
                    sample("crm.interaction.log"), "self-care", message_id=uuid.UUID(poison_id)
                )
            ],
            "self-care",
        )
        healthy = fleet.expected() - {(poison_id, "crm")}
        fleet.wait_for(
            lambda: (
                (supervisor() or True)
                and healthy <= fleet.settled()
                and poison_id in archived(fleet)
            ),
            timeout_s=120,
            what="the healthy messages processed and the poison archived",
        )
        assert archived(fleet) == {poison_id: [("crm", "delivery_limit")]}
        assert fleet.query("SELECT lane FROM dead_letters WHERE message_id = :m", m=poison_id) == [
            ("crm.suspect",)
        ]
        assert dead_queues_empty(fleet)
        ledger_ok(fleet, poison=(poison_id,))


def test_a_worker_killed_after_its_dead_copy_is_confirmed_leaves_one_archive_row(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "crashed"
    env = {"FLEET_FAULT_AT": "after_dead_publish_before_ack", "FLEET_FAULT_MARKER": str(marker)}
    with fleet_under_test(tmp_path, env=env) as fleet:
        supervisor = Supervisor(fleet, processes=1, threads=2, archiver=True)
        account = uuid.uuid4()
        fleet.publish([sample("billing.account.open", account_id=account)], "order-management")
        fleet.wait_settled(supervise=supervisor)
        # Given a charge that dies (another currency), and a worker killed once just after its
        # dead copy is confirmed, before the ack
        [doomed] = fleet.publish(
            [sample("billing.charge.post", account_id=account, amount=Money.of(500, "JPY"))]
        )
        doomed_id = str(doomed.message_id)
        fleet.wait_for(
            lambda: (supervisor() or True) and marker.exists(), what="the crash after the dead copy"
        )
        # When the charge comes back and dies again
        fleet.wait_for(
            lambda: (
                (supervisor() or True)
                and any(e["event"] == "dead" for e in fleet.events_for(doomed_id))
                and dead_queues_empty(fleet)
            ),
            timeout_s=120,
            what="the second death, and both dead copies taken by the archiver",
        )
        # Then the archive holds one row: both copies carried the same death id
        assert "suspect" in [e["event"] for e in fleet.events_for(doomed_id)]
        assert archived(fleet) == {doomed_id: [("billing", "currency_mismatch")]}
        ledger_ok(fleet)


def test_a_worker_killed_after_its_suspect_lane_copy_is_confirmed_leaves_one_archive_row(
    tmp_path: Path,
) -> None:
    poison_id = str(uuid.uuid4())
    marker = tmp_path / "crashed"
    env = {
        "FLEET_FAULT_CRASH_MESSAGE_IDS": json.dumps([poison_id]),
        "FLEET_FAULT_AT": "after_suspect_publish_before_ack",
        "FLEET_FAULT_MARKER": str(marker),
    }
    with fleet_under_test(tmp_path, env=env) as fleet:
        supervisor = Supervisor(fleet, processes=1, threads=2, archiver=True)
        fleet.publish([sample("crm.interaction.log")], "self-care")
        fleet.wait_settled(supervise=supervisor)
        # Given a message that kills its worker, whose worker is also killed once just after
        # the message's suspect-lane copy is confirmed, before the ack: two suspect copies
        poison = fleet.seal(
            sample("crm.interaction.log"), "self-care", message_id=uuid.UUID(poison_id)
        )
        fleet.publish([poison], "self-care")
        fleet.wait_for(
            lambda: (supervisor() or True) and marker.exists(),
            timeout_s=90,
            what="the crash after the suspect-lane copy",
        )
        # When both copies kill the suspect lane until its delivery limit dead-letters them
        fleet.wait_for(
            lambda: (
                (supervisor() or True)
                and poison_id in archived(fleet)
                and fleet.depth("crm.suspect") == 0
                and dead_queues_empty(fleet)
                and fleet.unacked("crm.suspect") == fleet.unacked("crm.dead") == 0
            ),
            timeout_s=150,
            what="the poison's suspect copies dead and taken by the archiver",
        )
        # The first suspect-lane copy was confirmed (the crash point follows the confirm) and
        # the second one is recorded: two copies of the poison went to the suspect lane
        suspects = [e for e in fleet.events_for(poison_id) if e["event"] == "suspect"]
        assert marker.exists() and len(suspects) == 1, suspects
        # Then the archive holds one row: the broker's deaths of one copy share a death key
        assert archived(fleet) == {poison_id: [("crm", "delivery_limit")]}
        ledger_ok(fleet, poison=(poison_id,))
