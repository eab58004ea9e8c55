"""The fleet against its baselines, in one run on one machine: throughput ratios, message age.

    python -m bench.ratios [--rounds 3] [--processes 2] [--threads 8] [--charges 10000]
                           [--journeys 1000] [--park 50000] [--quick] [--out FILE]

Every phase drains a pre-filled quorum queue (``billing`` of one scratch vhost with the fleet's
real topology) of sealed ``billing.charge.post`` envelopes — the same envelopes, the same queue,
the same ``--processes`` × ``--threads`` — and measures completions per second from the first
to the last (startup not counted):

- (b) ``noop``: bare Dramatiq, an actor that only acks (bench/baseline.py);
- (a) ``straightforward``: a Dramatiq actor doing AES-GCM decrypt + pydantic validation + one
  SQLAlchemy ORM transaction per message (an idempotency row + a ledger row; bench/baseline.py);
- (c) ``charges``: ``fleet worker``, charges to ``--accounts`` accounts opened beforehand;
- (d) ``journeys``: ``fleet worker`` on bench/fleet.py's customer journeys (profiles fanned out,
  accounts, charges, notes, activations with a network call and two outbox follow-ups).

Rounds interleave the four in a rotating order; the medians are reported, and the ratios are the
medians of each round's ratios (the phases of one round ran under the same conditions). Then:

- (e) ``steady``: charges published at ``--steady-share`` × the median charge-only rate for
  ``--steady-seconds``; message age (now − created-at) at the final outcome, p50 / p99;
- ``park`` (``--park N``): worker memory before and after N charges for unknown accounts are
  parked on a one-hour retry tier by the workers themselves.

The harness stays cheap: it polls at 2 Hz, reading the baselines' per-process completion files
and the fleet's events file through the incremental ``workers.events.EventLog``; its own CPU,
each worker group's CPU per message and how busy the machine was are reported beside the
rates, and a CPU canary (a fixed Python loop) times the machine. Prints a table and writes JSON
(bench/README.md explains both). Needs RabbitMQ (and rabbitmqctl as root) and PostgreSQL.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from bench import fleet as journeys
from bench.baseline import Base
from bench.measure import (
    CANARY_LOOPS,
    MachineCpu,
    cpu_canary,
    group_cpu_s,
    group_rss_mib,
    percentile,
)
from bench.publish import machine
from queues.contracts import Contract
from queues.topology import retry_queue
from tests.support import janitor
from tests.support.broker_state import queue_depth
from tests.support.db import DATABASE_URL, drop_schema, new_schema_name, require_database
from tests.support.factories import sample
from tests.support.fleet import FleetUnderTest, fleet_under_test
from workers.events import FINAL_KINDS, EventLog
from workers.ledger import check_ledger, drain_dead_letters

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "ratios.json"
QUEUE = "billing"
POLL_S = 0.5
PHASES = ("noop", "straightforward", "charges", "journeys")
LABELS = {
    "noop": "(b) bare Dramatiq no-op",
    "straightforward": "(a) straightforward pipeline",
    "charges": "(c) fleet charge-only drain",
    "journeys": "(d) fleet journey-mix drain",
}
RETRY_TIERS_S = (1, 2)  # the drains' fleet: a charge that overtakes its account returns soon
PARK_TIER_S = 3600  # the park phase's fleet: parked charges stay parked
MEMORY_GROWTH_LIMIT = 0.10  # "flat": the worker group grows by at most this share


@dataclass
class Progress:
    count: int = 0
    first: float | None = None
    last: float | None = None


@dataclass
class Measured:
    """One drain: completions first to last, and what it cost."""

    phase: str
    round: int
    messages: int
    seconds: float
    per_s: float
    worker_cpu_us_per_message: float | None
    machine_busy_cores: float | None
    harness_cpu_s: float
    harness_cpu_share: float
    wall_s: float
    extra: dict[str, Any] = field(default_factory=dict)


# -- counting completions -----------------------------------------------------------------------


def baseline_progress(directory: Path) -> Progress:
    """The baseline worker processes' completion files (bench/baseline.py), summed."""
    seen = Progress()
    for path in directory.glob("*.json"):
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # being replaced right now: read again at the next poll
        if not state["count"]:
            continue
        seen.count += state["count"]
        seen.first = min(seen.first or state["first"], state["first"])
        seen.last = max(seen.last or state["last"], state["last"])
    return seen


class FleetTally:
    """One phase's final outcomes, from the fleet's events file (read incrementally)."""

    def __init__(self, log: EventLog) -> None:
        self.log = log
        log.refresh()  # whatever earlier phases wrote is not this phase's
        self.settled: set[tuple[str, str]] = set()
        self.kinds: Counter[str] = Counter()
        self.ages: list[float] = []
        self.progress = Progress()

    def poll(self) -> Progress:
        for event in self.log.refresh():
            kind = event["event"]
            self.kinds[kind] += 1
            if kind not in FINAL_KINDS:
                continue
            key = (str(event.get("message_id")), str(event.get("queue", "")).split(".")[0])
            if key in self.settled:
                continue  # a redelivery of a delivery already counted
            self.settled.add(key)
            at = float(event["at"])
            self.progress.count += 1
            self.progress.first = min(self.progress.first or at, at)
            self.progress.last = max(self.progress.last or at, at)
            if isinstance(event.get("age_s"), int | float):
                self.ages.append(float(event["age_s"]))
        return self.progress

    def retried(self) -> Progress:
        self.poll()
        return Progress(count=self.kinds["retried"])


def watch(
    phase: str,
    round_no: int,
    pgid: int,
    progress: Callable[[], Progress],
    expected: int,
    timeout_s: float,
    alive: Callable[[], bool],
) -> Measured:
    """Poll until ``expected`` completions; CPU is read at the first poll that sees one and at
    the end, so the workers' start-up is (mostly) not charged to the messages."""
    started, harness_started = time.monotonic(), time.process_time()
    opening: tuple[int, float, MachineCpu] | None = None
    while True:
        time.sleep(POLL_S)
        seen = progress()
        if seen.count and opening is None:
            opening = (seen.count, group_cpu_s(pgid), MachineCpu.now())
        if seen.count >= expected:
            break
        if not alive():
            raise RuntimeError(f"{phase}: the workers exited with {seen.count}/{expected} done")
        if time.monotonic() - started > timeout_s:
            raise RuntimeError(f"{phase}: {seen.count}/{expected} done after {timeout_s} s")
    cpu, machine_cpu = group_cpu_s(pgid), MachineCpu.now()
    harness_s = time.process_time() - harness_started
    wall_s = time.monotonic() - started
    span = (seen.last or 0) - (seen.first or 0)
    per_message = busy = None
    if opening is not None and seen.count > opening[0]:
        per_message = (cpu - opening[1]) / (seen.count - opening[0]) * 1e6
        busy = machine_cpu.busy_cores_since(opening[2])
    return Measured(
        phase=phase,
        round=round_no,
        messages=seen.count,
        seconds=round(span, 3),
        per_s=round(seen.count / span, 1) if span > 0 else 0.0,
        worker_cpu_us_per_message=round(per_message) if per_message is not None else None,
        machine_busy_cores=round(busy, 2) if busy is not None else None,
        harness_cpu_s=round(harness_s, 3),
        harness_cpu_share=round(harness_s / wall_s, 4),
        wall_s=round(wall_s, 1),
    )


def tail(path: Path, lines: int = 30) -> str:
    """The end of a log in the scratch directory, which is gone once the run fails."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# -- the bench ----------------------------------------------------------------------------------


@contextmanager
def baseline_schema() -> Iterator[str]:
    """A scratch schema with the straightforward pipeline's two tables; dropped afterwards."""
    require_database()
    schema = new_schema_name("bench")
    engine = create_engine(DATABASE_URL)
    try:
        with engine.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
            connection.execute(text(f'SET search_path TO "{schema}"'))
            Base.metadata.create_all(connection)
        yield schema
    finally:
        engine.dispose()
        drop_schema(schema)


class Bench:
    def __init__(
        self, fleet: FleetUnderTest, options: argparse.Namespace, scratch: Path, schema: str
    ) -> None:
        self.fleet = fleet
        self.options = options
        self.scratch = scratch
        self.schema = schema
        self.log = EventLog(fleet.events_file, keep_events=False)
        self.accounts: list[uuid.UUID] = []
        self.straightforward_messages = 0
        self.simulator_pgid = 0

    # -- workloads --

    def charges(self, count: int) -> list[Contract]:
        return [
            sample("billing.charge.post", account_id=random.choice(self.accounts))
            for _ in range(count)
        ]

    def start_simulator(self) -> None:
        """The network element as a process of its own, so its CPU is not the harness's."""
        self.fleet.local.start_simulator()
        self.simulator_pgid = self.fleet.local.children[-1].pid

    def open_accounts(self) -> None:
        opened = [sample("billing.account.open") for _ in range(self.options.accounts)]
        self.accounts = [account.account_id for account in opened]  # type: ignore[attr-defined]
        self.fleet.publish(opened, "order-management")
        self.fleet_drain("accounts", 0, len(opened))

    # -- phases --

    def run(self, phase: str, round_no: int) -> Measured:
        print(f"round {round_no}: {LABELS[phase]} …", file=sys.stderr, flush=True)
        if phase in ("noop", "straightforward"):
            return self.baseline(phase, round_no)
        if phase == "charges":
            self.fleet.publish(self.charges(self.options.charges))
            return self.fleet_drain(phase, round_no, self.options.charges)
        jobs = journeys.workload(self.options.journeys)
        journeys.publish(self.fleet, jobs)
        # Each activation's fee and CRM note come back through the outbox: 2 more deliveries.
        expected = journeys.deliveries(jobs) + 2 * self.options.journeys
        simulator_before = group_cpu_s(self.simulator_pgid)
        measured = self.fleet_drain(phase, round_no, expected)
        measured.extra["published"] = len(jobs)
        measured.extra["simulator_cpu_s"] = round(
            group_cpu_s(self.simulator_pgid) - simulator_before, 2
        )
        return measured

    def baseline(self, app: str, round_no: int) -> Measured:
        count = self.options.charges
        results = self.fleet.publisher("fleet").publish_batch(self.charges(count))
        if not all(r.ok for r in results):
            raise RuntimeError(f"{app}: {sum(not r.ok for r in results)} charges not confirmed")
        completions = self.scratch / "completions" / f"{app}-{round_no}"
        completions.mkdir(parents=True)
        log_path = self.scratch / "logs" / f"{app}-{round_no}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("FLEET_", "BENCH_"))},
            "PYTHONPATH": str(REPO),
            "BENCH_AMQP_URL": self.fleet.url,
            "BENCH_THREADS": str(self.options.threads),
            "BENCH_COMPLETIONS_DIR": str(completions),
            "BENCH_DATABASE_URL": DATABASE_URL,
            "BENCH_DB_SCHEMA": self.schema,
            "BENCH_KEYS_FILE": self.fleet.local.env["FLEET_KEYS_FILE"],
        }
        command = [sys.executable, "-m", "dramatiq", f"bench.baseline:{app}"]
        command += ["--processes", str(self.options.processes)]
        command += ["--threads", str(self.options.threads), "--queues", QUEUE]
        with log_path.open("ab") as log:
            child = subprocess.Popen(
                command,
                env=env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            measured = watch(
                app,
                round_no,
                child.pid,
                lambda: baseline_progress(completions),
                count,
                self.options.timeout_s,
                alive=lambda: child.poll() is None,
            )
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}; the end of its log:\n{tail(log_path)}") from None
        finally:
            self.fleet.local.stop(child)
        left = queue_depth(self.fleet.url, QUEUE)
        if left:
            raise RuntimeError(f"{app}: {left} messages left in {QUEUE} after the drain")
        if app == "straightforward":
            self.straightforward_messages += count
        return measured

    def fleet_drain(self, phase: str, round_no: int, expected: int) -> Measured:
        tally = FleetTally(self.log)
        options = self.options
        child = self.fleet.start_workers(processes=options.processes, threads=options.threads)
        try:
            measured = watch(
                phase,
                round_no,
                child.pid,
                tally.poll,
                expected,
                options.timeout_s,
                alive=lambda: child.poll() is None,
            )
        except RuntimeError as exc:
            log_path = self.fleet.local.log_dir / "worker.log"
            raise RuntimeError(f"{exc}; the end of its log:\n{tail(log_path)}") from None
        finally:
            self.fleet.local.stop(child)
        measured.extra["outcomes"] = dict(tally.kinds)
        return measured

    def steady(self, rate_per_s: float) -> dict[str, Any]:
        """Charges published at ``rate_per_s`` to running workers; message age at the outcome."""
        options = self.options
        child = self.fleet.start_workers(processes=options.processes, threads=options.threads)
        alive: Callable[[], bool] = lambda: child.poll() is None  # noqa: E731
        try:
            warm_up = self.charges(options.processes * options.threads * 4)
            tally = FleetTally(self.log)
            self.fleet.publish(warm_up)
            watch("warm-up", 0, child.pid, tally.poll, len(warm_up), options.timeout_s, alive)
            tally = FleetTally(self.log)
            jobs = [("fleet", c) for c in self.charges(round(rate_per_s * options.steady_seconds))]
            harness_started, cpu_started = time.process_time(), group_cpu_s(child.pid)
            machine_started = MachineCpu.now()
            achieved = journeys.publish_at_rate(self.fleet, jobs, rate_per_s, tick_s=0.02)
            publish_cpu_s = time.process_time() - harness_started
            watch("steady", 0, child.pid, tally.poll, len(jobs), options.timeout_s, alive)
            worker_cpu_s = group_cpu_s(child.pid) - cpu_started
            busy = MachineCpu.now().busy_cores_since(machine_started)
        finally:
            self.fleet.local.stop(child)
        seen = tally.progress
        span = (seen.last or 0) - (seen.first or 0)
        p50, p99 = percentile(tally.ages, 0.50), percentile(tally.ages, 0.99)
        return {
            "asked_per_s": round(rate_per_s, 1),
            "published": len(jobs),
            "publish_per_s": round(achieved, 1),
            "outcomes_per_s": round(seen.count / span, 1) if span > 0 else None,
            "age_p50_s": round(p50, 4) if p50 is not None else None,
            "age_p99_s": round(p99, 4) if p99 is not None else None,
            "age_max_s": round(max(tally.ages), 4) if tally.ages else None,
            "retried": tally.kinds["retried"],
            "worker_cpu_us_per_message": round(worker_cpu_s / max(1, seen.count) * 1e6),
            "machine_busy_cores": round(busy, 2) if busy is not None else None,
            "harness_publish_cpu_s": round(publish_cpu_s, 2),
        }

    def straightforward_rows(self) -> int:
        engine = create_engine(DATABASE_URL)
        try:
            with engine.connect() as connection:
                rows = connection.execute(
                    text(f'SELECT count(*) FROM "{self.schema}".ledger_entries')  # noqa: S608
                ).scalar_one()
                return int(rows)
        finally:
            engine.dispose()


def park(options: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """Worker memory before and after the workers park ``options.park`` charges on a retry tier."""
    with fleet_under_test(scratch, tiers=(PARK_TIER_S,)) as fleet:
        log = EventLog(fleet.events_file, keep_events=False)
        opened = [sample("billing.account.open") for _ in range(50)]
        accounts = [account.account_id for account in opened]  # type: ignore[attr-defined]
        fleet.publish(opened, "order-management")
        child = fleet.start_workers(processes=options.processes, threads=options.threads)
        try:
            alive: Callable[[], bool] = lambda: child.poll() is None  # noqa: E731
            tally = FleetTally(log)
            watch("park accounts", 0, child.pid, tally.poll, len(opened), options.timeout_s, alive)
            # The warm-up takes both paths, a commit and a retry, before the first reading.
            tally = FleetTally(log)
            warm_up = [
                sample("billing.charge.post", account_id=random.choice(accounts))
                for _ in range(2000)
            ]
            unknown = [sample("billing.charge.post") for _ in range(500)]
            fleet.publish(warm_up + unknown)
            watch("park warm-up", 0, child.pid, tally.poll, len(warm_up), options.timeout_s, alive)
            watch(
                "park warm-up", 0, child.pid, tally.retried, len(unknown), options.timeout_s, alive
            )
            time.sleep(2)
            before = peak = group_rss_mib(child.pid)
            parking_started = time.monotonic()
            for start in range(0, options.park, 5000):
                batch = [
                    sample("billing.charge.post") for _ in range(min(5000, options.park - start))
                ]
                fleet.publish(batch)
                peak = max(peak, group_rss_mib(child.pid))

            def parked_so_far() -> Progress:
                nonlocal peak
                peak = max(peak, group_rss_mib(child.pid))
                return tally.retried()

            parked = len(unknown) + options.park
            watch("park", 0, child.pid, parked_so_far, parked, options.timeout_s * 4, alive)
            parking_s = time.monotonic() - parking_started
            time.sleep(2)
            after = group_rss_mib(child.pid)
            depth = queue_depth(fleet.url, retry_queue(QUEUE, PARK_TIER_S))
        finally:
            fleet.local.stop(child)
    return {
        "parked": options.park,
        "on_tier": depth,
        "tier": retry_queue(QUEUE, PARK_TIER_S),
        "parked_per_s": round(options.park / parking_s, 1),
        "worker_rss_before_mib": round(before, 1),
        "worker_rss_after_mib": round(after, 1),
        "worker_rss_peak_mib": round(max(peak, after), 1),
        "growth": round(after / before - 1, 4),
    }


# -- the run ------------------------------------------------------------------------------------


def code_version() -> str:
    """The commit measured, ``-dirty`` when the work tree had changes (others' work included)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return f"{commit or 'unknown'}{'-dirty' if changes else ''}"


def order(round_no: int) -> list[str]:
    """The phases of round ``round_no`` (1-based): rotated, so none always runs first."""
    shift = (round_no - 1) % len(PHASES)
    return [*PHASES[shift:], *PHASES[:shift]]


def median_ratio(rounds: list[dict[str, Measured]], top: str, bottom: str) -> float | None:
    ratios = [r[top].per_s / r[bottom].per_s for r in rounds if r[bottom].per_s]
    return round(statistics.median(ratios), 2) if ratios else None


def run(options: argparse.Namespace) -> dict[str, Any]:
    canary_before = cpu_canary()
    harness_started, wall_started = time.process_time(), time.monotonic()
    rounds: list[dict[str, Measured]] = []
    with tempfile.TemporaryDirectory(prefix="bench-ratios-") as scratch_dir:
        scratch = Path(scratch_dir)
        try:
            with (
                baseline_schema() as schema,
                fleet_under_test(scratch / "fleet", tiers=RETRY_TIERS_S) as fleet,
            ):
                bench = Bench(fleet, options, scratch, schema)
                bench.start_simulator()
                bench.open_accounts()
                envelope_bytes = len(fleet.publisher("fleet").seal(bench.charges(1)[0]).body)
                for round_no in range(1, options.rounds + 1):
                    rounds.append({p: bench.run(p, round_no) for p in order(round_no)})
                charge_rate = statistics.median(r["charges"].per_s for r in rounds)
                print("steady rate: message age …", file=sys.stderr, flush=True)
                steady = bench.steady(options.steady_share * charge_rate)
                ledger = check_ledger(fleet.engine, fleet.confirmed, drain_dead_letters(fleet.url))
                rows = bench.straightforward_rows()
                checks = {
                    "fleet_ledger_ok": ledger.ok,
                    "fleet_lost": len(ledger.lost),
                    "fleet_doubled": len(ledger.doubled),
                    "straightforward_rows": rows,
                    "straightforward_rows_ok": rows == bench.straightforward_messages,
                }
            parked = None
            if options.park:
                print(f"park {options.park:,} on a retry tier …", file=sys.stderr, flush=True)
                parked = park(options, scratch / "park")
        finally:
            janitor.finish()  # the scratch vhosts and schemas are gone before we return
    harness_cpu_s = time.process_time() - harness_started
    wall_s = time.monotonic() - wall_started
    medians = {p: statistics.median(r[p].per_s for r in rounds) for p in PHASES}
    ratios = {
        "charges/straightforward": median_ratio(rounds, "charges", "straightforward"),
        "charges/noop": median_ratio(rounds, "charges", "noop"),
        "journeys/straightforward": median_ratio(rounds, "journeys", "straightforward"),
    }
    goals = [
        goal("charge-only ≥ 3 × straightforward", ratios["charges/straightforward"], 3.0, "×"),
        goal("charge-only ≥ 0.5 × bare Dramatiq", ratios["charges/noop"], 0.5, "×"),
        goal("journey mix ≥ 1.5 × straightforward", ratios["journeys/straightforward"], 1.5, "×"),
        goal("message age p50 ≤ 50 ms", steady["age_p50_s"], 0.050, "s", at_most=True),
        goal("message age p99 ≤ 250 ms", steady["age_p99_s"], 0.250, "s", at_most=True),
    ]
    if parked is not None:
        limit = f"≤ +{MEMORY_GROWTH_LIMIT:.0%}"
        goals.append(
            goal(f"worker memory flat ({limit})", parked["growth"], MEMORY_GROWTH_LIMIT, "", True)
        )
    return {
        "benchmark": "ratios",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "code": code_version(),
        "cpu_canary_ms": {"before": canary_before, "after": cpu_canary(), "loops": CANARY_LOOPS},
        "config": {
            "processes": options.processes,
            "threads": options.threads,
            "rounds": options.rounds,
            "queue": f"{QUEUE} (quorum)",
            "envelope_bytes": envelope_bytes,
            "charges": options.charges,
            "accounts": options.accounts,
            "journeys": options.journeys,
            "retry_tiers_s": list(RETRY_TIERS_S),
            "quick": options.quick,
        },
        "medians_per_s": medians,
        "ratios": ratios,
        "goals": goals,
        "steady": steady,
        "park": parked,
        "checks": checks,
        "harness": {
            "cpu_s": round(harness_cpu_s, 1),
            "wall_s": round(wall_s, 1),
            "share_of_one_core": round(harness_cpu_s / wall_s, 4),
        },
        "runs": [vars(m) for r in rounds for m in r.values()],
    }


def goal(
    name: str, value: float | None, target: float, unit: str, at_most: bool = False
) -> dict[str, Any]:
    met = value is not None and (value <= target if at_most else value >= target)
    return {"goal": name, "value": value, "target": target, "unit": unit, "met": met}


def render(result: dict[str, Any]) -> str:
    config, runs = result["config"], result["runs"]
    lines = [
        f"ratios: {config['processes']} processes × {config['threads']} threads, "
        f"{config['queue']}, {config['envelope_bytes']}-byte envelopes, "
        f"{config['rounds']} round(s) (medians)",
        f"{'':31}{'msg/s':>8}  {'per round':<24}{'worker µs/msg':>14}{'busy cores':>11}"
        f"{'harness':>9}",
    ]
    for phase in PHASES:
        mine = [r for r in runs if r["phase"] == phase]
        per_round = " ".join(f"{r['per_s']:,.0f}" for r in mine)
        cpu = [r["worker_cpu_us_per_message"] for r in mine if r["worker_cpu_us_per_message"]]
        busy = [r["machine_busy_cores"] for r in mine if r["machine_busy_cores"] is not None]
        harness = statistics.median(r["harness_cpu_share"] for r in mine)
        lines.append(
            f"{LABELS[phase]:<31}{result['medians_per_s'][phase]:>8,.0f}  {per_round:<24}"
            f"{statistics.median(cpu) if cpu else float('nan'):>14,.0f}"
            f"{statistics.median(busy) if busy else float('nan'):>11.2f}{harness:>9.1%}"
        )
    steady = result["steady"]
    lines.append(
        f"(e) message age at {steady['publish_per_s']:,.0f} msg/s "
        f"(asked {steady['asked_per_s']:,.0f}): p50 {_ms(steady['age_p50_s'])}, "
        f"p99 {_ms(steady['age_p99_s'])}, max {_ms(steady['age_max_s'])} "
        f"({steady['worker_cpu_us_per_message']:,} worker µs/msg, "
        f"{steady['machine_busy_cores']} busy cores)"
    )
    parked = result["park"]
    if parked is not None:
        lines.append(
            f"park: {parked['parked']:,} charges parked by the workers on {parked['tier']} "
            f"at {parked['parked_per_s']:,.0f}/s ({parked['on_tier']:,} there with the "
            f"warm-up's): worker RSS {parked['worker_rss_before_mib']} → "
            f"{parked['worker_rss_after_mib']} MiB (peak {parked['worker_rss_peak_mib']})"
        )
    lines.append("goals:")
    for g in result["goals"]:
        lines.append(f"  {g['goal']:<40}{_value(g):>10}   {'met' if g['met'] else 'UNMET'}")
    canary, harness, checks = result["cpu_canary_ms"], result["harness"], result["checks"]
    lines.append(
        f"CPU canary {canary['before']} / {canary['after']} ms (before / after); "
        f"harness CPU {harness['cpu_s']} s in {harness['wall_s']} s "
        f"({harness['share_of_one_core']:.1%} of one core); "
        f"load average {result['machine']['load_average_1m']}; code {result['code']}"
    )
    lines.append(
        f"checks: fleet ledger ok {checks['fleet_ledger_ok']} (lost {checks['fleet_lost']}, "
        f"doubled {checks['fleet_doubled']}); straightforward rows "
        f"{checks['straightforward_rows']:,} ok {checks['straightforward_rows_ok']}"
    )
    return "\n".join(lines)


def _value(g: dict[str, Any]) -> str:
    if g["value"] is None:
        return "n/a"
    if g["unit"] == "s":
        return _ms(g["value"])
    if g["unit"] == "×":
        return f"{g['value']:.2f} ×"
    return f"{g['value']:+.1%}"


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000:,.0f} ms"


QUICK = {"rounds": 1, "charges": 2000, "accounts": 100, "journeys": 200, "steady_seconds": 10}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians)")
    parser.add_argument("--processes", type=int, default=2, help="worker processes, every phase")
    parser.add_argument("--threads", type=int, default=8, help="threads per process, every phase")
    parser.add_argument("--charges", type=int, default=10_000, help="pre-filled charges per drain")
    parser.add_argument("--accounts", type=int, default=500, help="accounts the charges go to")
    parser.add_argument("--journeys", type=int, default=1000, help="journeys per journey drain")
    parser.add_argument("--steady-share", type=float, default=0.5, help="(e) rate / charge rate")
    parser.add_argument("--steady-seconds", type=float, default=30, help="(e) publishing time")
    parser.add_argument(
        "--park",
        type=int,
        default=None,
        help="charges to park on a retry tier, e.g. 50000 (default 0 = skip; --quick: 1000)",
    )
    parser.add_argument("--timeout-s", type=float, default=300, help="give up a drain after")
    parser.add_argument("--quick", action="store_true", help="small counts, one round (smoke)")
    parser.add_argument("--out", type=Path, default=None, help="JSON results file")
    options = parser.parse_args(argv)
    if options.quick:
        vars(options).update(QUICK)
    if options.park is None:
        options.park = 1000 if options.quick else 0
    if options.out is None:
        options.out = RESULTS.with_name("ratios-quick.json") if options.quick else RESULTS
    result = run(options)
    print(render(result))
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {options.out}")
    checks = result["checks"]
    return 0 if checks["fleet_ledger_ok"] and checks["straightforward_rows_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
