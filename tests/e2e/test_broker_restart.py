"""A RabbitMQ restart during publishing and consuming, on a private node (never the shared one)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

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
        upstream = fleet.upstream(charges, batch=250)
        fleet.wait_for(lambda: len(fleet.events()) > 200, what="the fleet at work")
        node.ctl("stop_app")
        time.sleep(3)
        node.ctl("start_app")
        upstream.finish(timeout_s=180)

        fleet.assert_charged_exactly_once(len(charges))
        assert upstream.publisher.stats.reconnects >= 1
