"""End to end: the fleet's throughput and message age with N worker processes on this machine.

    python -m bench.fleet [--processes 2] [--threads 4] [--journeys 1000] [--rate-share 0.7]
                          [--rate-seconds 60] [--out FILE]

A real fleet (tests/support/fleet.py: scratch vhost with the real topology and short retry
tiers, migrated schema, per-producer keys, the network element simulator) and real
``fleet worker`` processes (workers/local.py) with their suspect lane and outbox relay. The
workload is customer journeys, each: a CRM profile (fanned out to CRM and billing), a billing
account, two charges, a CRM note and a service activation (a network call; an activation fee
and a CRM note follow through the outbox) — 6 published messages, 9 deliveries.

1. **Drain**: the journeys are published before the workers start; throughput is final
   outcomes per second from the first to the last (startup not counted).
2. **Steady rate**: journeys are published at ``--rate-share`` × the drain throughput for
   ``--rate-seconds``; message age at the final outcome (now − created-at) p50 / p99 is read
   from the workers' outcome events.

Then the ledger (workers/ledger.py) proves every delivery was processed once or dead-lettered.
Prints a summary and writes JSON (bench/README.md). Needs RabbitMQ and PostgreSQL, like the tests.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from bench.publish import machine
from queues.contracts import Contract
from queues.topology import queues_of
from tests.support.factories import sample
from tests.support.fleet import FleetUnderTest, fleet_under_test
from workers.events import FINAL_KINDS

RESULTS = Path(__file__).parent / "results" / "fleet.json"
Job = tuple[str, Contract]  # (producer, payload)


def journey() -> list[list[Job]]:
    """One customer's messages, stage by stage (a later stage may need an earlier one)."""
    customer, account, service = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    activate = sample(
        "provisioning.service.activate",
        service_id=service,
        customer_id=customer,
        account_id=account,
    )
    return [
        [("self-care", sample("crm.customer.upsert", customer_id=customer, entity_version=1))],
        [
            (
                "order-management",
                sample("billing.account.open", account_id=account, customer_id=customer),
            )
        ],
        [
            ("fleet", sample("billing.charge.post", account_id=account)),
            ("fleet", sample("billing.charge.post", account_id=account)),
            ("self-care", sample("crm.interaction.log", customer_id=customer)),
            ("order-management", activate),
        ],
    ]


def workload(journeys: int, group: int = 50) -> list[Job]:
    """Journeys in groups: each group's first stages before its later ones, shuffled within."""
    jobs: list[Job] = []
    for start in range(0, journeys, group):
        batch = [journey() for _ in range(min(group, journeys - start))]
        for stage in range(3):
            staged = [job for j in batch for job in j[stage]]
            random.shuffle(staged)
            jobs += staged
    return jobs


def deliveries(jobs: list[Job]) -> int:
    return sum(len(queues_of(payload.message_type)) for _producer, payload in jobs)


def publish(fleet: FleetUnderTest, jobs: list[Job]) -> None:
    """Publish in order, one confirmed batch per run of the same producer."""
    for producer, run in itertools.groupby(jobs, key=lambda job: job[0]):
        fleet.publish([payload for _producer, payload in run], producer)


def publish_at_rate(
    fleet: FleetUnderTest, jobs: list[Job], per_s: float, tick_s: float = 0.1
) -> float:
    """Publish ``jobs`` evenly at ``per_s`` messages per second, a batch every ``tick_s``;
    return the achieved rate."""
    started = time.monotonic()
    sent = ticks = 0
    while sent < len(jobs):
        ticks += 1
        due = min(len(jobs), round(per_s * ticks * tick_s))  # on schedule, not rounded per tick
        publish(fleet, jobs[sent:due])
        sent = due
        pause = started + ticks * tick_s - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    return len(jobs) / (time.monotonic() - started)


def percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def outcome_summary(events: list[dict[str, Any]]) -> dict[str, Any]:
    final = [e for e in events if e["event"] in FINAL_KINDS]
    ages = [float(e["age_s"]) for e in final if e.get("age_s") is not None]
    span = max(e["at"] for e in final) - min(e["at"] for e in final) if len(final) > 1 else 0
    return {
        "final_outcomes": len(final),
        "seconds": round(span, 2),
        "outcomes_per_s": round(len(final) / span, 1) if span else None,
        "outcomes": dict(Counter(e["event"] for e in final)),
        "retried": sum(e["event"] == "retried" for e in events),
        "age_p50_s": round(p50, 3) if (p50 := percentile(ages, 0.50)) is not None else None,
        "age_p99_s": round(p99, 3) if (p99 := percentile(ages, 0.99)) is not None else None,
        "age_max_s": round(max(ages), 3) if ages else None,
    }


def _group_rss_mib(pgid: int) -> float:
    total_kib = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            line = stat.read_text()
            if int(line[line.rindex(")") + 2 :].split()[2]) != pgid:
                continue
            for row in (stat.parent / "status").read_text().splitlines():
                if row.startswith("VmRSS:"):
                    total_kib += int(row.split()[1])
        except (OSError, ValueError):
            continue
    return total_kib / 1024


class RssSampler(threading.Thread):
    """The worker process group's resident memory, sampled every second (peak kept)."""

    def __init__(self, pgid: int) -> None:
        super().__init__(daemon=True)
        self.pgid = pgid
        self.peak_mib = 0.0
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(1.0):
            self.peak_mib = max(self.peak_mib, _group_rss_mib(self.pgid))


def events_after(fleet: FleetUnderTest, at: float) -> list[dict[str, Any]]:
    return [e for e in fleet.events() if e["at"] > at]


def run(options: argparse.Namespace) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory(prefix="bench-fleet-") as scratch,
        fleet_under_test(Path(scratch), tiers=(1, 2)) as fleet,
    ):
        backlog = workload(options.journeys)
        publish(fleet, backlog)
        workers = fleet.start_workers(processes=options.processes, threads=options.threads)
        rss = RssSampler(workers.pid)
        rss.start()
        fleet.wait_settled(timeout_s=options.timeout_s)
        drain = outcome_summary(fleet.events())
        drain["published"] = len(backlog)
        drain["deliveries_expected"] = deliveries(backlog) + 2 * options.journeys

        # Outcomes per journey: 9 deliveries for 6 published messages.
        rate_per_s = options.rate_share * (drain["outcomes_per_s"] or 0) * 6 / 9
        steady_jobs = workload(max(1, round(rate_per_s * options.rate_seconds / 6)))
        phase_start = time.time()
        achieved = publish_at_rate(fleet, steady_jobs, rate_per_s)
        fleet.wait_settled(timeout_s=options.timeout_s)
        steady = outcome_summary(events_after(fleet, phase_start))
        steady["published"] = len(steady_jobs)
        steady["publish_rate_per_s"] = round(achieved, 1)
        rss.stopping.set()

        ledger = fleet.ledger()
        fleet.local.stop(workers)
        return {
            "benchmark": "fleet",
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": machine(),
            "processes": options.processes,
            "threads": options.threads,
            "journeys": options.journeys,
            "drain": drain,
            "steady": steady,
            "worker_rss_peak_mib": round(rss.peak_mib, 1),
            "ledger_ok": ledger.ok,
            "ledger": {"lost": len(ledger.lost), "doubled": len(ledger.doubled)},
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=2, help="worker processes")
    parser.add_argument("--threads", type=int, default=4, help="threads per worker process")
    parser.add_argument("--journeys", type=int, default=1000, help="journeys in the drain phase")
    parser.add_argument("--rate-share", type=float, default=0.7, help="steady rate / drain rate")
    parser.add_argument("--rate-seconds", type=float, default=60, help="steady phase length")
    parser.add_argument("--timeout-s", type=float, default=600, help="give up settling after")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON results file")
    options = parser.parse_args(argv)
    result = run(options)
    drain, steady = result["drain"], result["steady"]
    print(f"fleet: {options.processes} processes × {options.threads} threads")
    print(
        f"drain:  {drain['final_outcomes']} outcomes in {drain['seconds']} s = "
        f"{drain['outcomes_per_s']} /s ({drain['published']} published, "
        f"{drain['retried']} retries)"
    )
    print(
        f"steady: {steady['publish_rate_per_s']} msg/s published, "
        f"{steady['outcomes_per_s']} outcomes/s; age p50 {steady['age_p50_s']} s, "
        f"p99 {steady['age_p99_s']} s, max {steady['age_max_s']} s ({steady['retried']} retries)"
    )
    print(f"worker RSS peak {result['worker_rss_peak_mib']} MiB; ledger ok: {result['ledger_ok']}")
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {options.out}")
    return 0 if result["ledger_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
