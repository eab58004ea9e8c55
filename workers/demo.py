"""The demo: the fleet at work on a realistic workload, its outcome checked against the database.

    set up    vhost demo-<id> (rabbitmqctl), schema demo_<id> (Alembic), producer keys (0600),
              topology with short retry tiers
    start     the network element simulator (transient failures) and ``fleet worker``
              (processes × threads, suspect lane, outbox relay), recording outcome events
    publish   the workload (workers.workload) to the ``fleet`` exchange, one streaming publisher
              and one key per producer; deferred jobs go out when the fleet's progress triggers them
    wait      until every expected delivery — follow-ups from the outbox included — settled
    stop      the fleet (SIGTERM, graceful); summarise the outcome events; check them against
              PostgreSQL (inbox, effects) and the drained dead-letter queues (the ledger)
    clean up  vhost, schema and files, unless ``keep``; always the processes it started

Everything the demo counts comes from the outcome events (``FLEET_EVENTS_FILE``); the checks
then prove the events tell the truth.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import subprocess
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pika
from alembic import command
from rich import box
from rich.console import Console, Group
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
)
from rich.table import Table
from sqlalchemy import Engine, create_engine, text

from handlers.registry import HANDLERS, handler_name
from handlers.store.db import make_engine
from queues.envelope import SealedMessage
from queues.keys import KeyRegistry, ProducerKey
from queues.publisher import Publisher, PublishResult
from queues.topology import DOMAINS, Rabbitmqctl, TopologyConfig, TopologyError, apply, queues_of
from workers.commands.db import alembic_config
from workers.events import EventLog
from workers.ledger import DeadLetter, LedgerReport, check_ledger, drain_dead_letters
from workers.lifecycle import domain_of
from workers.local import LocalFleet
from workers.settings import Settings
from workers.workload import PRODUCER_TYPES, Deferred, Job, Workload, build_workload, seal_job

FINAL_EVENTS = ("ok", "duplicate", "stale", "dead")
OUTCOME_KINDS = ("ok", "duplicate", "stale", "retried", "dead")
OUTCOME_COLUMNS = ("ok", "dup", "stale", "retried", "dead")
Key = tuple[str, str]
"""(message id, domain queue): one delivery the fleet owes."""

CHUNK = 250
POLL_S = 0.2
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


class DemoError(Exception):
    """The demo could not run to the end; the message says why and where to look."""


@dataclass(frozen=True)
class DemoOptions:
    messages: int = 3000
    processes: int = 2
    threads: int = 4
    keep: bool = False
    timeout_s: float = 300.0
    seed: int | None = None
    failure_rate: float = 0.1
    network_attempts: int = 2
    retry_tiers_s: tuple[int, ...] = (1, 2, 4)


# ── the sandbox: vhost, schema, files ──────────────────────────────────────────────────────────


def vhost_url(base_url: str, vhost: str) -> str:
    """``base_url``'s broker and user, on ``vhost``."""
    params = pika.URLParameters(base_url)
    user = quote(str(getattr(params.credentials, "username", "guest")), safe="")
    password = quote(str(getattr(params.credentials, "password", "guest")), safe="")
    scheme = "amqps" if base_url.startswith("amqps://") else "amqp"
    return f"{scheme}://{user}:{password}@{params.host}:{params.port}/{quote(vhost, safe='')}"


@dataclass
class Sandbox:
    """The run's own vhost, schema and directory; ``remove`` takes away what was created."""

    settings: Settings
    token: str = field(default_factory=lambda: secrets.token_hex(4))
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="fleet-demo-")))
    ctl: Rabbitmqctl = field(default_factory=Rabbitmqctl)
    vhost_created: bool = False
    schema_created: bool = False
    engine: Engine | None = None

    @property
    def vhost(self) -> str:
        return f"demo-{self.token}"

    @property
    def schema(self) -> str:
        return f"demo_{self.token}"

    @property
    def url(self) -> str:
        return vhost_url(self.settings.amqp_url.get_secret_value(), self.vhost)

    @property
    def database_url(self) -> str:
        return self.settings.database_url.get_secret_value()

    @property
    def keys_file(self) -> Path:
        return self.workdir / "keys.json"

    @property
    def events_file(self) -> Path:
        return self.workdir / "events.jsonl"

    @property
    def log_dir(self) -> Path:
        return self.workdir / "logs"

    def create_vhost(self) -> None:
        user = str(getattr(pika.URLParameters(self.url).credentials, "username", "guest"))
        self.ctl.run("add_vhost", self.vhost)
        self.vhost_created = True
        self.ctl.run("set_permissions", "-p", self.vhost, user, ".*", ".*", ".*")

    def migrate(self) -> Engine:
        self.schema_created = True  # Alembic creates it first thing; drop it whatever happens
        config = alembic_config(self.schema)
        config.attributes["configure_logging"] = False
        command.upgrade(config, "head")
        self.engine = make_engine(self.database_url, self.schema, pool_size=2)
        return self.engine

    def write_keys(self) -> KeyRegistry:
        keys = KeyRegistry(ProducerKey.generate(p, t) for p, t in PRODUCER_TYPES.items())
        keys.save(self.keys_file)
        return keys

    def fleet_env(self, options: DemoOptions) -> dict[str, str]:
        return {
            "FLEET_AMQP_URL": self.url,
            "FLEET_DATABASE_URL": self.database_url,
            "FLEET_DB_SCHEMA": self.schema,
            "FLEET_KEYS_FILE": str(self.keys_file),
            "FLEET_PRODUCER": "fleet",
            "FLEET_EVENTS_FILE": str(self.events_file),
            "FLEET_RETRY_TIERS_S": json.dumps(list(options.retry_tiers_s)),
            "FLEET_NETWORK_ATTEMPTS": str(options.network_attempts),
            "FLEET_SHUTDOWN_TIMEOUT_S": "10",
        }

    def remove(self, *, keep_files: bool) -> list[str]:
        """Delete the vhost and schema (and the directory unless ``keep_files``); what failed."""
        problems = []
        if self.engine is not None:
            self.engine.dispose()
        if self.vhost_created:
            try:
                self.ctl.run("delete_vhost", self.vhost)
            except TopologyError as exc:
                problems.append(f"vhost {self.vhost} not removed: {exc.message}")
        if self.schema_created:
            engine = create_engine(self.database_url)
            try:
                with engine.begin() as connection:
                    connection.execute(text(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE'))
            except Exception as exc:
                problems.append(f"schema {self.schema} not dropped ({type(exc).__name__})")
            finally:
                engine.dispose()
        if not keep_files:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return problems


@dataclass
class DemoFleet(LocalFleet):
    """A LocalFleet that remembers which command each child runs, for error messages."""

    names: dict[int, str] = field(default_factory=dict)

    def spawn(
        self, name: str, args: list[str], extra: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        child = super().spawn(name, args, extra)
        self.names[child.pid] = " ".join(args[:1])
        return child


# ── reading the outcome events ─────────────────────────────────────────────────────────────────


def percentile(values: list[float], share: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(share * len(ordered) + 0.5)))
    return ordered[rank - 1]


def _age(event: dict[str, Any]) -> float | None:
    if isinstance(event.get("age_s"), int | float):
        return float(event["age_s"])
    created = event.get("created_at")
    if isinstance(created, str) and isinstance(event.get("at"), int | float):
        with contextlib.suppress(ValueError):
            return float(event["at"]) - datetime.fromisoformat(created).timestamp()
    return None


@dataclass
class Tally:
    """Everything the outcome events say, counted."""

    kinds: Counter[str] = field(default_factory=Counter)
    by_type: dict[tuple[str, str], Counter[str]] = field(
        default_factory=lambda: defaultdict(Counter)
    )
    by_queue: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    settled: Counter[Key] = field(default_factory=Counter)
    retried_ids: set[str] = field(default_factory=set)
    retried_by_tier: Counter[str] = field(default_factory=Counter)
    retried_by_reason: Counter[str] = field(default_factory=Counter)
    dead: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    dead_by_reason: Counter[str] = field(default_factory=Counter)
    ages: list[float] = field(default_factory=list)
    last_final_at: float | None = None

    def add(self, event: dict[str, Any]) -> None:
        kind = str(event.get("event"))
        queue = domain_of(str(event.get("queue", "")))
        message_id = str(event.get("message_id"))
        self.kinds[kind] += 1
        self.by_type[(str(event.get("type")), queue)][kind] += 1
        self.by_queue[queue][kind] += 1
        if kind == "retried":
            self.retried_ids.add(message_id)
            self.retried_by_tier[str(event.get("tier"))] += 1
            self.retried_by_reason[str(event.get("reason"))] += 1
        if kind not in FINAL_EVENTS:
            return
        self.settled[(message_id, queue)] += 1
        if kind == "dead":
            reason = str(event.get("reason"))
            self.dead[(message_id, queue, reason)] += 1
            self.dead_by_reason[reason] += 1
        age = _age(event)
        if age is not None:
            self.ages.append(age)
        at = event.get("at")
        if isinstance(at, int | float):
            self.last_final_at = max(self.last_final_at or at, at)


# ── what the fleet owes ────────────────────────────────────────────────────────────────────────


@dataclass
class Expected:
    """Deliveries owed: each confirmed copy on each queue it routes to, and the follow-ups."""

    copies: Counter[Key] = field(default_factory=Counter)
    confirmed: dict[str, str] = field(default_factory=dict)
    follow_ups: dict[str, str] = field(default_factory=dict)
    publishes: int = 0
    by_producer: Counter[str] = field(default_factory=Counter)

    def add(self, message_id: str, message_type: str, producer: str) -> None:
        self.confirmed[message_id] = message_type
        self.publishes += 1
        self.by_producer[producer] += 1
        for queue in queues_of(message_type):
            self.copies[(message_id, queue)] += 1

    def refresh_follow_ups(self, engine: Engine) -> None:
        """Add the outbox's follow-ups. All rows, every time: ids from a sequence commit out of
        order, so "rows after the last id seen" would miss some."""
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT message_id, message_type FROM outbox")).all()
        for message_id, message_type in rows:
            if str(message_id) in self.follow_ups:
                continue
            self.follow_ups[str(message_id)] = str(message_type)
            for queue in queues_of(str(message_type)):
                self.copies[(str(message_id), queue)] = 1

    def keys_of(self, message_id: str) -> list[Key]:
        message_type = self.confirmed.get(message_id) or self.follow_ups.get(message_id, "")
        return [(message_id, q) for q in queues_of(message_type)]

    def progress(self, tally: Tally) -> tuple[int, int]:
        """(settled, owed) deliveries."""
        done = sum(min(tally.settled[k], n) for k, n in self.copies.items())
        return done, sum(self.copies.values())

    def outstanding(self, tally: Tally) -> list[Key]:
        return [k for k, n in self.copies.items() if tally.settled[k] < n]


# ── the checks ─────────────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class Check:
    """One comparison of what the events say with what the database or broker holds."""

    name: str
    events: str
    actual: str
    ok: bool
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "check": self.name,
            "events": self.events,
            "actual": self.actual,
            "ok": self.ok,
            "detail": self.detail,
        }


EFFECTS = {
    "billing.account.open": ("billing", "billing_accounts"),
    "billing.charge.post": ("billing", "billing_charges"),
    "crm.interaction.log": ("crm", "crm_interactions"),
    "provisioning.service.activate": ("provisioning", "provisioning_services"),
}
"""Types whose ``ok`` adds exactly one row to a business table (duplicates add none)."""


def reconcile(
    engine: Engine,
    tally: Tally,
    expected: Expected,
    dead_letters: list[DeadLetter],
    ledger: LedgerReport,
    workload: Workload,
) -> list[Check]:
    """Prove the outcome events against PostgreSQL and the dead-letter queues."""
    queue_of_handler = {handler_name(h): queue for (queue, _), h in HANDLERS.items()}
    with engine.connect() as connection:
        inbox = connection.execute(
            text("SELECT handler, outcome, count(*) FROM inbox GROUP BY handler, outcome")
        ).all()
        effects = {
            table: int(connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())  # noqa: S608
            for _, table in EFFECTS.values()
        }
    rows: Counter[tuple[str, str]] = Counter()
    for handler, outcome, count in inbox:
        rows[(queue_of_handler.get(str(handler), "?"), str(outcome))] += int(count)

    problems = [f"{m} on {q}" for m, q in [*ledger.lost, *ledger.doubled]] + ledger.unexpected
    checks = [
        Check(
            "ledger: each (message, queue) once",
            f"{ledger.expected_deliveries:,} owed",
            f"{sum(ledger.processed.values()):,} in inbox + {len(dead_letters):,} dead; "
            f"lost {len(ledger.lost)}, doubled {len(ledger.doubled)}, "
            f"unexpected {len(ledger.unexpected)}",
            ledger.ok,
            "; ".join(problems[:5]),
        )
    ]
    extra = [k for k, n in tally.settled.items() if n > expected.copies.get(k, 0)]
    missing = expected.outstanding(tally)
    checks.append(
        Check(
            "each published copy settled once",
            f"{sum(tally.settled.values()):,} final events",
            f"{sum(expected.copies.values()):,} copies confirmed",
            not extra and not missing,
            f"extra {extra[:3]}; missing {missing[:3]}" if extra or missing else "",
        )
    )
    suspects = tally.kinds["suspect"]
    for queue in DOMAINS:
        events = tally.by_queue[queue]
        resent = sum(n - 1 for (_, q), n in expected.copies.items() if q == queue and n > 1)
        absorbed = events["duplicate"] - rows[(queue, "duplicate")]
        checks.append(
            Check(
                f"{queue} inbox: ok / stale / dup",
                f"{events['ok']:,} / {events['stale']:,} / {events['duplicate']:,}",
                f"{rows[(queue, 'ok')]:,} / {rows[(queue, 'stale')]:,} / "
                f"{rows[(queue, 'duplicate')]:,} + {resent:,} re-sent",
                events["ok"] == rows[(queue, "ok")]
                and events["stale"] == rows[(queue, "stale")]
                and resent <= absorbed <= resent + suspects,
            )
        )
    for message_type, (queue, table) in EFFECTS.items():
        ok = tally.by_type[(message_type, queue)]["ok"]
        name = f"{message_type.split('.', 1)[1]} ▶ {table}"
        checks.append(Check(name, f"{ok:,} ok", f"{effects[table]:,} rows", ok == effects[table]))
    drained = Counter((d.message_id, d.queue, d.reason) for d in dead_letters)
    checks.append(
        Check(
            "dead letters (id, queue, reason)",
            f"{sum(tally.dead.values()):,} dead events",
            f"{len(dead_letters):,} drained from *.dead",
            drained == tally.dead,
            f"only in events {list((tally.dead - drained).elements())[:3]}; "
            f"only drained {list((drained - tally.dead).elements())[:3]}"
            if drained != tally.dead
            else "",
        )
    )
    checks.append(
        Check(
            "dead letters = the planted ones",
            _reasons(tally.dead_by_reason),
            _reasons(workload.planned_dead) + " (planted)",
            tally.dead_by_reason == workload.planned_dead,
        )
    )
    return checks


def _reasons(counter: Counter[str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counter.items())) or "none"


# ── the report ─────────────────────────────────────────────────────────────────────────────────


@dataclass
class DemoReport:
    options: DemoOptions
    vhost: str
    schema: str
    workdir: Path
    workload: Workload
    tally: Tally
    expected: Expected
    checks: list[Check]
    network: dict[str, Any]
    worker_exit_code: int | None
    setup_s: float
    publish_s: float
    settle_s: float
    total_s: float
    started_at: float
    seed: int

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def throughput_per_s(self) -> float:
        window = (self.tally.last_final_at or self.started_at) - self.started_at
        return sum(self.tally.settled.values()) / window if window > 0 else 0.0

    def age(self) -> dict[str, float | None]:
        ages = self.tally.ages
        return {
            "p50": _round(percentile(ages, 0.50)),
            "p99": _round(percentile(ages, 0.99)),
            "max": _round(max(ages) if ages else None),
        }

    def to_json(self) -> dict[str, Any]:
        tally = self.tally
        processed: Counter[str] = Counter()
        for (message_type, _), counts in tally.by_type.items():
            processed[message_type] += counts["ok"]
        return {
            "ok": self.ok,
            "ledger": "OK" if self.ok else "MISMATCH",
            "run": {
                "messages": self.options.messages,
                "processes": self.options.processes,
                "threads": self.options.threads,
                "seed": self.seed,
                "retry_tiers_s": list(self.options.retry_tiers_s),
                "network_failure_rate": self.options.failure_rate,
                "vhost": self.vhost,
                "schema": self.schema,
                "kept": self.options.keep,
            },
            "published": {
                "messages": len(self.expected.confirmed),
                "publishes": self.expected.publishes,
                "by_producer": dict(sorted(self.expected.by_producer.items())),
                "follow_ups": len(self.expected.follow_ups),
                "deliveries": sum(self.expected.copies.values()),
            },
            "outcomes": {kind: tally.kinds[kind] for kind in (*FINAL_EVENTS, "retried")},
            "processed_by_type": dict(sorted(processed.items())),
            "by_type": {
                f"{message_type}@{queue}": dict(counts)
                for (message_type, queue), counts in sorted(tally.by_type.items())
            },
            "duplicates": tally.kinds["duplicate"],
            "stale": tally.kinds["stale"],
            "retried": tally.kinds["retried"],
            "retried_by_tier": dict(sorted(tally.retried_by_tier.items())),
            "retried_by_reason": dict(sorted(tally.retried_by_reason.items())),
            "dead_by_reason": dict(sorted(tally.dead_by_reason.items())),
            "suspects": tally.kinds["suspect"],
            "requeued": tally.kinds["requeued"],
            "throughput_per_s": round(self.throughput_per_s, 1),
            "age_s": self.age(),
            "network": self.network,
            "planned": self.workload.planned(),
            "checks": [c.to_json() for c in self.checks],
            "worker_exit_code": self.worker_exit_code,
            "durations_s": {
                "setup": round(self.setup_s, 2),
                "publish": round(self.publish_s, 2),
                "settle": round(self.settle_s, 2),
                "total": round(self.total_s, 2),
            },
        }

    def render(self) -> Group:
        return Group(self._outcomes_table(), self._run_table(), self._checks_table())

    def _outcomes_table(self) -> Table:
        table = Table(
            title="Outcomes by message type (from the outcome events)",
            title_justify="left",
            box=box.SIMPLE_HEAD,
        )
        table.add_column("type ▶ queue")
        for column in OUTCOME_COLUMNS:
            table.add_column(column, justify="right")
        totals: Counter[str] = Counter()
        rows = sorted(
            self.tally.by_type.items(), key=lambda r: (r[0][0], r[0][1] != domain_of(r[0][0]))
        )
        for (message_type, queue), counts in rows:
            totals.update(counts)
            fan_out = "" if queue == domain_of(message_type) else f" ▶ {queue}"
            table.add_row(message_type + fan_out, *(_cell(counts[k]) for k in OUTCOME_KINDS))
        table.add_section()
        table.add_row("[bold]all[/]", *(f"[bold]{totals[k]:,}[/]" for k in OUTCOME_KINDS))
        return table

    def _run_table(self) -> Table:
        tally, expected = self.tally, self.expected
        table = Table(title="The run", title_justify="left", show_header=False, box=box.SIMPLE)
        table.add_column(style="bold")
        table.add_column()
        producers = ", ".join(f"{p} {n:,}" for p, n in sorted(expected.by_producer.items()))
        table.add_row(
            "published",
            f"{len(expected.confirmed):,} messages in {expected.publishes:,} confirmed publishes "
            f"({producers}); {len(expected.follow_ups):,} follow-ups from the outbox",
        )
        table.add_row(
            "retried by tier",
            _reasons(tally.retried_by_tier) + f"  (why: {_reasons(tally.retried_by_reason)})",
        )
        table.add_row("dead-lettered", _reasons(tally.dead_by_reason))
        table.add_row(
            "suspects", f"{tally.kinds['suspect']:,} (requeued {tally.kinds['requeued']:,})"
        )
        age = self.age()
        table.add_row(
            "throughput",
            f"{self.throughput_per_s:,.0f} deliveries/s with {self.options.processes} processes × "
            f"{self.options.threads} threads",
        )
        table.add_row(
            "message age",
            f"p50 {_seconds(age['p50'])}, p99 {_seconds(age['p99'])}, "
            f"max {_seconds(age['max'])} (created ▶ final outcome)",
        )
        net = self.network
        table.add_row(
            "network element",
            f"{net.get('calls', 0):,} calls, {net.get('failed', 0):,} answered 503 "
            f"(failure rate {self.options.failure_rate:g}; {self.options.network_attempts} tries "
            "per call in process, then a retry tier)",
        )
        table.add_row(
            "durations",
            f"set-up {self.setup_s:.1f} s, publish {self.publish_s:.1f} s, settle "
            f"{self.settle_s:.1f} s, total {self.total_s:.1f} s",
        )
        return table

    def _checks_table(self) -> Table:
        table = Table(
            title="Checked against PostgreSQL and the dead-letter queues",
            title_justify="left",
            box=box.SIMPLE_HEAD,
        )
        for column in ("check", "events say", "database / broker say", ""):
            table.add_column(column)
        for check in self.checks:
            mark = "[green]✓[/]" if check.ok else "[bold red]✗[/]"
            actual = check.actual + (
                f"\n[red]{check.detail}[/]" if check.detail and not check.ok else ""
            )
            table.add_row(check.name, check.events, actual, mark)
        return table


def _cell(value: int) -> str:
    return f"{value:,}" if value else "[dim]·[/]"


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _seconds(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f} s"


# ── the run ────────────────────────────────────────────────────────────────────────────────────


def wait_for_consumers(url: str, count: int, fleet: DemoFleet, timeout_s: float) -> None:
    """Until every domain queue has ``count`` consumers (the workers are up)."""
    deadline = time.monotonic() + timeout_s
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        while True:
            _supervise(fleet)
            consumers = {
                q: channel.queue_declare(q, passive=True).method.consumer_count for q in DOMAINS
            }
            if all(n >= count for n in consumers.values()):
                return
            if time.monotonic() > deadline:
                raise DemoError(
                    f"the workers did not start consuming within {timeout_s:g} s ({consumers}); "
                    f"see {fleet.log_dir}/worker.log"
                )
            time.sleep(0.2)
    finally:
        connection.close()


def _supervise(fleet: DemoFleet) -> None:
    for child in fleet.children:
        code = child.poll()
        if code is not None:
            raise DemoError(
                f"`fleet {fleet.names.get(child.pid, '?')}` exited with code {code} during the "
                f"run; see its log in {fleet.log_dir}"
            )


def _chunks(items: list[Job], size: int) -> Iterator[list[Job]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class DemoRun:
    """One demo run: holds what it started so that ``close`` can stop and remove it all."""

    def __init__(self, options: DemoOptions, settings: Settings, console: Console) -> None:
        self.options = options
        self.settings = settings
        self.console = console
        self.sandbox = Sandbox(settings)
        self.fleet = DemoFleet({}, self.sandbox.log_dir)
        self.publishers: dict[str, Publisher] = {}
        self.sealed: dict[str, SealedMessage] = {}
        self.tail = EventLog(self.sandbox.events_file, keep_events=False)
        self.tally = Tally()
        self.expected = Expected()
        self.keys: KeyRegistry | None = None
        self.engine: Engine | None = None
        self.seed = options.seed if options.seed is not None else secrets.randbelow(2**31)

    def say(self, message: str) -> None:
        self.console.print(f"[dim]▸[/] {message}", highlight=False)

    # -- steps ---------------------------------------------------------------------------------

    def run(self) -> DemoReport:
        began = time.monotonic()
        options, sandbox = self.options, self.sandbox
        workload = build_workload(options.messages, self.seed)
        self.say(f"workload: {workload.messages:,} messages (--seed {self.seed} builds it again)")

        sandbox.create_vhost()
        self.say(f"vhost [bold]{sandbox.vhost}[/] (guest may use it)")
        self.engine = sandbox.migrate()
        self.say(f"schema [bold]{sandbox.schema}[/] migrated to head")
        self.keys = sandbox.write_keys()
        self.say(f"keys of {len(PRODUCER_TYPES)} producers in {sandbox.keys_file} (0600)")
        tiers = options.retry_tiers_s
        apply(sandbox.url, TopologyConfig(retry_tiers_s=tiers))
        self.say(f"topology applied; retry tiers {', '.join(f'{s} s' for s in tiers)}")

        self.fleet.env.update(sandbox.fleet_env(options))
        network_url = self.fleet.start_simulator(failure_rate=options.failure_rate)
        self.say(
            f"network element simulator on {network_url}, failure rate {options.failure_rate:g}"
        )
        worker = self.fleet.start_workers(
            processes=options.processes, threads=options.threads, outbox_relay=True
        )
        wait_for_consumers(sandbox.url, options.processes, self.fleet, READY_TIMEOUT_S)
        self.say(
            f"fleet worker: {options.processes} processes × {options.threads} threads, "
            "suspect lane, outbox relay"
        )
        setup_s = time.monotonic() - began

        started_at = time.time()
        publish_s, settle_s = self._publish_and_settle(workload)

        worker_exit_code = self.fleet.stop(worker, STOP_TIMEOUT_S)
        self.say(f"fleet stopped (SIGTERM), exit code {worker_exit_code}")
        network = _network_stats(network_url)
        self.fleet.stop_all(STOP_TIMEOUT_S)
        for event in self.tail.refresh():
            self.tally.add(event)  # anything written while stopping

        assert self.engine is not None
        dead_letters = drain_dead_letters(sandbox.url)
        ledger = check_ledger(
            self.engine, self.expected.confirmed, dead_letters, published=self.expected.publishes
        )
        checks = reconcile(self.engine, self.tally, self.expected, dead_letters, ledger, workload)
        checks.append(
            Check(
                "fleet worker stopped on SIGTERM",
                "–",
                f"exit code {worker_exit_code}",
                worker_exit_code == 0,
            )
        )
        report = DemoReport(
            options=options,
            vhost=sandbox.vhost,
            schema=sandbox.schema,
            workdir=sandbox.workdir,
            workload=workload,
            tally=self.tally,
            expected=self.expected,
            checks=checks,
            network=network,
            worker_exit_code=worker_exit_code,
            setup_s=setup_s,
            publish_s=publish_s,
            settle_s=settle_s,
            total_s=time.monotonic() - began,
            started_at=started_at,
            seed=self.seed,
        )
        return report

    def _publish_and_settle(self, workload: Workload) -> tuple[float, float]:
        """Publish the stream, then wait (deferred jobs go out when due); seconds of each."""
        began = time.monotonic()
        deadline = began + self.options.timeout_s
        tail = self.tail
        pending = list(workload.deferred)
        progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description:<9}"),
            BarColumn(bar_width=16),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            console=self.console,
        )
        with progress:
            published = progress.add_task("published", total=workload.publishes, detail="")
            settled = progress.add_task("settled", total=None, detail="")
            for chunk in _chunks(workload.stream, CHUNK):
                self._publish(chunk)
                progress.advance(published, len(chunk))
                pending = self._poll(tail, pending, progress, settled, published)
            publish_s = time.monotonic() - began
            while True:
                pending = self._poll(tail, pending, progress, settled, published)
                if not pending and not self.expected.outstanding(self.tally):
                    break
                if time.monotonic() > deadline:
                    outstanding = self.expected.outstanding(self.tally)
                    done, owed = self.expected.progress(self.tally)
                    raise DemoError(
                        f"not settled within {self.options.timeout_s:g} s: {owed - done:,} of "
                        f"{owed:,} deliveries outstanding (e.g. {outstanding[:3]}), "
                        f"{len(pending)} deferred jobs not triggered; worker logs in "
                        f"{self.fleet.log_dir} (raise --timeout-s on a slow machine)"
                    )
                time.sleep(POLL_S)
        return publish_s, time.monotonic() - began

    def _poll(
        self,
        tail: EventLog,
        pending: list[Deferred],
        progress: Progress,
        settled: TaskID,
        published: TaskID,
    ) -> list[Deferred]:
        _supervise(self.fleet)
        for event in tail.refresh():
            self.tally.add(event)
        assert self.engine is not None
        self.expected.refresh_follow_ups(self.engine)
        due = [d for d in pending if self._triggered(d)]
        if due:
            self._publish([d.job for d in due])
            progress.update(published, advance=len(due))
        done, owed = self.expected.progress(self.tally)
        kinds = self.tally.kinds
        progress.update(
            settled,
            completed=done,
            total=owed,
            detail=f"ok {kinds['ok']:,} dup {kinds['duplicate']:,} stale {kinds['stale']:,} "
            f"retried {kinds['retried']:,} dead {kinds['dead']:,}",
        )
        return [d for d in pending if d not in due]

    def _triggered(self, deferred: Deferred) -> bool:
        after = str(deferred.after)
        keys = self.expected.keys_of(after)
        if not keys:
            return False  # its trigger is not even published yet
        settled = all(self.tally.settled[k] >= self.expected.copies[k] for k in keys)
        if deferred.when == "retried":
            return settled or after in self.tally.retried_ids
        return settled

    def _publish(self, jobs: Iterable[Job]) -> None:
        assert self.keys is not None
        by_producer: dict[str, list[Job]] = defaultdict(list)
        for job in jobs:
            by_producer[job.producer].append(job)
        for producer, group in by_producer.items():
            envelopes = []
            for job in group:
                message_id = str(job.message_id)
                if message_id not in self.sealed:
                    self.sealed[message_id] = seal_job(job, self.keys)
                envelopes.append(self.sealed[message_id])
            results = self._publisher(producer).publish_batch(envelopes)
            self._record(producer, group, results)

    def _record(self, producer: str, jobs: list[Job], results: list[PublishResult]) -> None:
        for job, result in zip(jobs, results, strict=True):
            if not result.ok:
                raise DemoError(
                    f"publishing {job.message_type} as {producer} was not confirmed: "
                    f"{result.status} ({result.detail})"
                )
            self.expected.add(str(job.message_id), job.message_type, producer)

    def _publisher(self, producer: str) -> Publisher:
        if producer not in self.publishers:
            assert self.keys is not None
            self.publishers[producer] = Publisher(
                self.sandbox.url, self.keys, producer, window=self.settings.publish_window
            )
        return self.publishers[producer]

    # -- cleaning up ---------------------------------------------------------------------------

    def close(self, *, keep_files: bool = False) -> list[str]:
        """Stop everything started; remove the sandbox unless ``options.keep`` (the directory of
        logs and events also stays with ``keep_files``). Returns what could not be removed."""
        for publisher in self.publishers.values():
            with contextlib.suppress(Exception):
                publisher.close()
        self.fleet.stop_all(STOP_TIMEOUT_S)
        if self.options.keep:
            if self.engine is not None:
                self.engine.dispose()
            return []
        return self.sandbox.remove(keep_files=keep_files)

    def how_to_inspect(self) -> list[str]:
        sandbox = self.sandbox
        return [
            f"kept vhost {sandbox.vhost}: rabbitmqctl list_queues -p {sandbox.vhost} name messages "
            f"(remove: rabbitmqctl delete_vhost {sandbox.vhost})",
            f"kept schema {sandbox.schema} in the database: psql -h 127.0.0.1 -U postgres test, "
            f"then SET search_path = {sandbox.schema}; (remove: DROP SCHEMA {sandbox.schema} "
            "CASCADE)",
            f"kept files in {sandbox.workdir}: keys.json, events.jsonl, logs/",
            f"fleet commands against it: FLEET_AMQP_URL='{_redacted(sandbox.url)}' "
            f"FLEET_DB_SCHEMA={sandbox.schema} FLEET_KEYS_FILE={sandbox.keys_file} fleet …",
        ]


def _redacted(url: str) -> str:
    """The URL with its password masked, unless the user is RabbitMQ's local ``guest``."""
    credentials = pika.URLParameters(url).credentials
    password = str(getattr(credentials, "password", ""))
    if getattr(credentials, "username", "guest") == "guest" or not password:
        return url
    return url.replace(f":{quote(password, safe='')}@", ":***@", 1)


def _network_stats(url: str) -> dict[str, Any]:
    try:
        return dict(httpx.get(f"{url}/stats", timeout=5).json())
    except (httpx.HTTPError, ValueError):
        return {}
