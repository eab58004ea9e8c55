"""A RabbitMQ restart during publishing and consuming, on a private node (never the shared one)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from queues.publisher import PublishResult
from tests.e2e.test_faults import workload
from tests.support.fleet import fleet_under_test
from tests.support.rabbit import private_node

pytestmark = [pytest.mark.broker, pytest.mark.db, pytest.mark.slow]


def test_a_broker_restart_during_publishing_and_consuming_loses_and_doubles_nothing(
    tmp_path: Path,
) -> None:
    with private_node() as node, fleet_under_test(tmp_path, node=node) as fleet:
        opens, charges = workload(accounts=30, charges_per_account=50)
        fleet.publish(opens, "order-management")
        fleet.start_workers(processes=2, threads=4)
        publisher = fleet.publisher("fleet")
        sealed = [publisher.seal(c) for c in charges]
        results: list[PublishResult] = []

        def publish_all() -> None:
            # What the publisher contract asks of an upstream: publish again, with the same
            # message id, whatever was not confirmed.
            pending = list(sealed)
            while pending:
                for start in range(0, len(pending), 250):
                    results.extend(publisher.publish_batch(pending[start : start + 250]))
                confirmed = {r.message_id for r in results if r.ok}
                pending = [s for s in pending if str(s.message_id) not in confirmed]

        publishing = threading.Thread(target=publish_all)
        publishing.start()
        fleet.wait_for(lambda: len(fleet.events()) > 200, what="the fleet at work")
        node.ctl("stop_app")
        time.sleep(3)
        node.ctl("start_app")
        publishing.join(180)
        assert not publishing.is_alive()
        fleet.confirmed.update({str(r.message_id): r.message_type for r in results if r.ok})
        assert len({str(s.message_id) for s in sealed} - set(fleet.confirmed)) == 0

        fleet.assert_charged_exactly_once(len(charges))
        assert publisher.stats.reconnects >= 1
