"""Publisher throughput: sealed envelopes per second into the real topology, by confirm window.

    python -m bench.publish [--messages 20000] [--windows 1,100,1000] [--out FILE]

Each run publishes the same number of envelopes, sealed before the clock starts (sealing is
timed on its own), through ``queues.publisher.Publisher``: persistent, publisher confirms, at most
``window`` unconfirmed. They go to exchange ``fleet`` as ``crm.interaction.log`` and land in the
quorum queue ``crm`` of a scratch vhost with the real topology (``fleet topology apply``'s), which
is purged between runs. A run with window 1 waits for every confirm before the next publish; it
is capped at ``--window-1-messages`` to stay short. Needs the local RabbitMQ and rabbitmqctl
(root), like the tests. Prints a table and writes the results as JSON (bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pika

from bench.measure import cpu_model
from queues.envelope import SealedMessage, seal
from queues.keys import KeyRegistry, ProducerKey
from queues.publisher import Publisher
from queues.topology import TopologyConfig, apply
from tests.support.factories import sample
from tests.support.rabbit import amqp_url, rabbitmqctl, scratch_vhost

MESSAGE_TYPE = "crm.interaction.log"
QUEUE = "crm"
PRODUCER = "self-care"
RESULTS = Path(__file__).parent / "results" / "publish.json"


@dataclass
class Run:
    window: int
    messages: int
    confirmed: int
    seconds: float
    messages_per_s: float
    max_in_flight: int


def machine() -> dict[str, Any]:
    """What the numbers depend on."""
    cpu = cpu_model()
    try:
        broker = rabbitmqctl("version").strip()
    except (RuntimeError, OSError, subprocess.SubprocessError):
        broker = "unknown"
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "pika": pika.__version__,
        "rabbitmq": broker,
        "load_average_1m": round(os.getloadavg()[0], 2),
        "note": "broker, database and benchmark on the same machine",
    }


def sealed_envelopes(keys: KeyRegistry, count: int) -> tuple[list[SealedMessage], float]:
    key = keys.sealing_key(PRODUCER)
    started = time.perf_counter()
    envelopes = [seal(sample(MESSAGE_TYPE), key) for _ in range(count)]
    return envelopes, count / (time.perf_counter() - started)


def publish_run(url: str, vhost: str, envelopes: list[SealedMessage], window: int) -> Run:
    rabbitmqctl("purge_queue", "-p", vhost, QUEUE)
    with Publisher(url, window=window) as publisher:
        if not publisher.wait_connected(10):
            raise RuntimeError("the publisher did not connect")
        started = time.perf_counter()
        results = publisher.publish_batch(envelopes)
        seconds = time.perf_counter() - started
        max_in_flight = publisher.stats.max_in_flight
    confirmed = sum(r.ok for r in results)
    return Run(
        window=window,
        messages=len(envelopes),
        confirmed=confirmed,
        seconds=round(seconds, 3),
        messages_per_s=round(confirmed / seconds, 1),
        max_in_flight=max_in_flight,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000, help="envelopes per run")
    parser.add_argument("--windows", default="1,100,1000", help="confirm windows, comma-separated")
    parser.add_argument("--window-1-messages", type=int, default=5_000, help="cap for window 1")
    parser.add_argument("--repeat", type=int, default=3, help="runs per window (median kept)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON results file")
    options = parser.parse_args(argv)
    windows = [int(w) for w in options.windows.split(",")]

    keys = KeyRegistry([ProducerKey.generate(PRODUCER, ["crm.*"])])
    envelopes, seal_rate = sealed_envelopes(keys, options.messages)
    runs: list[Run] = []
    with scratch_vhost("bench") as vhost:
        url = amqp_url(vhost)
        apply(url, TopologyConfig())
        for window in windows:
            count = options.window_1_messages if window == 1 else options.messages
            attempts = [
                publish_run(url, vhost, envelopes[:count], window) for _ in range(options.repeat)
            ]
            median = statistics.median(run.messages_per_s for run in attempts)
            runs.append(min(attempts, key=lambda run: abs(run.messages_per_s - median)))

    print(f"sealing: {seal_rate:,.0f} envelopes/s (one core, {MESSAGE_TYPE})")
    print(f"{'window':>8} {'messages':>9} {'confirmed':>9} {'seconds':>8} {'msg/s':>9}")
    for run in runs:
        print(
            f"{run.window:>8} {run.messages:>9} {run.confirmed:>9} "
            f"{run.seconds:>8.2f} {run.messages_per_s:>9,.0f}"
        )
    document = {
        "benchmark": "publish",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "message_type": MESSAGE_TYPE,
        "envelope_bytes": len(envelopes[0].body),
        "seal_per_s": round(seal_rate, 1),
        "repeat": options.repeat,
        "runs": [asdict(run) for run in runs],
    }
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"results: {options.out}")
    return 0 if all(run.confirmed == run.messages for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
