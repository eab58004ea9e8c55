"""The bill run and the account statement on the real PostgreSQL, in process and through the CLI."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import date, datetime, time
from typing import Any

import pytest
from sqlalchemy import Engine, select, update
from typer.testing import CliRunner

from handlers.bus import Outcome
from handlers.invoicing import BILLING_TIMEZONE
from handlers.store.models import BillingAccount, BillingInvoice, BillingRun, Outbox
from handlers.store.uow import UnitOfWork
from queues.contracts import IssueInvoice, Money
from tests.support.db import DATABASE_URL
from tests.support.factories import sample
from tests.support.handlers import Deliver
from workers.billing import (
    billing_period,
    issue_message_id,
    run_billrun,
    run_id_for,
    schedule_billruns,
)
from workers.commands.billing import billing_app
from workers.settings import get_settings

pytestmark = pytest.mark.db

OCTOBER_1 = billing_period(1, date(2026, 10, 1))

Read = Callable[..., Any]


def _accounts(deliver: Deliver, count: int, cycle_day: int, **fields: Any) -> list[uuid.UUID]:
    opened = []
    for _ in range(count):
        account = sample("billing.account.open", cycle_day=cycle_day, **fields)
        assert deliver("billing", account) is Outcome.OK
        opened.append(account.account_id)  # type: ignore[attr-defined]
    return opened


def _charge(deliver: Deliver, account_id: uuid.UUID, on: date, currency: str = "EUR") -> None:
    charged_at = datetime(on.year, on.month, on.day, 12, tzinfo=BILLING_TIMEZONE)
    charge = sample(
        "billing.charge.post",
        account_id=account_id,
        amount=Money.of(1999, currency),
        charged_at=charged_at,
    )
    assert deliver("billing", charge) is Outcome.OK


def _queued(read: Read, run_id: uuid.UUID) -> list[Outbox]:
    return read(  # type: ignore[no-any-return]
        lambda s: list(s.scalars(select(Outbox).where(Outbox.correlation_id == run_id)))
    )


def _run(read: Read, run_id: uuid.UUID) -> BillingRun:
    return read(lambda s: s.get_one(BillingRun, run_id))  # type: ignore[no-any-return]


def _deliver_outbox(deliver: Deliver, rows: list[Outbox]) -> list[Outcome]:
    return [
        deliver("billing", IssueInvoice.model_validate(row.payload), row.message_id) for row in rows
    ]


def test_a_bill_run_queues_one_invoice_message_per_account_of_its_cycle_day(
    deliver: Deliver, read: Read, engine: Engine
) -> None:
    # Given open accounts of cycle day 3, others of day 4, and closed ones of day 3 — one of
    # them still holding an uninvoiced charge of the period
    due = _accounts(deliver, 30, cycle_day=3)
    _accounts(deliver, 5, cycle_day=4)
    closed = _accounts(deliver, 3, cycle_day=3)
    period = billing_period(3, date(2026, 10, 1))
    _charge(deliver, closed[0], date(2026, 10, 20))
    with UnitOfWork(engine) as uow:
        uow.session.execute(
            update(BillingAccount)
            .where(BillingAccount.account_id.in_(closed))
            .values(status="closed")
        )
        uow.commit()

    # When the bill run of day 3 for October runs, seven accounts per transaction
    seen = []
    report = run_billrun(
        engine, 3, period, batch_size=7, progress=lambda done, total: seen.append((done, total))
    )

    # Then each account that owes an invoice has exactly one message, with a derived id
    run_id = run_id_for(3, *period)
    rows = _queued(read, run_id)
    expected = {*due, closed[0]}
    assert {IssueInvoice.model_validate(r.payload).account_id for r in rows} == expected
    assert len(rows) == len(expected) == 31
    for row in rows:
        payload = IssueInvoice.model_validate(row.payload)
        assert (payload.period_start, payload.period_end) == (date(2026, 10, 3), date(2026, 11, 2))
        assert row.message_id == issue_message_id(payload.account_id, *period)
        assert row.message_type == "billing.invoice.issue"
    assert (report.status, report.passes, report.resumed) == ("done", 1, False)
    assert (report.accounts, report.queued, report.already_queued) == (31, 31, 0)
    run = _run(read, run_id)
    assert (run.status, run.accounts_seen, run.messages_queued) == ("done", 31, 31)
    assert run.finished_at is not None
    assert seen[0] == (0, 31) and seen[-1] == (31, 31) and len(seen) == 1 + 5


def test_running_a_finished_bill_run_again_queues_only_accounts_opened_since(
    deliver: Deliver, read: Read, engine: Engine
) -> None:
    _accounts(deliver, 12, cycle_day=5)
    period = billing_period(5, date(2026, 10, 1))
    run_billrun(engine, 5, period, batch_size=5)

    again = run_billrun(engine, 5, period, batch_size=5)
    assert (again.accounts, again.queued, again.already_queued) == (12, 0, 12)
    assert (again.passes, again.queued_total) == (2, 12)

    [late] = _accounts(deliver, 1, cycle_day=5)
    third = run_billrun(engine, 5, period, batch_size=5)
    assert (third.queued, third.already_queued, third.queued_total) == (1, 12, 13)
    rows = _queued(read, run_id_for(5, *period))
    assert len(rows) == 13
    assert late in {IssueInvoice.model_validate(r.payload).account_id for r in rows}


def test_a_bill_run_killed_halfway_and_run_again_invoices_every_account_once(
    deliver: Deliver, read: Read, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given 40 accounts of cycle day 6, each with a charge in the period
    accounts = _accounts(deliver, 40, cycle_day=6)
    period = billing_period(6, date(2026, 10, 1))
    for account_id in accounts:
        _charge(deliver, account_id, date(2026, 10, 10))

    # When the run dies in the middle of its third batch (its transaction never commits)
    writes = 0
    add_outbox = UnitOfWork.add_outbox

    def dying(self: UnitOfWork, *args: Any) -> bool:
        nonlocal writes
        writes += 1
        if writes == 25:
            raise KeyboardInterrupt("killed")
        return add_outbox(self, *args)

    monkeypatch.setattr(UnitOfWork, "add_outbox", dying)
    with pytest.raises(KeyboardInterrupt):
        run_billrun(engine, 6, period, batch_size=10)
    monkeypatch.undo()
    run_id = run_id_for(6, *period)
    halfway = _run(read, run_id)
    assert (halfway.status, halfway.accounts_seen, halfway.messages_queued) == ("running", 20, 20)
    assert len(_queued(read, run_id)) == 20

    # And is run again
    resumed = run_billrun(engine, 6, period, batch_size=10)

    # Then it went on from the last committed batch, and every account has one message
    assert (resumed.resumed, resumed.accounts, resumed.queued, resumed.status) == (
        True,
        20,
        20,
        "done",
    )
    rows = _queued(read, run_id)
    assert sorted(IssueInvoice.model_validate(r.payload).account_id for r in rows) == sorted(
        accounts
    )

    # And the workers, even given every message twice, invoice each account once
    assert _deliver_outbox(deliver, rows) == [Outcome.OK] * 40
    assert _deliver_outbox(deliver, rows) == [Outcome.DUPLICATE] * 40
    invoices = read(
        lambda s: s.execute(
            select(BillingInvoice.account_id, BillingInvoice.period_start).where(
                BillingInvoice.account_id.in_(accounts)
            )
        ).all()
    )
    assert sorted(a for a, _ in invoices) == sorted(accounts)
    assert {start for _, start in invoices} == {date(2026, 10, 6)}


def test_two_bill_runs_of_the_same_cycle_at_once_queue_each_account_once(
    deliver: Deliver, read: Read, engine: Engine
) -> None:
    accounts = _accounts(deliver, 60, cycle_day=7)
    period = billing_period(7, date(2026, 10, 1))
    reports = []
    runners = [
        threading.Thread(
            target=lambda: reports.append(run_billrun(engine, 7, period, batch_size=4))
        )
        for _ in range(2)
    ]
    for runner in runners:
        runner.start()
    for runner in runners:
        runner.join(60)

    rows = _queued(read, run_id_for(7, *period))
    assert sorted(IssueInvoice.model_validate(r.payload).account_id for r in rows) == sorted(
        accounts
    )
    assert sum(r.queued for r in reports) == 60
    assert _run(read, run_id_for(7, *period)).messages_queued == 60


def test_the_schedule_runs_each_owed_cycle_day_once(
    deliver: Deliver, read: Read, engine: Engine
) -> None:
    # Given accounts of cycle days 24 and 25, and a scheduler woken at 03:00 on 25 November
    def clock() -> datetime:
        return datetime(2026, 11, 25, 3, 0, tzinfo=BILLING_TIMEZONE)

    opened = {day: _accounts(deliver, 3, cycle_day=day) for day in (24, 25)}
    owed = [
        (24, (date(2026, 10, 24), date(2026, 11, 23))),
        (25, (date(2026, 10, 25), date(2026, 11, 24))),
    ]
    stopping = threading.Event()
    reports: list[Any] = []

    def on_report(report: Any) -> None:
        reports.append(report)
        if len(reports) == len(owed):
            stopping.set()

    # When it runs (catching up yesterday too), checking every 0.1 s
    options = {"at": time(2, 0), "catch_up_days": 2, "check_every_s": 0.1, "clock": clock}
    scheduler = threading.Thread(
        target=schedule_billruns,
        args=(engine, stopping),
        kwargs={**options, "on_report": on_report},
    )
    scheduler.start()
    scheduler.join(30)
    assert not scheduler.is_alive()

    # Then each owed run ran once, to the end, for its own accounts
    assert [(r.cycle_day, (r.period_start, r.period_end)) for r in reports] == owed
    for day, period in owed:
        assert _run(read, run_id_for(day, *period)).status == "done"
        queued = {
            IssueInvoice.model_validate(r.payload).account_id
            for r in _queued(read, run_id_for(day, *period))
        }
        assert queued == set(opened[day])
    # And a scheduler that wakes again owes nothing: every run is done
    again: list[Any] = []
    stopping.clear()
    threading.Timer(0.5, stopping.set).start()
    schedule_billruns(engine, stopping, **options, on_report=again.append)  # type: ignore[arg-type]
    assert again == []


# -- the CLI ----------------------------------------------------------------------------------


@pytest.fixture
def cli(migrated: tuple[Engine, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    monkeypatch.setenv("FLEET_DATABASE_URL", DATABASE_URL)
    monkeypatch.setenv("FLEET_DB_SCHEMA", migrated[1])
    get_settings.cache_clear()
    yield CliRunner()
    get_settings.cache_clear()


def test_billrun_cli_prints_a_summary_and_json_for_scripts(
    cli: CliRunner, deliver: Deliver, read: Read
) -> None:
    _accounts(deliver, 4, cycle_day=8)

    first = cli.invoke(billing_app, ["billrun", "--cycle-day", "8", "--period", "2026-10"])
    assert first.exit_code == 0, first.output
    assert "2026-10-08 – 2026-11-07" in first.stderr
    assert first.stdout == ""

    again = cli.invoke(
        billing_app, ["billrun", "--cycle-day", "8", "--period", "2026-10", "--json"]
    )
    assert again.exit_code == 0, again.output
    summary = json.loads(again.stdout)
    assert summary["status"] == "done"
    assert (summary["queued"], summary["already_queued"], summary["passes"]) == (0, 4, 2)
    assert (summary["period_start"], summary["period_end"]) == ("2026-10-08", "2026-11-07")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["billrun"], "--cycle-day"),
        (["billrun", "--cycle-day", "8", "--period", "October"], "YYYY-MM"),
        (["billrun", "--cycle-day", "29"], "less than or equal"),
        (["billrun", "--schedule", "--cycle-day", "8"], "--schedule"),
        (["billrun", "--schedule", "--at", "2am"], "HH:MM"),
        (["statement", "not-a-uuid"], "UUID"),
    ],
)
def test_billing_cli_refuses_bad_arguments_saying_why(
    cli: CliRunner, args: list[str], message: str
) -> None:
    result = cli.invoke(billing_app, args)
    assert result.exit_code == 2
    assert message in result.output


def test_the_statement_shows_invoices_payments_credit_and_a_balance_that_reconciles(
    cli: CliRunner, deliver: Deliver
) -> None:
    [account_id] = _accounts(deliver, 1, cycle_day=1, currency="JPY")
    _charge(deliver, account_id, date(2026, 10, 5), "JPY")  # 1999 + 400 VAT = 2399 yen
    october = sample(
        "billing.invoice.issue",
        account_id=account_id,
        period_start=OCTOBER_1[0],
        period_end=OCTOBER_1[1],
    )
    assert deliver("billing", october) is Outcome.OK
    payment = sample(
        "billing.payment.record",
        account_id=account_id,
        amount=Money.of(3000, "JPY"),
        gateway_reference="psp-statement-1",
    )
    assert deliver("billing", payment) is Outcome.OK
    _charge(deliver, account_id, date(2026, 11, 5), "JPY")  # not invoiced yet

    as_json = cli.invoke(billing_app, ["statement", str(account_id), "--json"])
    assert as_json.exit_code == 0, as_json.output
    statement = json.loads(as_json.stdout)
    [invoice] = statement["invoices"]
    assert (invoice["total_minor"], invoice["paid_minor"], invoice["status"]) == (
        2399,
        2399,
        "paid",
    )
    [paid] = statement["payments"]
    assert paid["gateway_reference"] == "psp-statement-1"
    assert paid["allocations"] == [
        {"invoice_number": invoice["invoice_number"], "amount_minor": 2399, "source": "payment"}
    ]
    assert (statement["credit_minor"], statement["unbilled_minor"]) == (601, 1999)
    assert statement["balance_minor"] == 1999 + 400 - 3000 + 1999
    assert (statement["currency"], statement["exponent"], statement["reconciles"]) == (
        "JPY",
        0,
        True,
    )

    as_table = cli.invoke(billing_app, ["statement", str(account_id)])
    assert as_table.exit_code == 0, as_table.output
    assert invoice["invoice_number"] in as_table.stderr
    assert "2,399" in as_table.stderr and "psp-statement-1" in as_table.stderr
    assert "balance" in as_table.stderr


def test_the_statement_of_an_unknown_account_fails_in_one_line(cli: CliRunner) -> None:
    result = cli.invoke(billing_app, ["statement", str(uuid.uuid4())])
    assert result.exit_code == 1
    assert "no such account" in result.output
