"""FleetBroker under a real ``dramatiq.Worker``: every contract the fleet relies on, pinned.

Each test builds its own FleetBroker (never workers.app's) with small recording actors and a
``choose_actor`` of its own, runs an in-process Worker on a vhost where the topology was applied
(retry tiers of 1 s and 2 s), publishes with plain pika in confirm mode and reads what the broker
holds. Ready counts come from passive declares; ready + unacknowledged counts of the quorum
queues from the queue's own Raft state (``rabbitmqctl eval``): ``list_queues`` reports quorum
queue counters only on the queue's stats tick (~5 s late), too slow and too vague to pin
"exactly 2 unacknowledged".
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import dramatiq
import dramatiq.worker
import pika
import pytest
from dramatiq.errors import QueueNotFound

from queues.topology import TopologyConfig, apply, desired_topology
from tests.support.polling import CTL_FIRST_S, poll
from tests.support.rabbit import amqp_url, rabbitmqctl, scratch_vhost, vhost_connections
from workers.broker import Delivery, FleetBroker, FleetConsumer, FleetMessageProxy, Settlement
from workers.middleware import FleetLifecycleMiddleware

pytestmark = pytest.mark.broker

CONFIG = TopologyConfig(retry_tiers_s=(1, 2))
KINDS = ("alpha", "other")
WAIT_S = 10.0
# How long a blocked actor waits for its release: long, since a test that fails releases it.
HOLD_S = 30.0


# ── the broker's state ─────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class Place:
    """Where a vhost is: its name and a guest URL."""

    vhost: str
    url: str


@pytest.fixture(scope="module")
def applied() -> Iterator[Place]:
    """One scratch vhost with the topology applied, shared by the module (saves ~3 s a test)."""
    with scratch_vhost("test-fleetbroker") as vhost:
        url = amqp_url(vhost)
        apply(url, CONFIG)
        yield Place(vhost, url)


@pytest.fixture
def place(applied: Place) -> Iterator[Place]:
    """The shared vhost, every queue empty before and after the test."""
    purge_all(applied.url)
    yield applied
    purge_all(applied.url)


def purge_all(url: str) -> None:
    with channel_on(url) as channel:
        for queue in desired_topology(CONFIG).queues:
            channel.queue_purge(queue.name)


@contextlib.contextmanager
def channel_on(url: str) -> Iterator[Any]:
    """A short-lived channel (its own connection, closed after) in confirm mode."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        yield channel
    finally:
        if connection.is_open:
            connection.close()


def publish(
    url: str,
    key: str,
    *bodies: bytes,
    exchange: str = "fleet",
    headers: dict[str, Any] | None = None,
    **properties: Any,
) -> list[str]:
    """Publish persistent, confirmed, mandatory messages; return their message ids."""
    ids = []
    with channel_on(url) as channel:
        for body in bodies:
            message_id = str(uuid.uuid4())
            channel.basic_publish(
                exchange,
                key,
                body,
                properties=pika.BasicProperties(
                    delivery_mode=2, message_id=message_id, headers=headers, **properties
                ),
                mandatory=True,
            )
            ids.append(message_id)
    return ids


def declared(url: str, queue: str) -> tuple[int, int]:
    """(ready messages, consumers) of ``queue``: a passive declare, exact and immediate."""
    with channel_on(url) as channel:
        method = channel.queue_declare(queue, passive=True).method
        return int(method.message_count), int(method.consumer_count)


def ready(url: str, queue: str) -> int:
    return declared(url, queue)[0]


def counts(vhost: str) -> dict[str, tuple[int, int]]:
    """Queue ▶ (ready, unacknowledged) of every quorum queue, read from its Raft state now."""
    name = vhost.replace("\\", "\\\\").replace('"', '\\"')
    expression = (
        'io:format("~s~n", [rabbit_json:encode(['
        "begin {RaName, _} = amqqueue:get_pid(Q),"
        " {ok, {_, O}, _} = ra:local_query({RaName, node()}, fun rabbit_fifo:overview/1),"
        ' #{<<"queue">> => element(4, amqqueue:get_name(Q)),'
        ' <<"ready">> => maps:get(num_ready_messages, O),'
        ' <<"unacked">> => maps:get(num_checked_out, O)} end'
        f' || Q <- rabbit_amqqueue:list(<<"{name}">>),'
        " amqqueue:get_type(Q) =:= rabbit_quorum_queue])])."
    )
    rows = json.loads(rabbitmqctl("eval", expression).splitlines()[0])
    return {row["queue"]: (row["ready"], row["unacked"]) for row in rows}


def listed(vhost: str, what: str) -> set[str]:
    """Names (and types) of a vhost's queues or exchanges as rabbitmqctl lists them."""
    columns = ("name", "type") if what == "exchanges" else ("name",)
    return set(rabbitmqctl(f"list_{what}", "-p", vhost, *columns).splitlines())


def wait_for(condition: Callable[[], object], what: str, timeout_s: float = WAIT_S) -> None:
    poll(condition, timeout_s, what)


def wait_counts(place: Place, queue: str, expected: tuple[int, int]) -> None:
    """Wait until ``queue`` holds (ready, unacknowledged) == ``expected``, read from its Raft state.

    The ready count is awaited first with passive declares (cheap); only then is the exact pair
    read with ``rabbitmqctl eval``, at most twice a second.
    """
    deadline = time.monotonic() + WAIT_S
    wait_for(lambda: ready(place.url, queue) == expected[0], f"{queue}: {expected[0]} ready")
    seen: list[tuple[int, int]] = []

    def reached() -> bool:
        seen.append(counts(place.vhost)[queue])
        return seen[-1] == expected

    try:
        left_s = max(deadline - time.monotonic(), 0.0)
        poll(reached, left_s, f"{queue}: (ready, unacked) == {expected}", first_s=CTL_FIRST_S)
    except AssertionError:
        pytest.fail(f"{queue}: (ready, unacked) stayed {seen[-1]}, expected {expected}")


# ── the fleet under test ───────────────────────────────────────────────────────────────────────


def actor_name(queue: str, kind: str) -> str:
    return f"t_{queue.replace('.', '_')}__{kind}"


def choose_by_body(delivery: Delivery) -> str:
    """Our ``choose_actor``: the body's first word picks the actor of its queue."""
    kind = delivery.body.split(b":", 1)[0].decode(errors="replace")
    return actor_name(delivery.queue, kind if kind in KINDS else "other")


@dataclass(frozen=True)
class Call:
    actor: str
    delivery: Delivery


@dataclass(frozen=True)
class Processed:
    """What a worker thread saw in ``before_process_message``: Dramatiq's view of a delivery."""

    queue_name: str
    actor_name: str
    delivery: Delivery


Behaviour = Callable[[str, Delivery], None]


def ack(_actor: str, delivery: Delivery) -> None:
    delivery.settle(Settlement.ACK)


class Recording(dramatiq.Middleware):
    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet

    def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
        assert isinstance(message, FleetMessageProxy)
        with self.fleet.lock:
            self.fleet.processed.append(
                Processed(message.queue_name, message.actor_name, message.delivery)
            )


class CancelOnShutdown(FleetLifecycleMiddleware):
    """The real middleware's ``before_worker_shutdown``; no runtime built or closed."""

    def after_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        pass

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        pass


@dataclass
class Fleet:
    """A FleetBroker with recording actors per (queue, kind), and the Worker running it."""

    broker: FleetBroker
    worker: dramatiq.Worker
    calls: list[Call] = field(default_factory=list)
    processed: list[Processed] = field(default_factory=list)
    chosen: list[tuple[str, bytes]] = field(default_factory=list)
    consumers: list[FleetConsumer] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopped: bool = False

    def bodies(self) -> list[bytes]:
        with self.lock:
            return [c.delivery.body for c in self.calls]

    def stop(self, timeout_ms: int = 10_000) -> None:
        if not self.stopped:
            self.stopped = True
            self.worker.stop(timeout=timeout_ms)
            self.broker.close()


@contextlib.contextmanager
def running_fleet(
    url: str,
    behave: Behaviour,
    *,
    queues: tuple[str, ...] = ("billing",),
    prefetch: int = 2,
    threads: int = 2,
    middleware: tuple[dramatiq.Middleware, ...] = (),
    choose: Callable[[Delivery], str] = choose_by_body,
    releases: tuple[threading.Event, ...] = (),
) -> Iterator[Fleet]:
    """Start a Worker on ``queues``; stop it after (``releases`` set first, so stop never hangs)."""
    fleet: Fleet

    def choose_actor(delivery: Delivery) -> str:
        with fleet.lock:
            fleet.chosen.append((delivery.queue, delivery.body))
        return choose(delivery)

    broker = FleetBroker(url, choose_actor=choose_actor, prefetch=prefetch, middleware=[])
    worker = dramatiq.Worker(broker, queues=set(queues), worker_threads=threads, worker_timeout=100)
    fleet = Fleet(broker, worker)
    broker.add_middleware(Recording(fleet))
    for extra in middleware:
        broker.add_middleware(extra)
    consume = broker.consume

    def counting_consume(queue_name: str, prefetch: int = 1, timeout: int = 30000) -> Any:
        consumer = consume(queue_name, prefetch, timeout)
        with fleet.lock:
            fleet.consumers.append(consumer)
        return consumer

    broker.consume = counting_consume  # type: ignore[method-assign]

    for queue in queues:
        for kind in KINDS:
            name = actor_name(queue, kind)

            def body(delivery: Delivery, name: str = name) -> None:
                with fleet.lock:
                    fleet.calls.append(Call(name, delivery))
                behave(name, delivery)

            dramatiq.actor(actor_name=name, queue_name=queue, broker=broker)(body)
    fleet.worker.start()
    try:
        wait_for(lambda: all(declared(url, q)[1] == 1 for q in queues), "the worker's consumers")
        yield fleet
    finally:
        for release in releases:
            release.set()
        fleet.stop()


# ── 1. deliveries become Dramatiq messages ─────────────────────────────────────────────────────


def test_a_delivery_becomes_a_message_of_the_consumed_queue_for_the_chosen_actor(
    place: Place,
) -> None:
    headers = {"x-custom": "kept", "x-number": 7}
    with running_fleet(place.url, ack) as fleet:
        [alpha_id] = publish(
            place.url,
            "billing.account.open",
            b"alpha: first",
            headers=headers,
            type="billing.account.open",
            content_type="application/jose",
        )
        [other_id] = publish(place.url, "billing.charge.post", b"beta: second")
        wait_for(lambda: len(fleet.calls) == 2, "two calls")

    by_body = {p.delivery.body: p for p in fleet.processed}
    alpha, other = by_body[b"alpha: first"], by_body[b"beta: second"]
    assert sorted(fleet.chosen) == [("billing", b"alpha: first"), ("billing", b"beta: second")]
    assert (alpha.queue_name, alpha.actor_name) == ("billing", actor_name("billing", "alpha"))
    assert (other.queue_name, other.actor_name) == ("billing", actor_name("billing", "other"))
    # The actor receives the very Delivery the proxy carries (its settlement is read there).
    assert {(c.actor, id(c.delivery)) for c in fleet.calls} == {
        (alpha.actor_name, id(alpha.delivery)),
        (other.actor_name, id(other.delivery)),
    }
    delivery = alpha.delivery
    assert delivery.queue == "billing"
    assert delivery.body == b"alpha: first"
    assert delivery.exchange == "fleet"
    assert delivery.routing_key == "billing.account.open"
    assert delivery.headers == headers
    assert delivery.message_id == alpha_id
    assert delivery.message_type == "billing.account.open"
    assert delivery.content_type == "application/jose"
    assert delivery.redelivered is False
    assert delivery.settlement is Settlement.ACK
    assert other.delivery.message_id == other_id
    assert other.delivery.routing_key == "billing.charge.post"


# ── 2. only an explicit ack acks ───────────────────────────────────────────────────────────────


def _leave_unset(delivery: Delivery) -> None:
    pass


def _raise(delivery: Delivery) -> None:
    raise RuntimeError("the actor failed")


def _requeue(delivery: Delivery) -> None:
    delivery.settle(Settlement.REQUEUE)


@pytest.mark.parametrize("first_time", [_leave_unset, _raise, _requeue], ids=lambda f: f.__name__)
def test_a_message_not_settled_ack_goes_back_to_its_queue_and_is_redelivered(
    place: Place, first_time: Callable[[Delivery], None]
) -> None:
    def behave(_actor: str, delivery: Delivery) -> None:
        if delivery.redelivered:
            delivery.settle(Settlement.ACK)
        else:
            first_time(delivery)

    with running_fleet(place.url, behave, threads=1, prefetch=1) as fleet:
        [message_id] = publish(place.url, "billing.charge.post", b"alpha: once")
        wait_for(lambda: len(fleet.calls) == 2, "the redelivery")
        wait_counts(place, "billing", (0, 0))

    first, second = (c.delivery for c in fleet.calls)
    assert first.message_id == second.message_id == message_id
    assert (first.redelivered, first.delivery_count) == (False, 1)
    assert second.redelivered is True
    assert second.headers["x-delivery-count"] >= 1
    assert second.delivery_count >= 2
    assert len(fleet.calls) == 2


def test_an_explicit_ack_acks_once_and_leaves_nothing_behind(place: Place) -> None:
    with running_fleet(place.url, ack, threads=1, prefetch=1) as fleet:
        publish(place.url, "billing.charge.post", b"alpha: once")
        wait_for(lambda: len(fleet.calls) == 1, "the call")
        wait_counts(place, "billing", (0, 0))
        assert len(fleet.calls) == 1
    assert counts(place.vhost)["billing"] == (0, 0)


def test_a_delivery_for_an_unknown_actor_is_returned_never_dropped(place: Place) -> None:
    # Dramatiq fails it (ActorNotFound) and nacks: the nack must requeue, so the quorum queue's
    # delivery limit (20) is what finally dead-letters it, with reason delivery_limit.
    with running_fleet(place.url, ack, choose=lambda delivery: "no_such_actor") as fleet:
        publish(place.url, "billing.charge.post", b"alpha: orphan")
        wait_for(lambda: ready(place.url, "billing.dead") == 1, "the dead letter", timeout_s=20)
    assert fleet.calls == []
    with channel_on(place.url) as channel:
        _, properties, body = channel.basic_get("billing.dead", auto_ack=True)
    assert body == b"alpha: orphan"
    assert properties.headers["x-death"][0]["reason"] == "delivery_limit"
    assert len(fleet.chosen) == CONFIG.delivery_limit + 1


# ── 3. prefetch = the broker's prefetch ────────────────────────────────────────────────────────


def blocking_until(release: threading.Event) -> Behaviour:
    def behave(_actor: str, delivery: Delivery) -> None:
        release.wait(HOLD_S)
        delivery.settle(Settlement.ACK)

    return behave


def test_prefetch_is_the_brokers_prefetch_not_dramatiqs(place: Place) -> None:
    # Dramatiq asks the broker for worker_threads * 2 = 8; the FleetBroker takes only its own 2.
    release = threading.Event()
    behave = blocking_until(release)
    with running_fleet(place.url, behave, threads=4, prefetch=2, releases=(release,)) as fleet:
        publish(place.url, "billing.charge.post", *[f"alpha: {i}".encode() for i in range(5)])
        wait_for(lambda: len(fleet.calls) == 2, "two blocked actors")
        wait_counts(place, "billing", (3, 2))
        # Read again (~0.4 s later): two idle threads and room in Dramatiq's prefetch of 8,
        # still nothing more is delivered.
        assert counts(place.vhost)["billing"] == (3, 2)
        assert len(fleet.calls) == 2
        release.set()
        wait_for(lambda: len(fleet.calls) == 5, "all five")
        wait_counts(place, "billing", (0, 0))


# ── 4. fan-out ─────────────────────────────────────────────────────────────────────────────────


def test_a_fanned_out_message_runs_each_queues_own_actor_exactly_once(place: Place) -> None:
    with running_fleet(place.url, ack, queues=("crm", "billing")) as fleet:
        [message_id] = publish(place.url, "crm.customer.upsert", b"alpha: upsert")
        wait_for(lambda: len(fleet.calls) == 2, "both queues' actors")
        for queue in ("crm", "billing"):
            wait_counts(place, queue, (0, 0))
        assert len(fleet.calls) == 2
    assert sorted((p.queue_name, p.actor_name) for p in fleet.processed) == [
        ("billing", actor_name("billing", "alpha")),
        ("crm", actor_name("crm", "alpha")),
    ]
    assert {(c.delivery.queue, c.delivery.message_id) for c in fleet.calls} == {
        ("billing", message_id),
        ("crm", message_id),
    }


# ── 5. passive declares only ───────────────────────────────────────────────────────────────────


def test_a_missing_queue_is_a_loud_error_and_is_never_created(place: Place) -> None:
    queues, exchanges = listed(place.vhost, "queues"), listed(place.vhost, "exchanges")
    broker = FleetBroker(place.url, choose_actor=choose_by_body, prefetch=1)
    with pytest.raises(QueueNotFound, match=r"'no-such-queue'.*run `fleet topology apply`"):
        broker.consume("no-such-queue")
    # A whole worker cycle declares nothing either.
    with running_fleet(place.url, ack, queues=("billing", "crm.suspect")) as fleet:
        publish(place.url, "billing.charge.post", b"alpha: x")
        wait_for(lambda: len(fleet.calls) == 1, "the call")
    broker.close()
    assert listed(place.vhost, "queues") == queues
    assert listed(place.vhost, "exchanges") == exchanges
    assert "no-such-queue" not in queues


# ── 6. no Dramatiq-side publishing, no delay queues ────────────────────────────────────────────


def test_dramatiq_cannot_enqueue_and_there_are_no_delay_queues(place: Place) -> None:
    # Nothing of this needs a reachable broker: declaring actors never talks to RabbitMQ.
    broker = FleetBroker(
        "amqp://guest:guest@127.0.0.1:1/%2F", choose_actor=choose_by_body, prefetch=1
    )
    send = dramatiq.actor(actor_name="t_send", queue_name="billing", broker=broker)(ack)
    with pytest.raises(NotImplementedError, match=r"queues\.publisher"):
        broker.enqueue(dramatiq.Message("billing", "t_send", (), {}, {}))
    with pytest.raises(NotImplementedError):
        send.send_with_options(args=(), delay=1000)
    assert broker.get_declared_queues() == {"billing"}
    assert broker.get_declared_delay_queues() == set()
    with running_fleet(place.url, ack, queues=("billing",)) as fleet:
        assert set(fleet.worker.consumers) == {"billing"}  # no "billing.DQ" consumer
        assert fleet.broker.get_declared_delay_queues() == set()


# ── 7. shutdown ────────────────────────────────────────────────────────────────────────────────


def consumers_of(vhost: str, queue: str) -> list[str]:
    """Consumer tags on ``queue`` as the channels list them (cancelled ones are gone)."""
    lines = rabbitmqctl("list_consumers", "-p", vhost, "queue_name", "consumer_tag").splitlines()
    return [tag for name, _, tag in (line.partition("\t") for line in lines) if name == queue]


def test_shutdown_cancels_first_finishes_in_flight_and_returns_the_prefetched(
    place: Place,
) -> None:
    release, started = threading.Event(), threading.Event()

    def behave(_actor: str, delivery: Delivery) -> None:
        if delivery.body == b"alpha: slow":
            started.set()
            release.wait(HOLD_S)
        delivery.settle(Settlement.ACK)

    # Prefetch 4 with three held: a free slot, so only the cancel keeps later messages away.
    with running_fleet(
        place.url,
        behave,
        threads=1,
        prefetch=4,
        middleware=(CancelOnShutdown(),),
        releases=(release,),
    ) as fleet:
        publish(place.url, "billing.charge.post", b"alpha: slow")
        assert started.wait(WAIT_S)
        publish(place.url, "billing.charge.post", b"alpha: prefetched 1", b"alpha: prefetched 2")
        wait_for(lambda: ready(place.url, "billing") == 0, "the prefetch to fill")

        stopper = threading.Thread(target=fleet.stop)
        stopper.start()
        # basic.cancel while the in-flight message still runs. (A quorum queue keeps counting a
        # cancelled consumer that holds unacked messages; the channel's consumer list does not.)
        poll(
            lambda: not consumers_of(place.vhost, "billing"),
            WAIT_S,
            "the consumer's cancel",
            first_s=CTL_FIRST_S,
        )
        assert not release.is_set()
        publish(place.url, "billing.charge.post", b"alpha: late 1", b"alpha: late 2")
        assert counts(place.vhost)["billing"] == (2, 3)  # the late ones stay ready
        assert fleet.bodies() == [b"alpha: slow"]
        release.set()
        stopper.join(WAIT_S)
        assert not stopper.is_alive()

    assert fleet.bodies() == [b"alpha: slow"]
    assert counts(place.vhost)["billing"] == (4, 0)
    with channel_on(place.url) as channel:
        left = [channel.basic_get("billing", auto_ack=True) for _ in range(4)]
    assert sorted((body, method.redelivered) for method, _, body in left) == [
        (b"alpha: late 1", False),
        (b"alpha: late 2", False),
        (b"alpha: prefetched 1", True),
        (b"alpha: prefetched 2", True),
    ]


# ── 8. a connection killed by the broker ───────────────────────────────────────────────────────


def only_connection(vhost: str) -> str:
    """The pid of the one connection in ``vhost`` (probes' closed ones may linger a moment)."""
    pids: list[str] = []

    def one() -> bool:
        pids[:] = vhost_connections(vhost)
        return len(pids) == 1

    try:
        poll(one, WAIT_S, f"one connection in {vhost}", first_s=CTL_FIRST_S)
    except AssertionError:
        pytest.fail(f"expected one connection in {vhost}, found {pids}")
    return pids[0]


def test_a_killed_connection_reconnects_and_a_stale_ack_touches_nothing_new(
    place: Place, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(dramatiq.worker, "CONSUMER_RESTART_DELAY_SECS", 0.1)
    first_started, first_release = threading.Event(), threading.Event()
    again_started, again_release = threading.Event(), threading.Event()

    def behave(_actor: str, delivery: Delivery) -> None:
        if delivery.body == b"alpha: m1" and not delivery.redelivered:
            first_started.set()
            first_release.wait(HOLD_S)
        elif delivery.body == b"alpha: m1":
            again_started.set()
            again_release.wait(HOLD_S)
        delivery.settle(Settlement.ACK)

    releases = (first_release, again_release)
    with running_fleet(place.url, behave, threads=1, prefetch=2, releases=releases) as fleet:
        publish(place.url, "billing.charge.post", b"alpha: m1")
        assert first_started.wait(WAIT_S)
        rabbitmqctl("close_connection", only_connection(place.vhost), "test: kill the consumer")
        # Dramatiq's consumer thread builds a new FleetConsumer; m1 comes back on it and waits
        # in Dramatiq's work queue (the only thread still runs the old delivery).
        wait_for(lambda: len(fleet.consumers) == 2, "a new consumer")
        wait_for(lambda: ready(place.url, "billing") == 0, "m1's redelivery to the new consumer")
        first_release.set()  # the old delivery's ack: on a dead channel, must go nowhere
        assert again_started.wait(WAIT_S)
        assert any("could not settle on billing" in r.getMessage() for r in caplog.records)
        # Had the stale ack (tag 1) gone to the new channel, it would have acked the redelivery.
        assert counts(place.vhost)["billing"] == (0, 1)
        again_release.set()
        publish(place.url, "billing.charge.post", b"alpha: m2")
        wait_for(lambda: len(fleet.calls) == 3, "m2")
        wait_counts(place, "billing", (0, 0))
        assert len(fleet.consumers) == 2  # no channel error from a double ack, no reconnect
        assert fleet.consumers[1].is_open

    first, again, later = (c.delivery for c in fleet.calls)
    assert (first.body, first.redelivered, first.delivery_count) == (b"alpha: m1", False, 1)
    assert (again.body, again.redelivered, again.delivery_count) == (b"alpha: m1", True, 2)
    assert again.message_id == first.message_id
    assert (later.body, later.redelivered) == (b"alpha: m2", False)


# ── 9. the delivery count ──────────────────────────────────────────────────────────────────────


def test_delivery_count_ignores_a_publishers_header_and_counts_redeliveries(
    place: Place,
) -> None:
    def behave(_actor: str, delivery: Delivery) -> None:
        if delivery.delivery_count >= 3:
            delivery.settle(Settlement.ACK)

    with running_fleet(place.url, behave, threads=1, prefetch=1) as fleet:
        publish(place.url, "billing.charge.post", b"alpha: x", headers={"x-delivery-count": 7})
        wait_for(lambda: len(fleet.calls) >= 3, "two redeliveries")
        wait_counts(place, "billing", (0, 0))

    deliveries = [c.delivery for c in fleet.calls]
    assert [d.delivery_count for d in deliveries] == [1, 2, 3]
    assert [d.redelivered for d in deliveries] == [False, True, True]
    # The broker passes the publisher's value through on a first delivery, then counts.
    assert [d.headers["x-delivery-count"] for d in deliveries] == [7, 1, 2]


# ── 10. verified facts the design leans on ─────────────────────────────────────────────────────


def test_fact_a_returned_message_is_redelivered_with_its_delivery_count_incremented(
    place: Place,
) -> None:
    publish(place.url, "crm.interaction.log", b"x")
    seen = []
    with channel_on(place.url) as channel:
        channel.basic_qos(prefetch_count=1)
        for method, properties, _ in channel.consume("crm", inactivity_timeout=WAIT_S):
            assert method is not None, "no delivery"
            seen.append((method.redelivered, (properties.headers or {}).get("x-delivery-count")))
            if len(seen) == 3:
                channel.basic_ack(method.delivery_tag)
                break
            channel.basic_nack(method.delivery_tag, requeue=True)
        channel.cancel()
    assert seen == [(False, None), (True, 1), (True, 2)]
    assert ready(place.url, "crm") == 0


def test_fact_a_retry_tier_dead_letters_back_as_a_fresh_delivery_with_x_death_expired(
    place: Place,
) -> None:
    with running_fleet(place.url, ack, threads=1, prefetch=1) as fleet:
        publish(
            place.url,
            "billing.1s",
            b"alpha: retried",
            exchange="fleet.retry",
            headers={"x-fleet-attempt": 2},
            type="billing.charge.post",
        )
        assert ready(place.url, "billing.retry.1s") == 1
        wait_for(lambda: len(fleet.calls) == 1, "the message back from the 1 s tier")
        wait_counts(place, "billing", (0, 0))

    delivery = fleet.calls[0].delivery
    assert (delivery.redelivered, delivery.delivery_count) == (False, 1)
    assert (delivery.exchange, delivery.routing_key) == ("", "billing")
    assert delivery.message_type == "billing.charge.post"
    assert delivery.headers["x-fleet-attempt"] == 2
    assert "x-delivery-count" not in delivery.headers
    [death] = delivery.headers["x-death"]
    assert death["reason"] == "expired"
    assert death["queue"] == "billing.retry.1s"
    assert death["exchange"] == "fleet.retry"
    assert death["count"] == 1


def test_settlements_handed_over_together_ack_the_oldest_run_at_once_and_requeue_the_rest(
    place: Place,
) -> None:
    """Worker threads settle out of order; the consumer thread acks the oldest unsettled run
    with one ``multiple`` ack, and a requeue in the middle is never covered by it."""
    broker = FleetBroker(place.url, choose_actor=choose_by_body, prefetch=8)
    bodies = [f"alpha: {n}".encode() for n in range(6)]
    publish(place.url, "billing.charge.post", *bodies)
    consumer = broker.consume("billing", timeout=200)
    try:
        taken: list[FleetMessageProxy] = []
        for _ in range(100):
            message = next(consumer)
            if message is not None:
                taken.append(message)
            if len(taken) == 6:
                break
        sent: list[tuple[int, bool]] = []
        channel = consumer._channel
        real_ack = channel.basic_ack
        channel.basic_ack = lambda tag, multiple=False: (  # type: ignore[method-assign]
            sent.append((tag, multiple)),
            real_ack(tag, multiple=multiple),
        )[1]

        def settle(indexes: list[int], settlement: Settlement) -> None:
            for index in indexes:
                taken[index].delivery.settle(settlement)
                consumer.ack(taken[index])

        worker = threading.Thread(
            target=lambda: (settle([0, 1, 4], Settlement.ACK), settle([2], Settlement.REQUEUE))
        )
        worker.start()
        worker.join()
        redelivered = None
        for _ in range(100):  # runs the handed-over settlements, then delivers
            redelivered = next(consumer)
            if redelivered is not None:
                break
        assert redelivered is not None, "the requeued delivery never came back"

        assert sent[0] == (taken[1].delivery_tag, True)  # 0 and 1 in one ack
        assert (taken[4].delivery_tag, False) in sent
        assert redelivered.delivery.body == bodies[2] and redelivered.delivery.redelivered
        for message in (taken[3], taken[5], redelivered):
            message.delivery.settle(Settlement.ACK)
            consumer.ack(message)
        consumer._connection.process_data_events(time_limit=0)
        wait_counts(place, "billing", (0, 6 - 6))
    finally:
        consumer.close()
    assert counts(place.vhost)["billing"] == (0, 0)


def test_a_breaker_probes_its_own_domains_one_at_a_time_and_leaves_the_others_alone(
    place: Place,
) -> None:
    broker = FleetBroker(place.url, choose_actor=choose_by_body, prefetch=8)
    billing = broker.consume("billing", timeout=200)
    provisioning = broker.consume("provisioning", timeout=200)
    try:
        broker.pause_domains(["provisioning"])
        broker.resume_domains(["provisioning"])  # half-open: a probe
        assert (billing._prefetch, provisioning._prefetch) == (8, 1)
        broker.restore_domains(["provisioning"])  # closed again
        assert (billing._prefetch, provisioning._prefetch) == (8, 8)
        publish(place.url, "provisioning.service.activate", b"alpha: after the outage")
        message = None
        for _ in range(50):
            message = next(provisioning)
            if message is not None:
                break
        assert message is not None, "a restored consumer receives again"
        message.delivery.settle(Settlement.ACK)
        provisioning.ack(message)
    finally:
        billing.close()
        provisioning.close()
    wait_counts(place, "provisioning", (0, 0))
