"""Invoicing with real worker processes: gapless numbers under concurrency and crashes, and a bill
run killed halfway. Every scenario ends with the ledger."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import date, datetime
from pathlib import Path

import pytest

from handlers.invoicing import BILLING_TIMEZONE
from queues.contracts import Contract
from queues.contracts.money import Money
from tests.support.factories import sample
from tests.support.fleet import FleetUnderTest, Supervisor, fleet_under_test
from workers.billing import billing_period, run_id_for

pytestmark = [pytest.mark.broker, pytest.mark.db, pytest.mark.slow]

OCTOBER_1 = billing_period(1, date(2026, 10, 1))


def _accounts_with_charges(
    fleet: FleetUnderTest, count: int, cycle_day: int = 1
) -> list[uuid.UUID]:
    """Open ``count`` accounts with one October charge each, through the fleet; wait for them."""
    accounts = [uuid.uuid4() for _ in range(count)]
    fleet.publish(
        [sample("billing.account.open", account_id=a, cycle_day=cycle_day) for a in accounts],
        "order-management",
    )
    fleet.publish(
        [
            sample(
                "billing.charge.post",
                account_id=a,
                amount=Money.of(1999, "EUR"),
                charged_at=datetime(2026, 10, 15, 12, tzinfo=BILLING_TIMEZONE),
            )
            for a in accounts
        ]
    )
    return accounts


def _issue(accounts: list[uuid.UUID]) -> list[Contract]:
    start, end = OCTOBER_1
    return [
        sample("billing.invoice.issue", account_id=a, period_start=start, period_end=end)
        for a in accounts
    ]


def _assert_invoiced_once_without_gaps(fleet: FleetUnderTest, accounts: list[uuid.UUID]) -> None:
    per_account = fleet.query(
        "SELECT account_id, count(*) FROM billing_invoices"
        " WHERE period_start = :s AND period_end = :e GROUP BY account_id",
        s=OCTOBER_1[0],
        e=OCTOBER_1[1],
    )
    assert sorted(a for a, _ in per_account) == sorted(accounts)
    assert {n for _, n in per_account} == {1}
    [(series,)] = fleet.query("SELECT DISTINCT series FROM billing_invoices")
    sequences = [s for (s,) in fleet.query("SELECT sequence FROM billing_invoices ORDER BY 1")]
    assert sequences == list(range(1, len(accounts) + 1)), "numbers have a gap or a repeat"
    assert fleet.query(
        "SELECT last_number FROM billing_invoice_counters WHERE series = :s", s=series
    ) == [(len(accounts),)]
    assert fleet.query("SELECT count(*), count(DISTINCT charge_id) FROM billing_invoice_lines") == [
        (len(accounts), len(accounts))
    ]
    assert fleet.query(
        "SELECT count(*) FROM billing_charges WHERE invoice_id IS NULL AND account_id = ANY(:a)",
        a=accounts,
    ) == [(0,)]


def test_a_thousand_invoices_from_concurrent_workers_one_killed_midway_have_gapless_numbers(
    tmp_path: Path,
) -> None:
    # The crashing group dies in a commit once the marker is removed: after its invoice took a
    # number, before the transaction committed — the moment a gap could be born.
    marker = tmp_path / "crashed"
    marker.touch()
    crash = {"FLEET_FAULT_AT": "before_commit", "FLEET_FAULT_MARKER": str(marker)}
    with fleet_under_test(tmp_path, env={"FLEET_MAX_ATTEMPTS": "100"}) as fleet:
        steady = Supervisor(fleet, name="steady", processes=1, threads=4, outbox_relay=False)
        crashing = Supervisor(
            fleet,
            name="crashing",
            processes=2,
            threads=4,
            suspect_lane=False,
            outbox_relay=False,
            extra=crash,
        )

        def supervise() -> None:
            steady()
            crashing()

        # Given 1,000 accounts with a charge each
        accounts = _accounts_with_charges(fleet, 1000)
        fleet.wait_settled(timeout_s=120, supervise=supervise)
        started = time.monotonic()

        # When all of them are invoiced at once, and one worker process dies a third of the way
        fleet.publish(_issue(accounts))
        fleet.wait_for(
            lambda: fleet.query("SELECT count(*) FROM billing_invoices")[0][0] >= 300,
            timeout_s=60,
            what="300 invoices",
        )
        marker.unlink()
        fleet.wait_for(marker.exists, timeout_s=30, what="the crash")
        fleet.wait_settled(timeout_s=120, supervise=supervise)
        print(f"1,000 invoices in {time.monotonic() - started:.1f} s")

        # Then every account has one invoice and the numbers run 1..1000 without a gap
        assert marker.exists(), "the crashing group never crashed"
        _assert_invoiced_once_without_gaps(fleet, accounts)
        report = fleet.ledger()
        assert report.ok, report.summary()
        assert not report.dead_by_reason, report.summary()
        assert report.processed["ok"] == report.expected_deliveries


def _billrun(fleet: FleetUnderTest, *args: str) -> subprocess.Popen[bytes]:
    """``fleet billing billrun …`` as a process of its own (its own session, for SIGKILL)."""
    with (fleet.local.log_dir / "billrun.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "workers.commands.billing", "billrun", *args],
            env=fleet.local.environment(),
            stdout=subprocess.PIPE,
            stderr=log,
            start_new_session=True,
        )


def test_a_bill_run_killed_halfway_and_run_again_invoices_each_account_once(
    tmp_path: Path,
) -> None:
    with fleet_under_test(tmp_path) as fleet:
        fleet.start_workers(processes=2, threads=4, outbox_relay=True)
        # Given 300 accounts of cycle day 1 and 30 of cycle day 2, each with an October charge
        due = _accounts_with_charges(fleet, 300, cycle_day=1)
        not_due = _accounts_with_charges(fleet, 30, cycle_day=2)
        fleet.wait_settled()
        run_id = run_id_for(1, *OCTOBER_1)
        args = ["--cycle-day", "1", "--period", "2026-10", "--batch-size", "10"]

        # When the bill run is killed (SIGKILL) a third of the way through
        first = _billrun(fleet, *args, "--pause-s", "0.05")
        fleet.wait_for(
            lambda: (
                fleet.query(
                    "SELECT coalesce(max(accounts_seen), 0) FROM billing_runs WHERE run_id = :r",
                    r=run_id,
                )[0][0]
                >= 100
            ),
            timeout_s=60,
            what="a third of the bill run",
        )
        os.killpg(first.pid, signal.SIGKILL)
        first.communicate(timeout=10)
        [(status, seen)] = fleet.query(
            "SELECT status, accounts_seen FROM billing_runs WHERE run_id = :r", r=run_id
        )
        assert status == "running" and 100 <= seen < 300

        # And run again, to the end, and once more after that
        second = _billrun(fleet, *args, "--json")
        second_out, _ = second.communicate(timeout=60)
        assert second.returncode == 0
        resumed = json.loads(second_out)
        third = _billrun(fleet, *args, "--json")
        third_out, _ = third.communicate(timeout=60)
        again = json.loads(third_out)
        fleet.wait_settled(timeout_s=120)

        # Then the resumed pass walked only what was left, the third queued nothing,
        assert resumed["resumed"] and resumed["status"] == "done"
        assert resumed["accounts"] == 300 - seen
        assert resumed["queued_total"] == 300
        assert (again["queued"], again["already_queued"]) == (0, 300)
        # and every account of the cycle day has exactly one invoice, the others none
        _assert_invoiced_once_without_gaps(fleet, due)
        assert fleet.query(
            "SELECT count(*) FROM billing_invoices WHERE account_id = ANY(:a)", a=not_due
        ) == [(0,)]
        report = fleet.ledger()
        assert report.ok, report.summary()
        assert not report.dead_by_reason, report.summary()
