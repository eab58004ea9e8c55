"""The Dramatiq application: the FleetBroker, one thin actor per (lane, type), the middleware.

``fleet worker`` runs Dramatiq's CLI on this module. Lanes are the domain work queues and their
``.suspect`` lanes; each lane gets an actor per message type that reaches it, plus one for
envelopes whose header cannot be read (so that they, too, are dead-lettered with a reason).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import threading
from types import FrameType

import dramatiq

from handlers.batch import batchable
from queues.contracts import MESSAGE_TYPES
from queues.envelope import parse, peek_header
from queues.errors import EnvelopeError, FleetError
from queues.topology import DOMAINS, queues_of, suspect_queue
from workers.broker import Delivery, FleetBroker
from workers.middleware import FleetLifecycleMiddleware
from workers.observability.context import MessageContextMiddleware
from workers.observability.health import HealthMiddleware
from workers.observability.metrics import MetricsMiddleware
from workers.observability.sentry import SentryMiddleware
from workers.runtime import current_runtime, set_consumer_control
from workers.settings import get_settings
from workers.supervisor import die_with_parent

log = logging.getLogger(__name__)

UNREADABLE = "unreadable"


def lanes_of(domain: str) -> tuple[str, str]:
    return (domain, suspect_queue(domain))


@functools.cache
def types_of(domain: str) -> tuple[str, ...]:
    return tuple(t for t in MESSAGE_TYPES if domain in queues_of(t))


def actor_name(lane: str, message_type: str) -> str:
    return f"{lane.replace('.', '_')}__{message_type.replace('.', '_')}"


def choose_actor(delivery: Delivery) -> str:
    """The actor for a delivery: by the (unauthenticated) header's type, else ``unreadable``.

    The envelope is parsed here, once per delivery: the lifecycle takes the result from
    ``delivery.envelope``. A refused envelope is named by the lenient reading of its header.
    """
    queue, max_body_bytes = delivery.queue, get_settings().max_body_bytes
    try:
        parsed = parse(delivery.body, max_body_bytes=max_body_bytes)
    except Exception as exc:  # this is the consumer thread: nothing may escape
        # A refusal travels with the delivery; anything else (a bug) the lifecycle meets again
        # on a worker thread, where a failure has its outcome.
        delivery.envelope = exc if isinstance(exc, EnvelopeError) else None
        try:
            message_type = peek_header(delivery.body[: max_body_bytes + 1]).message_type
        except FleetError:
            return actor_name(queue, UNREADABLE)
    else:
        delivery.envelope = parsed
        message_type = parsed.header.message_type
    if message_type not in types_of(queue.split(".", 1)[0]):
        return actor_name(queue, UNREADABLE)
    return actor_name(queue, message_type)


def process(delivery: Delivery) -> None:
    """Every actor's body: the lifecycle decides, the consumer settles."""
    current_runtime().lifecycle.process(delivery)


def build_broker() -> FleetBroker:
    settings = get_settings()
    batched = {
        domain: settings.batch_prefetch
        for domain in DOMAINS
        if settings.batch_max_messages > 1 and any(batchable(domain, t) for t in types_of(domain))
    }
    new_broker = FleetBroker(
        settings.amqp_url.get_secret_value(),
        choose_actor=choose_actor,
        prefetch=settings.worker_threads,
        # A batched message frees its worker thread at once, so more deliveries are in hand.
        prefetch_by_queue=batched,
        heartbeat_s=settings.amqp_heartbeat_s,
        # Dramatiq runs after-hooks in reverse: the lifecycle's after_worker_boot (the runtime)
        # comes first, the observers subscribe to its events after it.
        middleware=[
            HealthMiddleware(),
            SentryMiddleware(),
            MetricsMiddleware(),
            MessageContextMiddleware(),
            FleetLifecycleMiddleware(),
        ],
    )
    for domain in DOMAINS:
        for lane in lanes_of(domain):
            for message_type in (*types_of(domain), UNREADABLE):
                dramatiq.actor(
                    actor_name=actor_name(lane, message_type), queue_name=lane, broker=new_broker
                )(process)
    return new_broker


broker = build_broker()
dramatiq.set_broker(broker)
set_consumer_control(broker.pause_domains, broker.resume_domains, broker.restore_domains)


def run_suspect_lane() -> int:
    """The suspect lanes' supervisor (a child of ``fleet worker``).

    A suspect may crash its process again — that is why it is here — so the lane runs in a child
    that is restarted when it dies; the quorum delivery limit of the lane dead-letters a message
    that keeps killing it.
    """
    domains = get_settings().worker_domains or list(DOMAINS)
    stopping = threading.Event()
    child = 0

    def stop(_signum: int, _frame: FrameType | None) -> None:
        stopping.set()
        if child:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    while not stopping.is_set():
        # os.fork, not multiprocessing: run as a Dramatiq fork function, the lane is a daemonic
        # process, and those may not have multiprocessing children.
        parent = os.getpid()
        child = os.fork()
        if child == 0:
            die_with_parent(signal.SIGTERM, parent)
            code = 0
            try:
                _serve_suspect_lane(domains)
            except BaseException:
                log.exception("suspect lane failed")
                code = 1
            os._exit(code)
        _pid, status = os.waitpid(child, 0)
        child = 0
        if not stopping.is_set():
            log.warning("suspect lane exited (status %s); restarting it", status)
            stopping.wait(1.0)
    return 0


def _serve_suspect_lane(domains: list[str]) -> None:
    """One message at a time: prefetch 1, one thread."""
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda _signum, _frame: stopping.set())
    broker.prefetch = 1
    worker = dramatiq.Worker(broker, queues={suspect_queue(d) for d in domains}, worker_threads=1)
    worker.start()
    log.info("suspect lane running for %s", ", ".join(domains))
    stopping.wait()
    worker.stop(timeout=int(get_settings().shutdown_timeout_s * 1000))
    broker.close()
