"""Shared fixtures. Broker and database tests use the real services (`make test` starts them)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import dlq.models  # noqa: F401  (the archive's tables on the store's Base, as Alembic sees them)
from queues.keys import KeyRegistry, ProducerKey
from tests.support import janitor, tier
from tests.support.rabbit import amqp_url, rabbitmqctl, scratch_vhost

PRODUCER_TYPES = {
    "order-management": ["provisioning.service.*", "billing.account.open"],
    "self-care": ["crm.*"],
    "payment-gateway": ["billing.payment.*"],
    "network-inventory": ["provisioning.service.suspend", "provisioning.service.resume"],
    "fleet": ["billing.*", "crm.*", "provisioning.*"],
}


@pytest.fixture
def keys() -> KeyRegistry:
    """A registry with one key per upstream producer plus the fleet's own."""
    return KeyRegistry(ProducerKey.generate(p, types) for p, types in PRODUCER_TYPES.items())


@pytest.fixture
def vhost() -> Iterator[str]:
    """A scratch vhost on the shared RabbitMQ, deleted afterwards."""
    with scratch_vhost() as name:
        yield name


@pytest.fixture
def vhost_url(vhost: str) -> str:
    return amqp_url(vhost)


@pytest.fixture(scope="session", autouse=True)
def shared_default_vhost_untouched(request: pytest.FixtureRequest) -> Iterator[None]:
    """Tests work in scratch vhosts or on private nodes: the shared broker's ``/`` vhost must end
    the session with the policies it began with (a private node's policies once landed there)."""
    if not any(item.get_closest_marker("broker") for item in request.session.items):
        yield
        return
    before = _default_vhost_policies()
    yield
    added = _default_vhost_policies() - before
    assert not added, f"tests set policies on the shared broker's / vhost: {sorted(added)}"


def _default_vhost_policies() -> set[str]:
    listing = rabbitmqctl("list_policies", "-p", "/", "--no-table-headers")
    return {line.split("\t")[1] for line in listing.splitlines() if "\t" in line}


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Wait for the background clean-up (schemas, vhosts); a failed one fails the run."""
    janitor.finish()


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Before any fixture: lets fleets and private nodes refuse a test not marked slow."""
    tier.running_slow = item.get_closest_marker("slow") is not None


# Scenarios whose subject is timing (heartbeats, a stalled or slow link, breakers, a broker
# starved or restarted): under ``pytest -n`` (``--dist loadgroup``) they run one after another
# on one worker, never two at once.
TIMING_SENSITIVE = frozenset(
    {
        "tests/e2e/test_backpressure.py",
        "tests/e2e/test_breakers.py",
        "tests/e2e/test_broker_link.py",
        "tests/e2e/test_broker_restart.py",
    }
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.nodeid.split("::", 1)[0] in TIMING_SENSITIVE:
            item.add_marker(pytest.mark.xdist_group("timing"))
    # Longest first, so that no long scenario starts last while the other process sits idle:
    # the serial timing group, then the other slow tests, then the rest (a stable sort).
    items.sort(
        key=lambda item: (
            0 if item.nodeid.split("::", 1)[0] in TIMING_SENSITIVE else 1,
            0 if item.get_closest_marker("slow") else 1,
        )
    )


_phases: dict[str, dict[str, float]] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _phases.setdefault(report.nodeid, {})[report.when] = report.duration


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """The 20 slowest tests whole, set-up + call + teardown (`--durations` lists phases)."""
    if not _phases:
        return
    totals = sorted(_phases.items(), key=lambda item: -sum(item[1].values()))[:20]
    terminalreporter.write_sep("=", "slowest 20 tests, set-up + call + teardown")
    for nodeid, phases in totals:
        split = " + ".join(f"{phases.get(p, 0.0):.2f}" for p in ("setup", "call", "teardown"))
        terminalreporter.write_line(f"{sum(phases.values()):7.2f}s  ({split})  {nodeid}")
