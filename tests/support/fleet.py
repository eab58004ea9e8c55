"""A real fleet for end-to-end tests: scratch vhost, migrated schema, keys, simulator, workers.

Cheap to set up and tear down, so the suite can afford one per scenario: the vhost with its
permissions, policies, exchanges, queues and bindings is one definitions import (one rabbitmqctl
call), the schema is a copy of the Alembic-migrated template (tests/support/db.py), both made at
once; the network simulator runs in this process. Teardown SIGKILLs the fleet's processes (a
test whose subject is a graceful stop stops them itself first) and leaves dropping the schema
and the vhost to the background janitor.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, text

from handlers.network_sim import NetworkSimulatorServer, SimulatedNetwork, serve_in_thread
from handlers.store.db import make_engine
from queues.contracts import Contract
from queues.envelope import SealedMessage, seal
from queues.keys import KeyRegistry, ProducerKey
from queues.publisher import Outgoing, Publisher, PublishResult
from queues.topology import DOMAINS, TopologyConfig, definitions, queues_of
from tests.conftest import PRODUCER_TYPES
from tests.support import janitor, tier
from tests.support.broker_state import queue_depth
from tests.support.db import (
    DATABASE_URL,
    create_migrated_schema,
    drop_schema,
    new_schema_name,
    require_database,
)
from tests.support.polling import CTL_FIRST_S, poll
from tests.support.rabbit import (
    PrivateNode,
    amqp_url,
    delete_vhost,
    import_definitions,
    queue_counts,
    rabbitmqctl,
    vhost_definitions,
)
from workers.events import EventLog
from workers.ledger import LedgerReport, check_ledger, drain_dead_letters
from workers.local import LocalFleet


@dataclass
class FleetUnderTest:
    url: str
    vhost: str
    engine: Engine
    schema: str
    keys: KeyRegistry
    local: LocalFleet
    events_file: Path
    node: PrivateNode | None = None
    confirmed: dict[str, str] = field(default_factory=dict)
    publishers: dict[str, Publisher] = field(default_factory=dict)
    upstreams: list[Upstream] = field(default_factory=list)
    _log: EventLog | None = None
    _last_listing_at: float = 0.0

    # -- publishing ---------------------------------------------------------------------------

    def publisher(self, producer: str) -> Publisher:
        if producer not in self.publishers:
            self.publishers[producer] = Publisher(self.url, self.keys, producer)
        return self.publishers[producer]

    def publish(
        self, payloads: Iterable[Contract | SealedMessage], producer: str = "fleet"
    ) -> list[PublishResult]:
        results = self.publisher(producer).publish_batch(list(payloads))
        assert all(r.ok for r in results), [r for r in results if not r.ok]
        self.confirmed.update({str(r.message_id): r.message_type for r in results})
        return results

    def publish_raw(
        self, body: bytes, message_type: str, message_id: str, routing_key: str | None = None
    ) -> None:
        """Publish any bytes to ``fleet`` (a foreign or hostile publisher), with a confirm."""
        out = Outgoing("fleet", routing_key or message_type, body, message_id, message_type)
        [result] = self.publisher("fleet").publish_raw([out])
        assert result.ok, result
        self.confirmed[message_id] = message_type

    def seal(self, payload: Contract, producer: str = "fleet", **options: Any) -> SealedMessage:
        return seal(payload, self.keys.sealing_key(producer), **options)

    def upstream(
        self,
        payloads: Iterable[Contract],
        *,
        batch: int,
        backoff_s: float = 0.0,
        interval_s: float = 0.0,
    ) -> Upstream:
        """Publish ``payloads`` in the background until every one is confirmed (``interval_s``
        between batches: a run that lasts, however fast the fleet drains)."""
        upstream = Upstream(
            self, self.publisher("fleet"), list(payloads), batch, backoff_s, interval_s
        )
        self.upstreams.append(upstream)
        return upstream

    def largest_batch(self) -> int:
        """The most messages one batch writer transaction committed so far."""
        return max((int(b.get("committed", 0)) for b in self.log.batches), default=0)

    # -- observing ----------------------------------------------------------------------------

    @property
    def log(self) -> EventLog:
        """The fleet's outcome events, read incrementally (one reader per fleet)."""
        if self._log is None:
            self._log = EventLog(self.events_file)
        self._log.refresh()
        return self._log

    def events(self) -> list[dict[str, Any]]:
        return list(self.log.events)

    def settled(self) -> set[tuple[str, str]]:
        return set(self.log.settled)

    def expected(self) -> set[tuple[str, str]]:
        with self.engine.connect() as connection:
            follow_ups = connection.execute(
                text("SELECT message_id, message_type FROM outbox")
            ).all()
        everything = {**self.confirmed, **{str(m): t for m, t in follow_ups}}
        return {(m, q) for m, t in everything.items() for q in queues_of(t)}

    def missing(self) -> set[tuple[str, str]]:
        """Deliveries expected that have no final outcome yet."""
        return self.expected() - self.log.settled

    def wait_settled(
        self, timeout_s: float = 90.0, supervise: Callable[[], None] | None = None
    ) -> None:
        def all_settled() -> bool:
            if supervise is not None:
                supervise()
            if any(upstream.publishing for upstream in self.upstreams):
                return False  # what they publish is expected too
            for upstream in self.upstreams:
                upstream.finish(timeout_s=0)
            return not self.missing()

        try:
            poll(all_settled, timeout_s, "every delivery settled", first_s=0.05, cap_s=0.5)
        except AssertionError:
            missing = self.missing()
            raise AssertionError(
                f"not settled within {timeout_s} s: {sorted(missing)[:5]} … ({len(missing)})"
            ) from None

    def wait_for(
        self, condition: Callable[[], bool], timeout_s: float = 30.0, what: str = ""
    ) -> None:
        poll(condition, timeout_s, what or str(condition), first_s=0.05, cap_s=0.5)

    def processed(self) -> int:
        """Deliveries handled so far (effects committed, or absorbed by the inbox)."""
        return self.log.handled

    def assert_charged_exactly_once(self, charges: int, timeout_s: float = 180.0) -> None:
        """Everything settles; the ledger is exact with no dead letter; ``charges`` rows; and
        the broker holds no delivery unacknowledged."""
        self.wait_settled(timeout_s=timeout_s)
        report = self.ledger()
        assert report.ok, report.summary()
        assert not report.dead_by_reason, report.summary()
        assert self.query("SELECT count(*) FROM billing_charges") == [(charges,)]
        self.wait_for(lambda: self.in_hand() == 0, timeout_s=30, what="nothing left unacked")

    def events_for(self, message_id: str) -> list[dict[str, Any]]:
        return list(self.log.by_id.get(message_id, ()))

    def ledger(self, poison: Iterable[str] = ()) -> LedgerReport:
        report = check_ledger(
            self.engine, self.confirmed, drain_dead_letters(self.url), poison=poison
        )
        print(report.summary())
        return report

    def query(self, sql: str, **params: Any) -> list[Any]:
        with self.engine.connect() as connection:
            return list(connection.execute(text(sql), params).all())

    def unacked(self, queue: str) -> int:
        counts = self.unacked_by_queue()
        if queue not in counts:
            raise KeyError(queue)
        return counts[queue]

    def unacked_by_queue(self) -> dict[str, int]:
        """Every queue of the vhost ▶ deliveries the broker waits to hear about.

        Only rabbitmqctl knows; called in a loop, it waits so as to ask at most every
        ``CTL_FIRST_S``.
        """
        time.sleep(max(0.0, self._last_listing_at + CTL_FIRST_S - time.monotonic()))
        self._last_listing_at = time.monotonic()
        args = ("list_queues", "-p", self.vhost, "name", "messages_unacknowledged")
        return queue_counts(self.node.ctl(*args) if self.node else rabbitmqctl(*args))

    def in_hand(self) -> int:
        """Deliveries unacknowledged across the vhost."""
        return sum(self.unacked_by_queue().values())

    def depth(self, queue: str) -> int:
        return queue_depth(self.url, queue)

    def simulator(self, **control: Any) -> dict[str, Any]:
        base = self.local.env["FLEET_NETWORK_URL"]
        if control:
            httpx.post(f"{base}/control", json=control, timeout=5).raise_for_status()
        return dict(httpx.get(f"{base}/stats", timeout=5).json())

    # -- processes ----------------------------------------------------------------------------

    def start_workers(self, **options: Any) -> subprocess.Popen[bytes]:
        return self.local.start_workers(**options)

    def close(self) -> None:
        """Publishers closed, every process of the fleet SIGKILLed (the test is over: a graceful
        stop would prove nothing more and cost seconds)."""
        for publisher in self.publishers.values():
            publisher.close()
        self.local.kill_all()


class Upstream:
    """What the publisher contract asks of an upstream: publish again, with the same message id,
    whatever was not confirmed (in batches of ``batch``, ``backoff_s`` between rounds)."""

    def __init__(
        self,
        fleet: FleetUnderTest,
        publisher: Publisher,
        payloads: list[Contract],
        batch: int,
        backoff_s: float,
        interval_s: float = 0.0,
    ) -> None:
        self.fleet = fleet
        self.interval_s = interval_s
        self.publisher = publisher
        self.sealed = [publisher.seal(p) for p in payloads]
        self.batch = batch
        self.backoff_s = backoff_s
        self.results: list[PublishResult] = []
        self._thread = threading.Thread(target=self._publish, daemon=True)
        self._thread.start()

    def _publish(self) -> None:
        pending = list(self.sealed)
        while pending:
            for start in range(0, len(pending), self.batch):
                self.results.extend(
                    self.publisher.publish_batch(pending[start : start + self.batch])
                )
                time.sleep(self.interval_s)
            confirmed = {r.message_id for r in self.results if r.ok}
            pending = [s for s in pending if str(s.message_id) not in confirmed]
            time.sleep(self.backoff_s)

    @property
    def publishing(self) -> bool:
        return self._thread.is_alive()

    def finish(self, timeout_s: float) -> None:
        """Wait until everything is confirmed; the fleet's ledger then expects all of it."""
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "the upstream never got all its messages confirmed"
        self.fleet.confirmed.update(
            {str(r.message_id): r.message_type for r in self.results if r.ok}
        )
        assert {str(s.message_id) for s in self.sealed} <= set(self.fleet.confirmed)


@contextlib.contextmanager
def fleet_under_test(
    tmp_path: Path,
    *,
    tiers: tuple[int, ...] = (1, 2),
    env: dict[str, str] | None = None,
    node: PrivateNode | None = None,
    **topology: Any,
) -> Iterator[FleetUnderTest]:
    """Everything a real fleet needs, isolated; all of it removed afterwards.

    ``node``: a broker of the test's own (its vhost ``/``) instead of a scratch vhost on the
    shared one; the topology and its policies are imported into that node.
    """
    tier.require_slow("a fleet of worker processes")
    require_database()
    config = TopologyConfig(retry_tiers_s=tiers, **topology)
    vhost = "/" if node else f"e2e-{uuid.uuid4().hex[:10]}"
    schema = new_schema_name()
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(janitor.later, f"drop schema {schema}", drop_schema, schema)
        if node is None:
            cleanup.callback(janitor.later, f"delete vhost {vhost}", delete_vhost, vhost)
            declaration = vhost_definitions(vhost, config)
        else:
            declaration = definitions(config, vhost)
        with ThreadPoolExecutor(max_workers=2) as pool:  # broker and database at once
            broker = pool.submit(import_definitions, declaration, node.name if node else None)
            database = pool.submit(create_migrated_schema, schema)
            broker.result()
            database.result()
        engine = make_engine(DATABASE_URL, schema, pool_size=10, max_overflow=0)
        cleanup.callback(engine.dispose)
        server, _thread = serve_in_thread(SimulatedNetwork())
        cleanup.callback(janitor.later, "stop the network simulator", _stop_simulator, server)
        url = node.amqp_url(vhost) if node else amqp_url(vhost)
        keys = KeyRegistry(ProducerKey.generate(p, t) for p, t in PRODUCER_TYPES.items())
        keys_file = tmp_path / "keys.json"
        keys.save(keys_file)
        events_file = tmp_path / "events.jsonl"
        settings = {
            "FLEET_AMQP_URL": url,
            "FLEET_DATABASE_URL": DATABASE_URL,
            "FLEET_DB_SCHEMA": schema,
            "FLEET_KEYS_FILE": str(keys_file),
            "FLEET_EVENTS_FILE": str(events_file),
            "FLEET_RETRY_TIERS_S": json.dumps(list(tiers)),
            "FLEET_SHUTDOWN_TIMEOUT_S": "10",
            "FLEET_NETWORK_ATTEMPTS": "1",
            "FLEET_NETWORK_URL": server.url,
            **(env or {}),
        }
        fleet = FleetUnderTest(
            url=url,
            vhost=vhost,
            engine=engine,
            schema=schema,
            node=node,
            keys=keys,
            local=LocalFleet(settings, tmp_path / "logs"),
            events_file=events_file,
        )
        cleanup.callback(fleet.close)
        yield fleet


def _stop_simulator(server: NetworkSimulatorServer) -> None:
    server.shutdown()
    server.server_close()


class Supervisor:
    """Restarts ``fleet worker`` when it exits, like Kubernetes restarts a pod."""

    def __init__(self, fleet: FleetUnderTest, **options: object) -> None:
        self.fleet = fleet
        self.options = options
        self.restarts = 0
        self.process: subprocess.Popen[bytes] = fleet.start_workers(**options)  # type: ignore[arg-type]

    def __call__(self) -> None:
        if self.process.poll() is not None:
            self.restarts += 1
            self.process = self.fleet.start_workers(**self.options)  # type: ignore[arg-type]


def new_id() -> str:
    return str(uuid.uuid4())


__all__ = ["DOMAINS", "FleetUnderTest", "Supervisor", "Upstream", "fleet_under_test", "new_id"]
