"""How the consumer thread names a delivery's actor, parsing its envelope once for the worker."""

from __future__ import annotations

import pytest

from queues.envelope import ParsedEnvelope, seal
from queues.errors import EnvelopeError
from queues.keys import KeyRegistry, ProducerKey
from tests.support.factories import sample
from tests.support.lifecycle import delivery_of
from workers import app

KEYS = KeyRegistry([ProducerKey.generate("order-management", ["billing.*", "crm.*"])])


def sealed_charge() -> bytes:
    return seal(sample("billing.charge.post"), KEYS.sealing_key("order-management")).body


def test_a_readable_envelope_names_its_types_actor_and_travels_parsed() -> None:
    delivery = delivery_of(sealed_charge(), "billing", None)
    assert app.choose_actor(delivery) == "billing__billing_charge_post"
    assert isinstance(delivery.envelope, ParsedEnvelope)
    assert delivery.envelope.header.message_type == "billing.charge.post"


def test_a_type_that_does_not_reach_the_queue_is_unreadable_there() -> None:
    delivery = delivery_of(sealed_charge(), "crm.suspect", None)
    assert app.choose_actor(delivery) == "crm_suspect__unreadable"


def test_a_refused_envelope_goes_to_the_unreadable_actor_with_its_refusal() -> None:
    delivery = delivery_of(b"not an envelope", "billing", "billing.charge.post")
    assert app.choose_actor(delivery) == "billing__unreadable"
    assert isinstance(delivery.envelope, EnvelopeError)


def test_a_parser_bug_never_escapes_the_consumer_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(body: bytes, **options: object) -> ParsedEnvelope:
        raise RuntimeError("a bug")

    monkeypatch.setattr(app, "parse", broken)
    delivery = delivery_of(sealed_charge(), "billing", None)
    # the lenient header reading still names the actor; the lifecycle parses again, on a
    # worker thread, where the failure gets its outcome
    assert app.choose_actor(delivery) == "billing__billing_charge_post"
    assert delivery.envelope is None
