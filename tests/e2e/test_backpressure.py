"""A burst against a broker that pushes back: a memory alarm and a small max-length.

On a private node (the shared one is never starved): the work queues hold at most a few hundred
messages (``reject-publish``), and mid-burst the memory watermark drops below what the node
uses, so RabbitMQ blocks every publishing connection. The publisher is told every time
(``nacked``, ``connection.blocked``, ``failed`` on timeout) and publishes again what was not
confirmed, the way the publisher contract asks an upstream to; the workers drain meanwhile.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from queues.publisher import PublishStatus
from tests.e2e.test_faults import workload
from tests.support.fleet import fleet_under_test
from tests.support.rabbit import private_node

pytestmark = [pytest.mark.broker, pytest.mark.db, pytest.mark.slow]

MAX_LENGTH = 200


def test_a_burst_against_a_full_queue_and_a_memory_alarm_loses_nothing_published(
    tmp_path: Path,
) -> None:
    with (
        private_node() as node,
        fleet_under_test(tmp_path, node=node, queue_max_length=MAX_LENGTH) as fleet,
    ):
        opens, charges = workload(accounts=30, charges_per_account=100)
        # The accounts open first, so that no charge needs a retry: a retry is a publish, and
        # during the alarm it would wait until it times out and its charge goes back to the queue.
        fleet.publish(opens, "order-management")
        openers = fleet.start_workers(processes=1, threads=2)
        fleet.wait_for(
            lambda: fleet.processed() >= len(opens), timeout_s=60, what="accounts opened"
        )
        fleet.local.stop(openers)
        publisher = fleet.publisher("fleet")
        publisher.confirm_timeout_s = 5
        # All at once, then again every 0.5 s (an upstream backs off) what was not confirmed.
        upstream = fleet.upstream(charges, batch=len(charges), backoff_s=0.5)
        fleet.wait_for(
            lambda: publisher.stats.nacked > 0, timeout_s=60, what="a full queue refusing publishes"
        )
        # The queue is full and refusing; now the node runs short of memory too.
        node.ctl("set_vm_memory_high_watermark", "absolute", "10MB")  # far below its usage
        fleet.wait_for(lambda: publisher.stats.blocked > 0, timeout_s=30, what="connection.blocked")
        backlog = fleet.depth("billing")
        assert backlog >= MAX_LENGTH, "the full queue holds what it confirmed"

        # Consumers are never blocked: workers started now drain the backlog meanwhile.
        fleet.start_workers(processes=2, threads=4)
        fleet.wait_for(
            lambda: fleet.processed() >= len(opens) + backlog and fleet.depth("billing") == 0,
            timeout_s=60,
            what="the workers draining the full queue while publishers are blocked",
        )
        node.ctl("set_vm_memory_high_watermark", "0.4")

        upstream.finish(timeout_s=240)
        print(publisher.stats)
        refused = {r.status for r in upstream.results if not r.ok}
        assert PublishStatus.NACKED in refused, "max-length never refused a publish"

        fleet.assert_charged_exactly_once(len(charges))
