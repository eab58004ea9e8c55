"""``fleet billing billrun`` (alias ``fleet billrun``) and ``fleet billing statement``.

The work is in workers.billing; this module reads settings, draws progress and tables on stderr
and writes ``--json`` to stdout. ``python -m workers.commands.billing …`` runs the same commands.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import uuid
from datetime import date, datetime, time
from types import FrameType
from typing import TYPE_CHECKING

import typer

from workers.commands.output import console, emit_json, fail
from workers.commands.store import command_engine

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from workers.billing import BillRunReport

billing_app = typer.Typer(
    help="Billing: the bill run and account statements (docs/billing.md).", no_args_is_help=True
)

JsonOption = typer.Option(False, "--json", help="JSON on stdout")
AMOUNTS = frozenset({"total", "owed", "amount", "credit"})
# workers.billing.DEFAULT_BATCH_SIZE, written out so that declaring the command loads neither
# SQLAlchemy nor the billing handlers; tests/unit/test_cli_imports.py keeps the two equal.
DEFAULT_BATCH_SIZE = 500


def _engine() -> contextlib.AbstractContextManager[Engine]:
    return command_engine("fleet-billing")


def _period(cycle_day: int, period: str | None) -> tuple[date, date]:
    from workers.billing import billing_period, billing_today, last_complete_period, parse_month

    if period is None:
        return last_complete_period(cycle_day, billing_today())
    try:
        return billing_period(cycle_day, parse_month(period))
    except ValueError as exc:
        fail(str(exc))


def _at(text: str) -> time:
    try:
        return datetime.strptime(text, "%H:%M").time()
    except ValueError:
        fail("--at is a local time HH:MM, e.g. 02:00")


def _period_text(start: str, end: str) -> str:
    """``2026-10-01–31``, ``2026-10-15–11-14``; both dates in full across a year end."""
    if end[:8] == start[:8]:
        return f"{start}–{end[8:]}"
    return f"{start}–{end[5:] if end[:4] == start[:4] else end}"


def _summary(report: BillRunReport) -> None:
    from rich.table import Table

    table = Table(title="bill run")
    table.add_column("")
    table.add_column("", justify="right")
    table.add_row("cycle day", str(report.cycle_day))
    table.add_row("period", f"{report.period_start} – {report.period_end}")
    table.add_row("status", report.status)
    table.add_row("pass", f"{report.passes}{' (resumed)' if report.resumed else ''}")
    table.add_row("accounts walked this pass", str(report.accounts))
    table.add_row("invoice messages queued this pass", str(report.queued))
    table.add_row("already queued by an earlier pass", str(report.already_queued))
    table.add_row("queued by this run in all", str(report.queued_total))
    console.print(table)


def billrun(
    cycle_day: int | None = typer.Option(
        None,
        "--cycle-day",
        "-d",
        min=1,
        max=28,
        help="Invoice the accounts with this cycle day",
        show_default=False,
    ),
    period: str | None = typer.Option(
        None,
        "--period",
        help="YYYY-MM: the month the period starts in (default: the last complete period)",
        show_default=False,
    ),
    schedule: bool = typer.Option(
        False,
        "--schedule",
        help="Run until stopped: daily at --at, the bill run of that day's cycle day",
    ),
    at: str = typer.Option("02:00", "--at", help="With --schedule: local time (Europe/Vienna)"),
    catch_up_days: int = typer.Option(
        3, "--catch-up-days", min=1, help="With --schedule: days a stopped scheduler catches up"
    ),
    batch_size: int = typer.Option(
        DEFAULT_BATCH_SIZE, "--batch-size", min=1, help="Accounts per transaction"
    ),
    pause_s: float = typer.Option(
        0.0, "--pause-s", min=0.0, help="Pause between batches, seconds (spreads a large run)"
    ),
    json_output: bool = JsonOption,
) -> None:
    """Queue one billing.invoice.issue per account of a cycle day, through the outbox.

    Resumable and idempotent: run it again, or after it was killed, and every account is still
    invoiced exactly once for the period. The outbox relay publishes the messages.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from workers.billing import run_billrun

    if schedule:
        if cycle_day is not None or period is not None:
            fail("--schedule picks each day's cycle day and period itself")
        _schedule(_at(at), catch_up_days, batch_size, pause_s, json_output)
        return
    if cycle_day is None:
        fail("pass --cycle-day (or --schedule)")
    bill_period = _period(cycle_day, period)
    with (
        _engine() as engine,
        Progress(
            TextColumn("bill run"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("accounts"),
            TimeElapsedColumn(),
            console=console,
            disable=json_output or not console.is_terminal,
        ) as bar,
    ):
        task = bar.add_task("accounts", total=None)
        report = run_billrun(
            engine,
            cycle_day,
            bill_period,
            batch_size=batch_size,
            pause_s=pause_s,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    if json_output:
        emit_json(report.to_json())
    else:
        _summary(report)


def _schedule(at: time, catch_up_days: int, batch_size: int, pause_s: float, as_json: bool) -> None:
    from workers.billing import schedule_billruns

    stopping = threading.Event()

    def stop(_signum: int, _frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    console.print(f"bill run scheduler: daily at {at:%H:%M} Europe/Vienna", highlight=False)
    with _engine() as engine:
        schedule_billruns(
            engine,
            stopping,
            at=at,
            catch_up_days=catch_up_days,
            on_report=lambda report: emit_json(report.to_json()) if as_json else _summary(report),
            batch_size=batch_size,
            pause_s=pause_s,
        )


billing_app.command("billrun")(billrun)


@billing_app.command("statement")
def statement(
    account: str = typer.Argument(..., help="Account id (UUID)"),
    json_output: bool = JsonOption,
) -> None:
    """An account's invoices, payments, credit and balance."""
    from rich import box
    from rich.table import Table

    from workers.billing import account_statement, format_money

    try:
        account_id = uuid.UUID(account)
    except ValueError:
        fail("ACCOUNT must be an account id (UUID)")
    with _engine() as engine:
        found = account_statement(engine, account_id)
    if found is None:
        fail("no such account", code=1)
    if json_output:
        emit_json(found.to_json())
        return

    def money(amount_minor: int) -> str:
        return format_money(amount_minor, found.currency).removesuffix(f" {found.currency}")

    console.print(
        f"account {found.account_id} · {found.status} · amounts in {found.currency} · "
        f"cycle day {found.cycle_day} · payment terms {found.payment_terms_days} days",
        highlight=False,
    )
    invoices = Table(title="invoices", box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("number", "period", "due", "total", "owed", "status"):
        invoices.add_column(column, justify="right" if column in AMOUNTS else "left", no_wrap=True)
    for invoice in found.invoices:
        invoices.add_row(
            invoice["invoice_number"],
            _period_text(invoice["period_start"], invoice["period_end"]),
            invoice["due_on"],
            money(invoice["total_minor"]),
            money(invoice["total_minor"] - invoice["paid_minor"]),
            "overdue" if invoice["overdue"] else invoice["status"],
        )
    console.print(invoices)
    payments = Table(title="payments", box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("gateway reference", "received", "amount", "applied to", "credit"):
        payments.add_column(
            column,
            justify="right" if column in AMOUNTS else "left",
            overflow="fold",
            no_wrap=column not in ("gateway reference", "applied to"),
        )
    for payment in found.payments:
        applied = "\n".join(
            f"{a['invoice_number']}: {money(a['amount_minor'])}"
            + (" (credit)" if a["source"] == "credit" else "")
            for a in payment["allocations"]
        )
        payments.add_row(
            payment["gateway_reference"],
            payment["received_at"][:10],
            money(payment["amount_minor"]),
            applied or "—",
            money(payment["unallocated_minor"]),
        )
    console.print(payments)
    totals = Table(title="balance", box=box.SIMPLE_HEAD, show_header=False)
    totals.add_column("")
    totals.add_column("", justify="right")
    totals.add_row("open invoices", money(found.outstanding_minor))
    totals.add_row("charges not invoiced yet (net)", money(found.unbilled_minor))
    totals.add_row("credit", money(-found.credit_minor))
    totals.add_row("balance (+ owed, − credit)", money(found.balance_minor))
    console.print(totals)
    if not found.reconciles:
        fail("the balance does not reconcile with invoices, charges and credit", code=1)


if __name__ == "__main__":
    billing_app()
