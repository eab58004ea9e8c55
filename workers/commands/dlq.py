"""``fleet dlq`` (the dead-letter archive) and ``fleet retry`` (parked retries).

The work is in ``dlq/``; this module reads settings, asks before destructive steps and prints:
rich tables on stderr for people, ``--json`` on stdout for scripts (fields: docs/operations.md).
Nothing here prints a payload, except ``dlq show --decrypt``, which is audited first.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import typer

from queues.errors import FleetError
from workers.commands.output import console, emit_json, fail
from workers.commands.store import command_engine

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from dlq import replay
    from dlq.queries import Filter, Status
    from queues.keys import KeyRegistry
    from queues.publisher import Outgoing, Publisher, PublishResult
    from workers.settings import Settings

app = typer.Typer(
    help="Dead letters: archive, inspect, replay (canary first), resolve, purge — audited.",
    no_args_is_help=True,
)
retry_app = typer.Typer(
    help="Parked retries: what waits on the retry tiers; move it back to work now.",
    no_args_is_help=True,
)

STATUSES = ("open", "replayed", "resolved", "all")
# dlq.audit.ACTIONS, written out so that declaring the commands loads no SQLAlchemy;
# tests/unit/test_cli_imports.py keeps the two equal.
AUDIT_ACTIONS = ("decrypt", "replay", "canary", "flush", "resolve", "purge", "reencrypt", "export")

JsonOption = typer.Option(False, "--json", help="JSON on stdout (fields: docs/operations.md)")
YesOption = typer.Option(False, "--yes", "-y", help="Do not ask (needed when not on a terminal)")
DryRunOption = typer.Option(False, "--dry-run", help="Show what would happen; change nothing")
QueueOption = typer.Option(None, "--queue", "-q", help="Originating queue (billing, crm, …)")
TypeOption = typer.Option(None, "--type", help="Message type, e.g. billing.charge.post")
ProducerOption = typer.Option(None, "--producer", help="Producer named in the envelope header")
ReasonOption = typer.Option(None, "--reason", "-r", help="Reason code, e.g. not_yet_expired")
ErrorClassOption = typer.Option(None, "--error-class", help="Error class, e.g. NotYet")
GroupOption = typer.Option(None, "--group", "-g", help="Failure group id (see `fleet dlq groups`)")
MessageIdOption = typer.Option(None, "--message-id", help="Message id")
SinceOption = typer.Option(None, "--since", help="Died at or after: RFC 3339 time, or 2h / 7d ago")
UntilOption = typer.Option(None, "--until", help="Died before: RFC 3339 time, or 2h / 7d ago")
TextOption = typer.Option(None, "--text", help="Text in the error message, class or traceback")


# ── plumbing ───────────────────────────────────────────────────────────────────────────────────


def _settings() -> Settings:
    from workers.settings import get_settings

    return get_settings()


def _engine() -> contextlib.AbstractContextManager[Engine]:
    return command_engine("fleet-dlq", pool_size=2)


class _LazyPublisher:
    """Connects on the first publish: a dry run or a fully refused replay opens no connection
    (and a Publisher closed while still connecting would leave its socket behind)."""

    def __init__(self) -> None:
        self._publisher: Publisher | None = None

    def publish_raw(self, items: Sequence[Outgoing]) -> list[PublishResult]:
        if self._publisher is None:
            from queues.publisher import Publisher

            settings = _settings()
            self._publisher = Publisher(
                settings.amqp_url.get_secret_value(),
                confirm_timeout_s=settings.publish_timeout_s,
                max_body_bytes=2**31,
                heartbeat_s=settings.amqp_heartbeat_s,
            )
        return self._publisher.publish_raw(items)

    def close(self) -> None:
        if self._publisher is not None:
            self._publisher.close()


@contextlib.contextmanager
def _publisher() -> Iterator[_LazyPublisher]:
    publisher = _LazyPublisher()
    try:
        yield publisher
    finally:
        publisher.close()


def _keys(required: bool) -> KeyRegistry | None:
    from queues.keys import KeyRegistryError

    try:
        return _settings().key_registry()
    except KeyRegistryError as exc:
        if required:
            fail(f"{exc.message} (the key registry is needed for this)")
        return None


def _confirm(yes: bool, question: str) -> None:
    """Destructive steps ask first; without a terminal they need ``--yes``."""
    if yes:
        return
    if not sys.stdin.isatty():
        fail(f"refusing to {question} without confirmation: pass --yes")
    if not typer.confirm(f"{question}?", default=False, err=True):
        fail("aborted", code=1)


def _moment(value: str | None, option: str) -> datetime | None:
    from dlq import queries

    if value is None:
        return None
    try:
        return queries.parse_moment(value)
    except ValueError as exc:
        fail(f"{option}: {exc}")


def _filter(
    *,
    ids: list[int] | None = None,
    queue: str | None = None,
    message_type: str | None = None,
    producer: str | None = None,
    reason: str | None = None,
    error_class: str | None = None,
    group: str | None = None,
    message_id: str | None = None,
    since: str | None = None,
    until: str | None = None,
    text: str | None = None,
    status: str = "open",
) -> Filter:
    from dlq.queries import Filter

    if status not in STATUSES:
        fail(f"--status {status!r} is not one of {', '.join(STATUSES)}")
    return Filter(
        ids=tuple(ids or ()),
        queue=queue,
        message_type=message_type,
        producer=producer,
        reason=reason,
        error_class=error_class,
        group=group,
        message_id=message_id,
        since=_moment(since, "--since"),
        until=_moment(until, "--until"),
        text=text,
        status=cast("Status", status),
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _when(value: Any, *, compact: bool = False) -> str:
    if not isinstance(value, datetime):
        return "" if value is None else str(value)
    return value.astimezone(UTC).strftime("%m-%d %H:%M:%S" if compact else "%Y-%m-%d %H:%M:%S")


def _short(value: Any, width: int = 48) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


# ── archive ────────────────────────────────────────────────────────────────────────────────────


@app.command("archive")
def archive(
    drain: bool = typer.Option(
        False, "--drain", help="Archive what is there now, then exit (instead of running on)"
    ),
) -> None:
    """Consume every <queue>.dead and unroutable into the archive (long-running; SIGTERM stops).

    Safe as several replicas. Also runs inside `fleet worker --archiver`.
    """
    from dlq.archiver import Archiver
    from workers.observability.logging import configure_logging
    from workers.processes import run_archiver

    settings = _settings()
    if not drain:  # a process of its own: JSON log lines like every fleet process
        configure_logging(settings.log_format, settings.log_level, settings.log_success_sample_rate)
        raise typer.Exit(run_archiver())
    with _engine() as engine:
        archiver = Archiver(
            settings.amqp_url.get_secret_value(),
            engine,
            batch_size=settings.archiver_batch_size,
            heartbeat_s=settings.amqp_heartbeat_s,
        )
        archiver.drain()
    console.print(
        f"archived {archiver.stats.archived} dead letters "
        f"({archiver.stats.already_archived} already archived)",
        highlight=False,
    )


# ── inspect ────────────────────────────────────────────────────────────────────────────────────


@app.command("ls")
def ls(
    queue: str | None = QueueOption,
    message_type: str | None = TypeOption,
    producer: str | None = ProducerOption,
    reason: str | None = ReasonOption,
    error_class: str | None = ErrorClassOption,
    group: str | None = GroupOption,
    message_id: str | None = MessageIdOption,
    since: str | None = SinceOption,
    until: str | None = UntilOption,
    text: str | None = TextOption,
    status: str = typer.Option("open", "--status", help="open, replayed, resolved or all"),
    limit: int = typer.Option(50, "--limit", "-n", min=1, max=10_000, help="Rows per page"),
    page: int = typer.Option(1, "--page", min=1, help="Page (newest deaths first)"),
    json_output: bool = JsonOption,
) -> None:
    """Dead letters, newest death first. Never shows a payload."""
    from rich.table import Table

    from dlq import queries

    flt = _filter(
        queue=queue,
        message_type=message_type,
        producer=producer,
        reason=reason,
        error_class=error_class,
        group=group,
        message_id=message_id,
        since=since,
        until=until,
        text=text,
        status=status,
    )
    with _engine() as engine:
        total = queries.count(engine, flt)
        rows = queries.list_letters(engine, flt, limit=limit, offset=(page - 1) * limit)
    if json_output:
        emit_json(_jsonable({"total": total, "page": page, "limit": limit, "items": rows}))
        return
    table = Table(title=f"dead letters ({status}): {total}, page {page}")
    columns = ["id", "died (UTC)", "queue", "type", "reason"]
    columns += ["status"] if status == "all" else []
    for column in columns:
        table.add_column(column, no_wrap=True)
    table.add_column("error", overflow="fold")
    for row in rows:
        cells = [
            str(row["id"]),
            _when(row["died_at"], compact=True),
            str(row["lane"] or row["queue"]),
            str(row["type"] or "?"),
            str(row["reason"]),
        ]
        cells += [str(row["status"])] if status == "all" else []
        last = f"(last: {row['last_reason']}) " if row["last_reason"] else ""
        error = ": ".join(str(p) for p in (row["error_class"], row["error"]) if p)
        table.add_row(*cells, last + _short(error, 120))
    console.print(table)
    if total > page * limit:
        console.print(f"more: --page {page + 1}", style="dim")


@app.command("groups")
def groups_command(
    queue: str | None = QueueOption,
    message_type: str | None = TypeOption,
    producer: str | None = ProducerOption,
    reason: str | None = ReasonOption,
    since: str | None = SinceOption,
    until: str | None = UntilOption,
    status: str = typer.Option("open", "--status", help="open, replayed, resolved or all"),
    json_output: bool = JsonOption,
) -> None:
    """Failure groups: same reason, error class and type — count, queues, first and last seen."""
    from rich.table import Table

    from dlq import queries

    flt = _filter(
        queue=queue,
        message_type=message_type,
        producer=producer,
        reason=reason,
        since=since,
        until=until,
        status=status,
    )
    with _engine() as engine:
        rows = queries.groups(engine, flt)
    if json_output:
        emit_json(_jsonable(rows))
        return
    table = Table(title=f"failure groups ({status})")
    table.add_column("group", no_wrap=True)
    table.add_column("count", no_wrap=True, justify="right")
    for column in ("reason / error class", "type", "queues", "seen (UTC)"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            str(row["group"]),
            f"{row['count']:,}",
            f"{row['reason']}\n{row['error_class'] or ''}".rstrip(),
            str(row["type"] or "?"),
            ", ".join(row["queues"]),
            f"{_when(row['first_seen'], compact=True)} …\n{_when(row['last_seen'], compact=True)}",
        )
    console.print(table)
    if rows:
        console.print("replay one group: fleet dlq replay --group GROUP --canary 1", style="dim")


@app.command("show")
def show(
    letter_id: int = typer.Argument(..., help="Dead letter id (see `fleet dlq ls`)"),
    decrypt: bool = typer.Option(
        False, "--decrypt", help="Also show the payload: needs the key registry; audited"
    ),
    json_output: bool = JsonOption,
) -> None:
    """Header fields, failure history and traceback of one dead letter; the payload only with
    --decrypt (which is audited before anything is shown)."""
    from dlq import queries

    keys = _keys(required=True) if decrypt else None
    with _engine() as engine:
        detail = queries.show(engine, letter_id)
        if detail is None:
            fail(f"no dead letter {letter_id}")
        payload: Any = None
        if decrypt:
            assert keys is not None
            payload = _decrypt_audited(engine, letter_id, keys)
    if json_output:
        document = dict(detail)
        if decrypt:
            document["payload"] = payload
        emit_json(_jsonable(document))
        return
    _print_detail(detail)
    if decrypt:
        console.print("[bold]payload[/] (decrypted; this was audited)")
        console.print_json(json.dumps(payload))


def _decrypt_audited(engine: Engine, letter_id: int, keys: KeyRegistry) -> Any:
    from sqlalchemy import select

    from dlq import audit, crypto
    from dlq.models import DeadLetter

    with engine.connect() as connection:
        body = connection.execute(
            select(DeadLetter.body).where(DeadLetter.id == letter_id)
        ).scalar_one()
    try:
        header, plaintext = crypto.decrypt(bytes(body), keys)
    except FleetError as exc:
        audit.record_now(engine, "decrypt", "failed", [letter_id], {"why": exc.reason})
        fail(f"cannot decrypt dead letter {letter_id}: {exc.message}")
    audit.record_now(engine, "decrypt", "ok", [letter_id], {"kid": header.get("kid")})
    try:
        return json.loads(plaintext)
    except ValueError:
        return plaintext.decode(errors="replace")


def _print_detail(detail: dict[str, Any]) -> None:
    from rich.table import Table

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    skip = {"traceback", "history", "headers", "x_death"}
    for name, value in detail.items():
        if name in skip or value is None:
            continue
        if name == "exchange" and value == "":
            value = "(default: back from a retry tier)"
        grid.add_row(name, _when(value) if isinstance(value, datetime) else str(value))
    console.print(grid)
    if detail.get("x_death"):
        console.print("[bold]x-death[/] (the broker's record)")
        console.print_json(json.dumps(_jsonable(detail["x_death"])))
    history = Table(title="failure history")
    for column in ("at (UTC)", "event", "dead letter", "queue", "detail", "by"):
        history.add_column(column)
    for event in detail.get("history") or []:
        history.add_row(
            _when(event["at"]),
            str(event["event"]),
            str(event["dead_letter_id"] or ""),
            str(event["queue"] or ""),
            str(event["detail"] or ""),
            str(event["by"] or ""),
        )
    console.print(history)
    if detail.get("traceback"):
        console.print("[bold]traceback[/]")
        console.print(detail["traceback"], highlight=False, markup=False)


# ── replay ─────────────────────────────────────────────────────────────────────────────────────


@app.command("replay")
def replay_command(
    ids: list[int] = typer.Argument(
        None,
        help="Dead letter ids (the filters below are for choosing without ids)",
        show_default=False,
    ),
    group: str | None = GroupOption,
    queue: str | None = QueueOption,
    message_type: str | None = TypeOption,
    producer: str | None = ProducerOption,
    reason: str | None = ReasonOption,
    error_class: str | None = ErrorClassOption,
    since: str | None = SinceOption,
    until: str | None = UntilOption,
    text: str | None = TextOption,
    every_open: bool = typer.Option(False, "--all", help="Every open dead letter"),
    again: bool = typer.Option(
        False, "--again", help="Also dead letters replayed before (the inbox absorbs repeats)"
    ),
    canary: int = typer.Option(
        0, "--canary", min=0, help="Replay N first, wait for their outcome, stop if any fails"
    ),
    canary_wait_s: float = typer.Option(
        None, "--canary-wait-s", help="Bound per canary wait (default $FLEET_CANARY_WAIT_S)"
    ),
    dry_run: bool = DryRunOption,
    yes: bool = YesOption,
    json_output: bool = JsonOption,
) -> None:
    """Publish archived envelopes back to their queue (fleet.replay, same message id, fresh
    attempt budget), each once; mark them replayed only after the broker confirmed."""
    from dlq import queries
    from dlq.models import DeadLetter

    selectors = [ids, group, queue, message_type, producer, reason, error_class, since, until, text]
    if not any(selectors) and not every_open:
        fail("say what to replay: ids, --group, a filter (--queue, --reason, …) or --all")
    settings = _settings()
    horizon = timedelta(days=settings.dedup_horizon_days)
    keys = _keys(required=False)
    with _engine() as engine:
        if ids:
            chosen = list(dict.fromkeys(ids))  # the named rows, found or not: each is told why
        else:
            flt = _filter(
                queue=queue,
                message_type=message_type,
                producer=producer,
                reason=reason,
                error_class=error_class,
                group=group,
                since=since,
                until=until,
                text=text,
                status="all" if again else "open",
            )
            if again:  # every matching one not resolved, replayed before or not
                flt = replace(flt, extra=(DeadLetter.resolved_at.is_(None),))
            chosen = queries.matching_ids(engine, flt)
        if not chosen:
            fail("nothing to replay: no dead letter matches", code=1)
        if not dry_run:
            _confirm(yes, f"replay {len(chosen)} dead letter(s)")
        with _publisher() as publisher:
            report = _replay_with_canary(
                engine,
                publisher,
                chosen,
                horizon=horizon,
                keys=keys,
                again=again,
                dry_run=dry_run,
                canary=canary,
                wait_s=canary_wait_s or settings.canary_wait_s,
            )
    _print_replay(report, json_output, dry_run)
    problems = report.count("refused") + report.count("skipped") + report.count("not_published")
    if report.stopped or problems:
        raise typer.Exit(1)


def _replay_with_canary(
    engine: Engine,
    publisher: _LazyPublisher,
    chosen: list[int],
    *,
    horizon: timedelta,
    keys: KeyRegistry | None,
    again: bool,
    dry_run: bool,
    canary: int,
    wait_s: float,
) -> replay.ReplayReport:
    from dlq import audit, replay

    options: dict[str, Any] = {"horizon": horizon, "keys": keys, "again": again}
    if not canary or dry_run:
        return replay.replay(engine, publisher, chosen, dry_run=dry_run, **options)
    first, rest = chosen[:canary], chosen[canary:]
    report = replay.replay(engine, publisher, first, **options)
    if not any(i.outcome == "published" for i in report.items):
        report.stopped = "no canary was published; nothing else replayed"
        return report
    console.print(f"canary: {len(first)} replayed; waiting up to {wait_s:g} s for outcomes…")
    report.canary = replay.await_outcomes(engine, report.items, wait_s=wait_s)
    bad = [c for c in report.canary if c.verdict != "processed"]
    verdict = "ok" if not bad else "stopped"
    audit.record_now(
        engine,
        "canary",
        verdict,
        [c.id for c in report.canary],
        {"outcomes": {str(c.id): f"{c.verdict}: {c.detail}" for c in report.canary}},
    )
    if bad:
        died = sum(1 for c in bad if c.verdict == "died_again")
        report.stopped = (
            f"canary failed ({died} died again, {len(bad) - died} undecided): "
            f"{len(rest)} not replayed; fix the cause first"
        )
        return report
    if rest:
        more = replay.replay(engine, publisher, rest, **options)
        report.items += more.items
    return report


def _print_replay(report: replay.ReplayReport, json_output: bool, dry_run: bool) -> None:
    from rich.table import Table

    if json_output:
        emit_json(_jsonable(report.to_json()))
        return
    if report.canary:
        table = Table(title="canary")
        for column in ("id", "message id", "queue", "verdict", "detail", "after (s)"):
            table.add_column(column, overflow="fold")
        for c in report.canary:
            style = "green" if c.verdict == "processed" else "red"
            table.add_row(
                str(c.id),
                str(c.message_id),
                str(c.queue),
                f"[{style}]{c.verdict}[/]",
                c.detail,
                f"{c.waited_s:g}",
            )
        console.print(table)
    table = Table(title="replay (dry run)" if dry_run else f"replay by {report.operator}")
    for column in ("id", "message id", "queue", "type", "outcome", "detail"):
        table.add_column(column, overflow="fold")
    for item in report.items:
        style = "green" if item.outcome in ("published", "would_publish") else "red"
        table.add_row(
            str(item.id),
            str(item.message_id or ""),
            str(item.queue or ""),
            str(item.type or ""),
            f"[{style}]{item.outcome}[/]",
            item.detail,
        )
    console.print(table)
    if report.stopped:
        console.print(f"[bold red]stopped:[/] {report.stopped}", highlight=False)


# ── housekeeping ───────────────────────────────────────────────────────────────────────────────


@app.command("resolve")
def resolve(
    ids: list[int] = typer.Argument(None, help="Dead letter ids", show_default=False),
    group: str | None = GroupOption,
    reason: str | None = ReasonOption,
    queue: str | None = QueueOption,
    note: str = typer.Option(..., "--note", help="Why it needs no replay (kept in the archive)"),
    yes: bool = YesOption,
    json_output: bool = JsonOption,
) -> None:
    """Mark dead letters handled without replay (kept until retention); audited."""
    from dlq import housekeeping, queries

    if not (ids or group or reason or queue):
        fail("say what to resolve: ids, --group, --reason or --queue")
    with _engine() as engine:
        chosen = (
            list(ids)
            if ids
            else queries.matching_ids(
                engine, _filter(group=group, reason=reason, queue=queue, status="all")
            )
        )
        if not chosen:
            fail("nothing to resolve: no dead letter matches", code=1)
        _confirm(yes, f"resolve {len(chosen)} dead letter(s)")
        report = housekeeping.resolve(engine, chosen, note)
    if json_output:
        emit_json(report.to_json())
    else:
        console.print(f"resolved {len(report.resolved)}", highlight=False)
        for letter_id, why in report.skipped.items():
            console.print(f"  {letter_id}: {why}", highlight=False)
    if report.skipped:
        raise typer.Exit(1)


@app.command("purge")
def purge(
    older_than: str = typer.Option(
        ..., "--older-than", help="Archived longer ago than this (e.g. 90d): retention"
    ),
    only_handled: bool = typer.Option(
        False, "--only-handled", help="Keep dead letters nobody replayed or resolved yet"
    ),
    dry_run: bool = DryRunOption,
    yes: bool = YesOption,
    json_output: bool = JsonOption,
) -> None:
    """Delete dead letters archived before a horizon (retention, GDPR); asks first; audited."""
    from dlq import housekeeping, queries

    try:
        age = queries.parse_duration(older_than)
    except ValueError as exc:
        fail(f"--older-than: {exc}")
    before = datetime.now(UTC) - age
    with _engine() as engine:
        preview = housekeeping.purge(engine, before, only_handled=only_handled, dry_run=True)
        if dry_run or preview.matched == 0:
            report = preview
        else:
            _confirm(
                yes,
                f"delete {preview.matched} dead letter(s) archived before {_when(before)} UTC "
                f"({preview.unhandled} never replayed or resolved)",
            )
            report = housekeeping.purge(engine, before, only_handled=only_handled)
    if json_output:
        emit_json(report.to_json())
        return
    verb = "would delete" if report.dry_run else "deleted"
    console.print(
        f"{verb} {report.matched if report.dry_run else report.deleted} dead letter(s) "
        f"archived before {_when(before)} UTC ({report.unhandled} unhandled)",
        highlight=False,
    )


@app.command("export")
def export(
    queue: str | None = QueueOption,
    message_type: str | None = TypeOption,
    reason: str | None = ReasonOption,
    group: str | None = GroupOption,
    since: str | None = SinceOption,
    until: str | None = UntilOption,
    status: str = typer.Option("all", "--status", help="open, replayed, resolved or all"),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Write to this file (mode 0600) instead of stdout"
    ),
) -> None:
    """Dead letters as JSON lines; envelopes stay encrypted (a non-envelope body is withheld)."""
    from dlq import audit, queries

    flt = _filter(
        queue=queue,
        message_type=message_type,
        reason=reason,
        group=group,
        since=since,
        until=until,
        status=status,
    )
    exported: list[int] = []
    with _engine() as engine, _export_target(output) as target:
        for row in queries.export_rows(engine, flt):
            target.write(json.dumps(_jsonable(row), sort_keys=True) + "\n")
            exported.append(int(row["id"]))
        audit.record_now(
            engine,
            "export",
            "ok",
            exported,
            {"count": len(exported), "to": str(output) if output else "stdout"},
        )
    console.print(f"exported {len(exported)} dead letter(s)", highlight=False)


@contextlib.contextmanager
def _export_target(output: Path | None) -> Iterator[Any]:
    if output is None:
        yield sys.stdout
        return
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        yield handle


@app.command("reencrypt")
def reencrypt(
    queue: str | None = QueueOption,
    producer: str | None = ProducerOption,
    kid: str | None = typer.Option(None, "--kid", help="Only envelopes sealed with this key"),
    dry_run: bool = DryRunOption,
    yes: bool = YesOption,
    json_output: bool = JsonOption,
) -> None:
    """Re-seal archived envelopes under the archive key (producer `archive`), so producer keys
    can be retired; keeps the original producer and kid. Refuses when a needed key is missing."""
    from dlq import housekeeping
    from dlq.models import DeadLetter
    from dlq.queries import Filter

    keys = _keys(required=True)
    assert keys is not None
    flt = Filter(
        queue=queue,
        producer=producer,
        status="all",
        extra=(DeadLetter.kid == kid,) if kid else (),
    )
    with _engine() as engine:
        try:
            preview = housekeeping.reencrypt(engine, keys, flt, dry_run=True)
            if dry_run or not preview.reencrypted:
                report = preview
            else:
                count = len(preview.reencrypted)
                _confirm(yes, f"re-encrypt {count} envelope(s) under {preview.archive_kid}")
                report = housekeeping.reencrypt(engine, keys, flt)
        except FleetError as exc:
            fail(exc.message)
    if json_output:
        emit_json(report.to_json())
        return
    verb = "would re-encrypt" if report.dry_run else "re-encrypted"
    console.print(
        f"{verb} {len(report.reencrypted)} envelope(s) under {report.archive_kid}; "
        f"from {report.from_kids or 'none'}; kept as received: {len(report.skipped)}",
        highlight=False,
    )


@app.command("audit")
def audit_command(
    action: str | None = typer.Option(None, "--action", help=f"One of {', '.join(AUDIT_ACTIONS)}"),
    operator: str | None = typer.Option(None, "--operator", help="Database role of the operator"),
    letter_id: int | None = typer.Option(None, "--id", help="Only actions on this dead letter"),
    since: str | None = SinceOption,
    limit: int = typer.Option(100, "--limit", "-n", min=1, max=10_000),
    json_output: bool = JsonOption,
) -> None:
    """The audit trail, newest first: who did what to which dead letters, with what result."""
    from rich.table import Table

    from dlq import audit

    with _engine() as engine:
        rows = audit.audit_rows(
            engine,
            action=action,
            operator=operator,
            dead_letter_id=letter_id,
            since=_moment(since, "--since"),
            limit=limit,
        )
    if json_output:
        emit_json(_jsonable(rows))
        return
    table = Table(title="operator audit")
    for column in ("id", "at (UTC)", "operator", "action", "result", "dead letters", "detail"):
        table.add_column(column, overflow="fold")
    for row in rows:
        ids = row["dead_letter_ids"]
        table.add_row(
            str(row["id"]),
            _when(row["at"]),
            str(row["operator"]),
            str(row["action"]),
            str(row["result"]),
            _short(", ".join(map(str, ids)), 30),
            _short(json.dumps(row["detail"]), 60),
        )
    console.print(table)


# ── fleet retry ────────────────────────────────────────────────────────────────────────────────


@retry_app.command("ls")
def retry_ls(
    queue: str | None = QueueOption,
    json_output: bool = JsonOption,
) -> None:
    """Per queue and tier: parked messages, the oldest, when the next is due, by type."""
    from rich.table import Table

    from dlq import retry
    from queues.topology import DOMAINS

    if queue is not None and queue not in DOMAINS:
        fail(f"unknown queue {queue!r}; the domains are {', '.join(DOMAINS)}")
    settings = _settings()
    try:
        rows = retry.parked(
            settings.amqp_url.get_secret_value(),
            settings.retry_tiers_s,
            domains=[queue] if queue else DOMAINS,
        )
    except FleetError as exc:
        fail(exc.message)
    if json_output:
        emit_json(_jsonable([r.to_json() for r in rows]))
        return
    table = Table(title="parked retries")
    for column in ("queue", "tier", "count", "oldest parked (UTC)", "next due (UTC)", "by type"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            row.queue,
            row.tier,
            f"{row.count:,}",
            _when(row.oldest_parked_at),
            _when(row.next_due_at),
            ", ".join(f"{t} {n}" for t, n in row.by_type.items()),
        )
    console.print(table)


@retry_app.command("flush")
def retry_flush(
    queue: str = typer.Argument(..., help="Domain queue: billing, provisioning or crm"),
    tier: str | None = typer.Option(None, "--tier", help="Only this tier (e.g. 1h)"),
    types: list[str] = typer.Option([], "--type", help="Only this message type (repeatable)"),
    limit: int | None = typer.Option(None, "--limit", min=1, help="At most this many messages"),
    dry_run: bool = DryRunOption,
    yes: bool = YesOption,
    json_output: bool = JsonOption,
) -> None:
    """Move parked messages back to the work queue now (confirmed, then removed from the tier;
    the attempt budget continues); audited. After fixing a cause, nobody waits for the TTL."""
    from rich.table import Table

    from dlq import audit, retry

    settings = _settings()
    url = settings.amqp_url.get_secret_value()
    if not dry_run:
        what = f"{tier} tier" if tier else "all tiers"
        _confirm(yes, f"move parked {queue} messages ({what}) back to work now")
    with _engine() as engine:
        try:
            with _publisher() as publisher:
                results = retry.flush(
                    url,
                    publisher,
                    queue,
                    settings.retry_tiers_s,
                    tier=tier,
                    types=types,
                    limit=limit,
                    dry_run=dry_run,
                )
        except FleetError as exc:
            fail(exc.message)
        moved = sum(r.moved for r in results)
        failed = sum(r.failed for r in results)
        if not dry_run:
            audit.record_now(
                engine,
                "flush",
                "ok" if not failed else "partial",
                [],
                {
                    "queue": queue,
                    "tier": tier,
                    "types": types,
                    "moved": moved,
                    "failed": failed,
                    "by_tier": {r.tier: r.moved for r in results},
                },
            )
    if json_output:
        emit_json(_jsonable([r.to_json() for r in results]))
    else:
        table = Table(title="retry flush (dry run)" if dry_run else "retry flush")
        for column in ("tier", "taken", "moved", "kept", "failed", "by type"):
            table.add_column(column)
        for r in results:
            table.add_row(
                r.tier,
                str(r.taken),
                str(r.moved),
                str(r.kept),
                str(r.failed),
                ", ".join(f"{t} {n}" for t, n in r.by_type.items()),
            )
        console.print(table)
    if failed:
        raise typer.Exit(1)
