"""The lifecycle's decision table (workers/lifecycle.py's docstring), one case per branch.

A real ``Lifecycle`` with a stub publisher and a handler that fails as told: what each delivery
becomes — acked, a retry copy, a suspect-lane copy, a dead letter with its reason, or requeued —
and which ``x-fleet-*`` headers it carries. No broker, no database.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from handlers.errors import CurrencyMismatch, DatabaseUnavailable
from queues.deadletter import H_ATTEMPT, H_FIRST_FAILURE, H_LAST_REASON, H_REASON
from queues.envelope import OpenedMessage, seal
from queues.errors import NotYet
from queues.keys import KeyRegistry, ProducerKey
from queues.publisher import Outgoing
from queues.topology import DEAD_EXCHANGE, RETRY_EXCHANGE
from tests.support.factories import sample
from tests.support.lifecycle import Driven, delivery_of, drive
from workers.breaker import Breakers, CircuitBreaker
from workers.broker import Delivery, Settlement

MAX_ATTEMPTS = 3
PRODUCER = "order-management"
KEYS = KeyRegistry([ProducerKey.generate(PRODUCER, ["billing.*"])])
SECRET = "4111-1111-1111-1111"  # a payload value that must never reach a header


def failing(error: Exception | None) -> Callable[[str, OpenedMessage], str]:
    def apply(queue: str, opened: OpenedMessage) -> str:
        if error is not None:
            raise error
        return "ok"

    return apply


def charge(
    *,
    exchange: str = "fleet",
    headers: dict[str, Any] | None = None,
    routing_key: str | None = None,
    keys: KeyRegistry = KEYS,
    created_at: datetime | None = None,
) -> Delivery:
    sealed = seal(sample("billing.charge.post"), keys.sealing_key(PRODUCER), created_at=created_at)
    delivery = delivery_of(
        sealed.body,
        "billing",
        "billing.charge.post",
        str(sealed.message_id),
        exchange=exchange,
        headers=headers,
    )
    return dataclasses.replace(delivery, routing_key=routing_key or delivery.routing_key)


def run(error: Exception | None, delivery: Delivery) -> tuple[Driven, list[Outgoing]]:
    driven = drive(KEYS, failing(error), max_attempts=MAX_ATTEMPTS)
    driven.process(delivery)
    return driven, driven.publisher.published


def retried_at(attempt: int) -> dict[str, Any]:
    """The headers of a copy that came back from a retry tier after ``attempt - 1`` failures."""
    return {H_ATTEMPT: attempt, H_FIRST_FAILURE: datetime.now(UTC).isoformat()}


def test_a_handled_message_is_acked_and_nothing_is_published() -> None:
    delivery = charge()
    _, published = run(None, delivery)
    assert (delivery.settlement, published) == (Settlement.ACK, [])


def test_a_delivery_seen_twice_goes_to_the_suspect_lane_unopened() -> None:
    delivery = dataclasses.replace(charge(), redelivered=True, headers={"x-delivery-count": 1})
    _, [copy] = run(CurrencyMismatch("never reached"), delivery)
    assert (copy.exchange, copy.routing_key) == (RETRY_EXCHANGE, "billing.suspect")
    assert delivery.settlement is Settlement.ACK


def test_a_routing_key_other_than_the_headers_type_is_dead_misrouted() -> None:
    delivery = charge(routing_key="billing.payment.record")
    _, [dead] = run(None, delivery)
    assert (dead.exchange, dead.headers[H_REASON]) == (DEAD_EXCHANGE, "misrouted")


def test_an_unknown_kid_is_retried_within_the_skew_budget_then_dead() -> None:
    other = KeyRegistry([ProducerKey.generate(PRODUCER, ["billing.*"])])  # a kid KEYS lacks
    first = charge(keys=other)
    _, [retry] = run(None, first)
    assert retry.exchange == RETRY_EXCHANGE and retry.headers[H_ATTEMPT] == 2
    last = charge(keys=other, exchange=RETRY_EXCHANGE, headers=retried_at(2))
    _, [dead] = run(None, last)
    assert (dead.exchange, dead.headers[H_REASON]) == (DEAD_EXCHANGE, "unknown_kid")


def test_not_yet_is_retried_until_its_attempts_run_out() -> None:
    _, [retry] = run(NotYet("account"), charge())
    assert retry.exchange == RETRY_EXCHANGE
    assert (retry.headers[H_ATTEMPT], retry.headers[H_LAST_REASON]) == (2, "not_yet")
    last = charge(exchange=RETRY_EXCHANGE, headers=retried_at(MAX_ATTEMPTS))
    _, [dead] = run(NotYet("account"), last)
    assert (dead.exchange, dead.headers[H_REASON]) == (DEAD_EXCHANGE, "not_yet_expired")


def test_not_yet_past_its_horizon_is_dead_whatever_attempts_are_left() -> None:
    long_ago = (datetime.now(UTC) - timedelta(days=30)).isoformat()
    delivery = charge(exchange=RETRY_EXCHANGE, headers={H_ATTEMPT: 2, H_FIRST_FAILURE: long_ago})
    _, [dead] = run(NotYet("account"), delivery)
    assert dead.headers[H_REASON] == "not_yet_expired"


@pytest.mark.parametrize("skew", [timedelta(hours=-7), timedelta(hours=7)], ids=["slow", "fast"])
def test_the_horizon_counts_from_the_first_failure_not_the_producers_clock(
    skew: timedelta,
) -> None:
    # A producer whose clock is hours off: its first NotYet is retried, and the horizon starts
    # at that failure, on the fleet's clock.
    delivery = charge(created_at=datetime.now(UTC) + skew)
    _, [retry] = run(NotYet("account"), delivery)
    assert retry.exchange == RETRY_EXCHANGE
    first = datetime.fromisoformat(retry.headers[H_FIRST_FAILURE])
    assert abs(datetime.now(UTC) - first) < timedelta(minutes=1)


def test_a_permanent_error_is_dead_at_once_with_its_reason() -> None:
    _, [dead] = run(CurrencyMismatch("JPY on a EUR account"), charge())
    assert (dead.exchange, dead.headers[H_REASON]) == (DEAD_EXCHANGE, "currency_mismatch")


def test_an_unexpected_error_is_bounded_like_a_transient_one() -> None:
    _, [retry] = run(ValueError("a bug"), charge())
    assert retry.exchange == RETRY_EXCHANGE
    assert retry.headers[H_LAST_REASON] == "unexpected_error"
    last = charge(exchange=RETRY_EXCHANGE, headers=retried_at(MAX_ATTEMPTS))
    _, [dead] = run(ValueError("a bug"), last)
    assert dead.headers[H_REASON] == "retries_exhausted"
    assert dead.headers[H_LAST_REASON] == "unexpected_error"


def test_an_outage_that_opens_its_breaker_parks_the_message_without_using_an_attempt() -> None:
    paused: list[tuple[str, ...]] = []
    breaker = CircuitBreaker(
        "database",
        ("billing",),
        pause=paused.append,
        resume=lambda domains: None,
        failure_threshold=1,
        open_s=60,
    )
    driven = drive(KEYS, failing(DatabaseUnavailable("down")), max_attempts=MAX_ATTEMPTS)
    driven.lifecycle.breakers = Breakers([breaker])
    delivery = charge(exchange=RETRY_EXCHANGE, headers=retried_at(2))
    try:
        driven.process(delivery)
    finally:
        driven.lifecycle.breakers.close()
    [retry] = driven.publisher.published
    assert retry.exchange == RETRY_EXCHANGE and retry.headers[H_ATTEMPT] == 2  # not burned
    assert paused == [("billing",)]
    assert delivery.settlement is Settlement.ACK


def test_a_copy_the_broker_did_not_confirm_sends_the_original_back() -> None:
    driven = drive(KEYS, failing(NotYet("account")), max_attempts=MAX_ATTEMPTS)
    seen: list[dict[str, Any]] = []
    driven.events.subscribe(seen.append)
    driven.publisher.nack_next = 1
    delivery = charge()
    driven.process(delivery)
    assert delivery.settlement is Settlement.REQUEUE
    assert [e["event"] for e in seen] == ["requeued"]


@pytest.mark.parametrize("attempt", [MAX_ATTEMPTS, 99])
def test_a_publishers_own_x_fleet_headers_are_ignored(attempt: int) -> None:
    # Straight from a publisher (exchange fleet): a forged attempt cannot cut the retry budget.
    _, [retry] = run(NotYet("account"), charge(headers={H_ATTEMPT: attempt}))
    assert retry.exchange == RETRY_EXCHANGE and retry.headers[H_ATTEMPT] == 2


@pytest.mark.parametrize("garbage", ["3", -1, 0, None, [2]])
def test_a_garbage_attempt_header_counts_as_the_first_attempt(garbage: Any) -> None:
    delivery = charge(exchange=RETRY_EXCHANGE, headers={H_ATTEMPT: garbage})
    _, [retry] = run(NotYet("account"), delivery)
    assert retry.headers[H_ATTEMPT] == 2


def test_dead_letter_headers_carry_no_value_a_foreign_exception_quotes() -> None:
    last = charge(exchange=RETRY_EXCHANGE, headers=retried_at(MAX_ATTEMPTS))
    _, [dead] = run(ValueError(f"bad card {SECRET}"), last)
    assert dead.headers[H_REASON] == "retries_exhausted"
    assert SECRET not in repr(dead.headers)
