"""Sentry gets one scrubbed event per dead letter and nothing for a retried message."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import sentry_sdk
from sentry_sdk.envelope import Envelope
from sentry_sdk.transport import Transport
from sentry_sdk.types import Event, Hint

from queues.envelope import OpenedMessage, seal
from queues.errors import NotYet
from queues.keys import KeyRegistry
from tests.support.factories import sample
from tests.support.jose import flip_ciphertext_bit
from tests.support.lifecycle import delivery_of, delivery_of_sealed, drive
from workers.observability import sentry as fleet_sentry

SECRET = "Planted-Secret-Sentry-41c2"
DSN = "https://public@sentry.invalid/1"


class RecordingTransport(Transport):
    """Keeps every envelope the client would send."""

    def __init__(self) -> None:
        super().__init__()
        self.envelopes: list[Envelope] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        self.envelopes.append(envelope)

    def events(self) -> list[dict[str, Any]]:
        return [e.get_event() for e in self.envelopes if e.get_event() is not None]  # type: ignore[misc]

    def raw(self) -> bytes:
        return b"".join(e.serialize() for e in self.envelopes)


@pytest.fixture
def transport(monkeypatch: pytest.MonkeyPatch) -> Iterator[RecordingTransport]:
    recording = RecordingTransport()
    monkeypatch.setattr(fleet_sentry, "_initialised_pid", None)
    assert fleet_sentry.init_sentry(DSN, environment="test", transport=recording)
    with sentry_sdk.isolation_scope():
        yield recording
    sentry_sdk.get_client().close()
    sentry_sdk.get_global_scope().set_client(None)


def test_no_dsn_no_sentry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fleet_sentry, "_initialised_pid", None)
    assert fleet_sentry.init_sentry(None) is False
    assert not sentry_sdk.get_client().is_active()


def test_no_integration_is_installed_least_of_all_dramatiq(transport: RecordingTransport) -> None:
    options = sentry_sdk.get_client().options
    assert sentry_sdk.get_client().integrations == {}
    assert not options["send_default_pii"]
    assert options["data_collection"]["user_info"] is False
    assert options["data_collection"]["stack_frame_variables"] is False
    assert options["include_local_variables"] is False
    assert options["max_breadcrumbs"] == 0


def test_a_retried_message_sends_nothing_a_dead_letter_one_tagged_event(
    keys: KeyRegistry, transport: RecordingTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a lifecycle reporting dead letters to Sentry, and a careless handler that leaves
    # the decrypted payload everywhere Sentry reads from (scope, exception text) before failing
    decrypted: list[str] = []

    def not_yet(queue: str, opened: OpenedMessage) -> str:
        payload = opened.payload.model_dump(mode="json")
        decrypted.append(payload["name"])
        sentry_sdk.set_extra("payload", payload)
        sentry_sdk.set_context("customer", {"name": payload["name"]})
        sentry_sdk.set_user({"username": payload["name"]})
        sentry_sdk.add_breadcrumb(message=f"upserting {payload['name']}")
        raise NotYet(f"account of {payload['name']} not open yet")

    before_scrubbing = record_events_before_scrubbing(monkeypatch)
    driven = drive(keys, not_yet, max_attempts=2)
    driven.events.subscribe(fleet_sentry.report_dead_letter)
    key = keys.sealing_key("self-care")
    payload = sample("crm.customer.upsert", name=SECRET)
    retried = seal(payload, key)

    # When a message is retried: nothing is sent
    driven.process(delivery_of_sealed(retried, "crm"))
    assert [e.routing_key for e in driven.publisher.published] == ["crm.5s"]
    assert transport.events() == []

    # When a tampered envelope dies at once: one event, tagged
    tampered = seal(payload, key)
    driven.process(
        delivery_of(
            flip_ciphertext_bit(tampered.body),
            "crm",
            "crm.customer.upsert",
            str(tampered.message_id),
        )
    )
    # And when the retried one comes back and runs out of attempts: a second event
    again = delivery_of_sealed(retried, "crm")
    again.exchange, again.headers = "", dict(driven.publisher.published[0].headers or {})
    driven.process(again)

    events = transport.events()
    assert [e["tags"]["reason"] for e in events] == ["authentication_failed", "not_yet_expired"]
    first = events[0]
    assert first["tags"]["message_id"] == str(tampered.message_id)
    assert first["tags"]["message_type"] == "crm.customer.upsert"
    assert first["tags"]["queue"] == "crm"
    assert first["tags"][fleet_sentry.FINAL_FAILURE_TAG] == "true"
    assert first["level"] == "error"
    assert first["fingerprint"] == [
        "fleet.dead",
        "crm",
        "crm.customer.upsert",
        "authentication_failed",
    ]
    # The payload was decrypted and its secret reached both dead-letter events, scope and all;
    # what Sentry sends has none of it
    assert decrypted == [SECRET, SECRET]
    assert len(before_scrubbing) == 2
    assert all(SECRET in event for event in before_scrubbing)
    assert SECRET.encode() not in transport.raw()


def record_events_before_scrubbing(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Events as they reach the client's ``before_send`` (whatever init set it to), as JSON."""
    options = sentry_sdk.get_client().options
    configured = options["before_send"]
    seen: list[str] = []

    def record_then_scrub(event: Event, hint: Hint) -> Event | None:
        seen.append(json.dumps(event, default=str))
        return configured(event, hint) if configured is not None else event

    monkeypatch.setitem(options, "before_send", record_then_scrub)
    return seen


def test_the_scrubber_drops_other_events_and_strips_what_may_hold_payload(
    transport: RecordingTransport,
) -> None:
    with sentry_sdk.isolation_scope():
        # Given a scope that someone filled with payload in every place Sentry offers
        sentry_sdk.set_extra("payload", {"name": SECRET})
        sentry_sdk.set_context("message", {"name": SECRET})
        sentry_sdk.set_user({"username": SECRET})
        sentry_sdk.add_breadcrumb(message=SECRET)

        # When anything but a final failure is captured: nothing is sent
        sentry_sdk.capture_message(f"boom {SECRET}")
        try:
            local_secret = SECRET
            raise ValueError(local_secret)
        except ValueError:
            sentry_sdk.capture_exception()
        assert transport.events() == []

        # When a final failure carries an exception with frame variables: they are gone
        event = {
            "message": "dead-lettered crm.customer.upsert from crm: invalid_payload",
            "level": "error",
            "tags": {fleet_sentry.FINAL_FAILURE_TAG: "true", "reason": "invalid_payload"},
            "request": {"data": SECRET},
            "exception": {
                "values": [
                    {
                        "type": "InvalidPayload",
                        "value": "invalid payload: name: string_too_long",
                        "stacktrace": {"frames": [{"function": "f", "vars": {"payload": SECRET}}]},
                    }
                ]
            },
        }
        sentry_sdk.capture_event(event)
        [sent] = transport.events()
        assert "request" not in sent and "extra" not in sent and "user" not in sent
        assert set(sent.get("contexts", {})) <= fleet_sentry.KEPT_CONTEXTS
        assert "vars" not in sent["exception"]["values"][0]["stacktrace"]["frames"][0]
        assert SECRET.encode() not in transport.raw()
