"""The envelope: every type round-trips, each failure has its own reason, no payload value leaks."""

from __future__ import annotations

import json
import logging
import pickle
import uuid
from typing import Any

import pytest

from queues.contracts import CATALOGUE
from queues.envelope import open_envelope, peek_header, peek_raw_header, seal
from queues.errors import (
    ENVELOPE_ERRORS,
    AuthenticationFailed,
    BodyTooLarge,
    EnvelopeError,
    InvalidHeader,
    InvalidPayload,
    NotAuthorized,
    NotJwe,
    UnknownKid,
    UnknownSchemaVersion,
    UnknownType,
    UnsupportedAlgorithm,
)
from queues.keys import KeyRegistry, ProducerKey
from tests.support.factories import sample, sample_fields
from tests.support.jose import flip_ciphertext_bit, header_for, replace_header, seal_raw

SECRET = "PLANTED-SECRET-7f3a9c"


@pytest.mark.parametrize(("message_type", "version"), sorted(CATALOGUE))
def test_every_type_and_version_round_trips(
    keys: KeyRegistry, message_type: str, version: int
) -> None:
    payload = sample(message_type, version)
    sealed = seal(payload, keys.sealing_key("fleet"), correlation_id=uuid.uuid4())
    opened = open_envelope(sealed.body, keys)
    assert opened.payload == payload
    assert type(opened.payload) is type(payload)
    assert opened.header == sealed.header
    assert opened.header.message_type == message_type
    assert opened.header.schema_version == version


def test_header_is_readable_without_any_key(keys: KeyRegistry) -> None:
    payload = sample("crm.customer.upsert", entity_version=42, name=SECRET)
    sealed = seal(payload, keys.sealing_key("self-care"))
    header = peek_header(sealed.body)
    assert header.message_id == sealed.message_id
    assert header.producer == "self-care"
    assert header.entity_version == 42
    assert SECRET not in json.dumps(peek_raw_header(sealed.body))
    assert SECRET.encode() not in sealed.body


def test_each_seal_uses_a_fresh_nonce(keys: KeyRegistry) -> None:
    payload = sample("provisioning.service.resume")
    key = keys.sealing_key("fleet")
    first = seal(payload, key, message_id=uuid.UUID(int=1))
    second = seal(payload, key, message_id=uuid.UUID(int=1))
    assert first.body.split(b".")[2] != second.body.split(b".")[2]


# -- one reason per failure ------------------------------------------------------------------------


def _payload_bytes(message_type: str, **overrides: Any) -> bytes:
    return sample(message_type, **overrides).model_dump_json().encode()


def _raw(
    keys: KeyRegistry, key_owner: str, header_type: str, plaintext: bytes, /, **header: Any
) -> bytes:
    """Seal ``plaintext`` with ``key_owner``'s key under a header whose fields may be overridden."""
    key = keys.sealing_key(key_owner)
    fields = header_for(key, header_type)
    fields.update(header)
    return seal_raw({k: v for k, v in fields.items() if v is not None}, plaintext, key)


def _with_part(body: bytes, index: int, part: bytes) -> bytes:
    parts = body.split(b".")
    parts[index] = part
    return b".".join(parts)


def _other_key(producer: str = "self-care") -> ProducerKey:
    return ProducerKey.generate(producer, ["crm.*"])


CASES: dict[str, Any] = {
    "body_too_large": lambda k: (b"x" * 300_000, BodyTooLarge),
    "not_jwe_text": lambda k: (b"hello world", NotJwe),
    "not_jwe_garbage": lambda k: (bytes(range(256)), NotJwe),
    "not_jwe_pickle": lambda k: (pickle.dumps({"cmd": "rm -rf /"}), NotJwe),
    "not_jwe_header_not_json": lambda k: (b"bm90IGpzb24.a.b.c.d", NotJwe),
    "not_jwe_header_array": lambda k: (b"WzEsMl0.a.b.c.d", NotJwe),
    "wrong_alg": lambda k: (
        replace_header(
            _raw(
                k,
                "fleet",
                "provisioning.service.resume",
                _payload_bytes("provisioning.service.resume"),
            ),
            {"alg": "A256KW", "enc": "A256GCM", "kid": k.sealing_key("fleet").kid},
        ),
        UnsupportedAlgorithm,
    ),
    "wrong_enc": lambda k: (
        replace_header(
            _raw(
                k,
                "fleet",
                "provisioning.service.resume",
                _payload_bytes("provisioning.service.resume"),
            ),
            {"alg": "dir", "enc": "A128GCM", "kid": k.sealing_key("fleet").kid},
        ),
        UnsupportedAlgorithm,
    ),
    "zip": lambda k: (
        replace_header(
            _raw(k, "fleet", "provisioning.service.resume", b"{}"),
            {"alg": "dir", "enc": "A256GCM", "zip": "DEF", "kid": k.sealing_key("fleet").kid},
        ),
        UnsupportedAlgorithm,
    ),
    "no_kid": lambda k: (
        replace_header(
            _raw(k, "fleet", "provisioning.service.resume", b"{}"), {"alg": "dir", "enc": "A256GCM"}
        ),
        InvalidHeader,
    ),
    "header_without_message_id": lambda k: (
        _raw(
            k,
            "fleet",
            "provisioning.service.resume",
            _payload_bytes("provisioning.service.resume"),
            message_id=None,
        ),
        InvalidHeader,
    ),
    "header_without_type": lambda k: (
        _raw(
            k,
            "fleet",
            "provisioning.service.resume",
            _payload_bytes("provisioning.service.resume"),
            message_type=None,
        ),
        InvalidHeader,
    ),
    "entity_version_differs": lambda k: (
        _raw(
            k,
            "self-care",
            "crm.customer.upsert",
            _payload_bytes("crm.customer.upsert", entity_version=3),
            entity_version=4,
        ),
        InvalidHeader,
    ),
    "unknown_kid": lambda k: (
        seal(sample("crm.interaction.log"), _other_key()).body,
        UnknownKid,
    ),
    "tampered_ciphertext": lambda k: (
        flip_ciphertext_bit(seal(sample("crm.interaction.log"), k.sealing_key("self-care")).body),
        AuthenticationFailed,
    ),
    "tampered_header": lambda k: (
        replace_header(
            (body := seal(sample("billing.payment.record"), k.sealing_key("payment-gateway")).body),
            {**peek_raw_header(body), "schema_version": 1, "correlation_id": str(uuid.uuid4())},
        ),
        AuthenticationFailed,
    ),
    "swapped_headers": lambda k: (
        b".".join(
            [
                seal(sample("crm.interaction.log"), k.sealing_key("self-care")).body.split(b".")[0],
                *seal(sample("crm.interaction.log"), k.sealing_key("self-care")).body.split(b".")[
                    1:
                ],
            ]
        ),
        AuthenticationFailed,
    ),
    "producer_not_owner_of_kid": lambda k: (
        _raw(
            k,
            "payment-gateway",
            "billing.payment.record",
            _payload_bytes("billing.payment.record"),
            producer="order-management",
        ),
        NotAuthorized,
    ),
    "type_not_allowed_for_producer": lambda k: (
        _raw(k, "payment-gateway", "billing.charge.post", _payload_bytes("billing.charge.post")),
        NotAuthorized,
    ),
    "unknown_type": lambda k: (
        _raw(k, "fleet", "billing.charge.refund", b"{}"),
        UnknownType,
    ),
    "unknown_schema_version": lambda k: (
        _raw(
            k,
            "fleet",
            "billing.charge.post",
            _payload_bytes("billing.charge.post"),
            schema_version=9,
        ),
        UnknownSchemaVersion,
    ),
    "padded_header_segment": lambda k: (
        b"=" + seal(sample("crm.interaction.log"), k.sealing_key("self-care")).body,
        NotJwe,
    ),
    "encrypted_key_not_empty_for_dir": lambda k: (
        _with_part(
            seal(sample("crm.interaction.log"), k.sealing_key("self-care")).body, 1, b"AAAA"
        ),
        NotJwe,
    ),
    "iv_not_96_bits": lambda k: (
        _with_part(
            seal(sample("crm.interaction.log"), k.sealing_key("self-care")).body, 2, b"AAAA"
        ),
        NotJwe,
    ),
    "crit_member": lambda k: (
        replace_header(
            (body := _raw(k, "fleet", "provisioning.service.resume", b"{}")),
            {**peek_raw_header(body), "crit": ["exp"], "exp": 1},
        ),
        InvalidHeader,
    ),
    "kid_longer_than_128": lambda k: (
        _raw(k, "fleet", "provisioning.service.resume", b"{}", kid="k" * 129),
        InvalidHeader,
    ),
    "message_id_not_canonical": lambda k: (
        _raw(
            k,
            "fleet",
            "provisioning.service.resume",
            _payload_bytes("provisioning.service.resume"),
            message_id=str(uuid.uuid4()).upper(),
        ),
        InvalidHeader,
    ),
    "created_at_as_unix_digits": lambda k: (
        _raw(
            k,
            "fleet",
            "provisioning.service.resume",
            _payload_bytes("provisioning.service.resume"),
            created_at="1763767503",
        ),
        InvalidHeader,
    ),
    "payload_not_json": lambda k: (
        _raw(k, "fleet", "billing.charge.post", b"\x80\x81 not json"),
        InvalidPayload,
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_failure_has_its_own_typed_reason(keys: KeyRegistry, case: str) -> None:
    body, expected = CASES[case](keys)
    with pytest.raises(EnvelopeError) as caught:
        open_envelope(body, keys)
    assert type(caught.value) is expected
    assert caught.value.reason == expected.reason
    assert caught.value.__cause__ is None


def test_reason_codes_are_unique_and_only_skew_is_retryable() -> None:
    reasons = [e.reason for e in ENVELOPE_ERRORS]
    assert len(reasons) == len(set(reasons))
    assert {e.reason for e in ENVELOPE_ERRORS if e.retryable} == {
        "unknown_kid",
        "unknown_schema_version",
    }


INVALID_PAYLOADS: dict[str, tuple[str, dict[str, Any]]] = {
    "wrong_type": (
        "billing.charge.post",
        {"amount": {"amount_minor": SECRET, "currency": "EUR", "exponent": 2}},
    ),
    "string_number": (
        "billing.charge.post",
        {
            "amount": {"amount_minor": "1999", "currency": "EUR", "exponent": 2},
            "description": SECRET,
        },
    ),
    "extra_field": ("crm.interaction.log", {"secret_note": SECRET}),
    "negative_amount": (
        "billing.payment.record",
        {
            "amount": {"amount_minor": -5, "currency": "EUR", "exponent": 2},
            "gateway_reference": SECRET,
        },
    ),
    "wrong_exponent": (
        "billing.charge.post",
        {"amount": {"amount_minor": 1999, "currency": "JPY", "exponent": 2}, "description": SECRET},
    ),
    "bad_msisdn": ("provisioning.service.activate", {"msisdn": SECRET}),
    "bad_uuid": ("crm.interaction.log", {"customer_id": SECRET}),
}


@pytest.mark.parametrize("case", sorted(INVALID_PAYLOADS))
def test_invalid_payload_names_fields_never_values(
    keys: KeyRegistry, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    message_type, overrides = INVALID_PAYLOADS[case]
    document = json.loads(sample(message_type).model_dump_json())
    document.update(overrides)
    body = _raw(keys, "fleet", message_type, json.dumps(document).encode())
    with pytest.raises(InvalidPayload) as caught:
        open_envelope(body, keys)
    error = caught.value
    assert error.reason == "invalid_payload"
    for text in (str(error), repr(error), error.message, *(r.getMessage() for r in caplog.records)):
        assert SECRET not in text
    assert SECRET[:8] not in str(error)
    assert str(error).startswith("invalid payload: ")


def test_invalid_payload_message_names_the_field(keys: KeyRegistry) -> None:
    document = json.loads(sample("billing.charge.post").model_dump_json())
    document["amount"]["amount_minor"] = -1
    body = _raw(keys, "fleet", "billing.charge.post", json.dumps(document).encode())
    with pytest.raises(InvalidPayload, match=r"amount\.amount_minor: greater_than_equal"):
        open_envelope(body, keys)


def test_sealing_a_type_the_producer_may_not_send_is_not_authorized(keys: KeyRegistry) -> None:
    with pytest.raises(NotAuthorized):
        seal(sample("billing.charge.post"), keys.sealing_key("payment-gateway"))


def test_another_producers_kid_is_not_authorized(keys: KeyRegistry) -> None:
    stolen = keys.sealing_key("self-care")
    header = header_for(stolen, "crm.interaction.log", producer="payment-gateway")
    body = seal_raw(header, _payload_bytes("crm.interaction.log"), stolen)
    with pytest.raises(NotAuthorized, match="another producer"):
        open_envelope(body, keys)


def test_after_rotation_old_envelopes_still_open_and_new_ones_use_the_new_key(
    keys: KeyRegistry,
) -> None:
    old_key = keys.sealing_key("payment-gateway")
    old = seal(sample("billing.payment.record"), old_key)
    newer = ProducerKey.generate("payment-gateway", ["billing.payment.*"])
    newer = ProducerKey(
        kid=newer.kid + "b",
        producer=newer.producer,
        types=newer.types,
        created_at=old_key.created_at.replace(year=old_key.created_at.year + 1),
        secret=newer.secret,
    )
    keys.add(newer)
    assert keys.sealing_key("payment-gateway").kid == newer.kid
    fresh = seal(sample("billing.payment.record"), keys.sealing_key("payment-gateway"))
    assert peek_header(fresh.body).kid == newer.kid
    assert open_envelope(old.body, keys).header.kid == old_key.kid
    assert open_envelope(fresh.body, keys).header.kid == newer.kid
    keys.remove(old_key.kid)
    with pytest.raises(UnknownKid):
        open_envelope(old.body, keys)


def test_body_limit_is_configurable(keys: KeyRegistry) -> None:
    sealed = seal(sample("crm.interaction.log"), keys.sealing_key("self-care"))
    with pytest.raises(BodyTooLarge):
        open_envelope(sealed.body, keys, max_body_bytes=len(sealed.body) - 1)
    assert open_envelope(sealed.body, keys, max_body_bytes=len(sealed.body)).payload


def test_large_bodies_under_the_limit_open(keys: KeyRegistry) -> None:
    fields = sample_fields("crm.interaction.log")
    payload = sample("crm.interaction.log", note="n" * 2000, **{"topic": "t" * 200})
    assert payload.model_dump()["interaction_id"] != fields["interaction_id"]
    sealed = seal(payload, keys.sealing_key("self-care"))
    assert open_envelope(sealed.body, keys).payload == payload
