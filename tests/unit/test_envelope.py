"""The envelope: every type round-trips, each failure has its own reason, no payload value leaks."""

from __future__ import annotations

import base64
import json
import logging
import os
import pickle
import uuid
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from joserfc import jwe
from joserfc.jwk import OctKey

from queues.contracts import CATALOGUE
from queues.envelope import (
    MAX_HEADER_SEGMENT_BYTES,
    decrypt_with,
    encrypt_with,
    open_envelope,
    parse,
    peek_header,
    peek_raw_header,
    seal,
)
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
from tests.support.jose import b64, flip_ciphertext_bit, header_for, replace_header, seal_raw

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


def unb64(part: bytes) -> bytes:
    return base64.urlsafe_b64decode(part + b"=" * (-len(part) % 4))


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
    "zip_on_a_complete_header": lambda k: (
        replace_header(
            (body := seal(sample("billing.charge.post"), k.sealing_key("fleet")).body),
            {**peek_raw_header(body), "zip": "DEF"},
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
    "schema_version_as_text": lambda k: (
        _raw(k, "fleet", "billing.charge.post", b"{}", schema_version="1"),
        InvalidHeader,
    ),
    "schema_version_as_float": lambda k: (
        _raw(k, "fleet", "billing.charge.post", b"{}", schema_version=1.0),
        InvalidHeader,
    ),
    "entity_version_as_boolean": lambda k: (
        _raw(
            k,
            "self-care",
            "crm.customer.upsert",
            _payload_bytes("crm.customer.upsert", entity_version=1),
            entity_version=True,
        ),
        InvalidHeader,
    ),
    "cty_abbreviated": lambda k: (
        _raw(k, "fleet", "billing.charge.post", b"{}", cty="json"),
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


# -- the compact form, parsed strictly -------------------------------------------------------------

IV, CIPHERTEXT, TAG = 2, 3, 4  # parts of a compact JWE (0 the header, 1 the empty key)
JOSERFC = jwe.JWERegistry(algorithms=["dir", "A256GCM"], strict_check_header=False)


def _flip_bit(part: bytes, byte: int) -> bytes:
    raw = bytearray(unb64(part))
    raw[byte] ^= 0x80
    return b64(bytes(raw))


@pytest.mark.parametrize(("message_type", "version"), sorted(CATALOGUE))
def test_joserfc_opens_what_is_sealed_here_and_this_opens_what_joserfc_sealed(
    keys: KeyRegistry, message_type: str, version: int
) -> None:
    # Given a key and a payload; joserfc is an independent JOSE implementation
    key = keys.sealing_key("fleet")
    payload = sample(message_type, version)
    plaintext = payload.model_dump_json().encode()

    # When each side seals, the other opens
    sealed = seal(payload, key, correlation_id=uuid.uuid4())
    token = jwe.decrypt_compact(sealed.body, OctKey.import_key(key.secret), registry=JOSERFC)
    foreign = seal_raw(sealed.header.to_jose(), plaintext, key)
    opened = open_envelope(foreign, keys)

    # Then both read the same header and payload
    assert token.protected == sealed.header.to_jose()
    assert token.plaintext == plaintext
    assert (opened.header, opened.payload) == (sealed.header, payload)


def test_the_aad_is_the_header_part_as_received_not_its_meaning(keys: KeyRegistry) -> None:
    body = seal(sample("billing.charge.post"), keys.sealing_key("fleet")).body
    same_header_spelled_otherwise = json.dumps(peek_raw_header(body), indent=1).encode()

    altered = _with_part(body, 0, b64(same_header_spelled_otherwise))

    assert peek_header(altered) == peek_header(body)
    with pytest.raises(AuthenticationFailed):
        open_envelope(altered, keys)


@pytest.mark.parametrize("part", [IV, CIPHERTEXT, TAG], ids=["iv", "ciphertext", "tag"])
@pytest.mark.parametrize("byte", [0, 5, -1], ids=["first", "sixth", "last"])
def test_one_flipped_bit_in_iv_ciphertext_or_tag_fails_authentication(
    keys: KeyRegistry, part: int, byte: int
) -> None:
    body = seal(sample("billing.charge.post"), keys.sealing_key("fleet")).body
    altered = _with_part(body, part, _flip_bit(body.split(b".")[part], byte))
    with pytest.raises(AuthenticationFailed):
        open_envelope(altered, keys)


MALFORMED_PARTS: dict[str, tuple[int, Any]] = {
    "encrypted_key_not_empty": (1, lambda part: b"AAAA"),
    "iv_15_chars": (IV, lambda part: part[:-1]),
    "iv_17_chars": (IV, lambda part: part + b"A"),
    "tag_21_chars": (TAG, lambda part: part[:-1]),
    "tag_23_chars": (TAG, lambda part: part + b"A"),
    "iv_padded": (IV, lambda part: part[:-2] + b"=="),
    "tag_padded": (TAG, lambda part: part[:-2] + b"=="),
    "ciphertext_padded": (CIPHERTEXT, lambda part: part + b"=" * (-len(part) % 4 or 4)),
    "ciphertext_plus_slash": (CIPHERTEXT, lambda part: b"+/" + part[2:]),
    "iv_with_space": (IV, lambda part: b" " + part[1:]),
    "tag_with_line_break": (TAG, lambda part: part[:-1] + b"\n"),
    "ciphertext_line_break": (CIPHERTEXT, lambda part: part + b"\n"),
    "ciphertext_4n_plus_1": (CIPHERTEXT, lambda part: part[: len(part) // 4 * 4 + 1]),
    "header_with_line_break": (0, lambda part: part + b"\n"),
    "header_padded": (0, lambda part: part + b"=" * (-len(part) % 4 or 4)),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_PARTS))
def test_a_malformed_part_is_not_jwe_before_any_key_is_used(keys: KeyRegistry, case: str) -> None:
    index, change = MALFORMED_PARTS[case]
    body = seal(sample("billing.charge.post"), keys.sealing_key("fleet")).body
    malformed = _with_part(body, index, change(body.split(b".")[index]))
    with pytest.raises(NotJwe):
        open_envelope(malformed, KeyRegistry([]))  # no key: AES-GCM never runs


def test_a_header_nested_too_deep_for_json_is_not_jwe(keys: KeyRegistry) -> None:
    body = seal(sample("billing.charge.post"), keys.sealing_key("fleet")).body
    nested = b'{"x":' + b"[" * 1500 + b"]" * 1500 + b"}"
    deep = _with_part(body, 0, b64(nested))
    assert len(b64(nested)) <= MAX_HEADER_SEGMENT_BYTES
    for read in (peek_raw_header, peek_header, lambda b: open_envelope(b, keys), parse):
        with pytest.raises(NotJwe):
            read(deep)


ORDER: dict[str, tuple[dict[str, Any], dict[int, bytes], type[EnvelopeError], str]] = {
    # header changes, part replacements: the error that comes first, and its message
    "algorithm_before_the_dir_shape": (
        {"alg": "A256KW"},
        {IV: b"AAAA"},
        UnsupportedAlgorithm,
        "only alg 'dir' with enc 'A256GCM' and no zip is accepted",
    ),
    "zip_before_the_dir_shape": (
        {"zip": "DEF"},
        {IV: b"AAAA"},
        UnsupportedAlgorithm,
        "only alg 'dir' with enc 'A256GCM' and no zip is accepted",
    ),
    "dir_shape_before_crit": (
        {"crit": ["exp"], "exp": 1},
        {TAG: b"AAAA"},
        NotJwe,
        "A256GCM needs a 96-bit IV and a 128-bit tag",
    ),
    "dir_shape_before_header_fields": (
        {"message_id": "NOT-A-UUID"},
        {1: b"AAAA"},
        NotJwe,
        "the encrypted-key part must be empty for alg 'dir'",
    ),
    "crit_before_header_fields": (
        {"crit": ["exp"], "message_id": None},
        {},
        InvalidHeader,
        "invalid header: crit: no critical extensions are understood",
    ),
    "kid_before_header_fields": (
        {"kid": None, "message_type": None},
        {},
        InvalidHeader,
        "invalid header: kid: missing",
    ),
    "header_fields_before_the_kid_is_looked_up": (
        {"kid": "unknown.kid", "schema_version": 0},
        {},
        InvalidHeader,
        "invalid header: schema_version: greater_than_equal",
    ),
}


@pytest.mark.parametrize("case", sorted(ORDER))
def test_checks_before_authentication_come_in_the_documented_order(
    keys: KeyRegistry, case: str
) -> None:
    changes, parts, expected, message = ORDER[case]
    body = seal(sample("billing.charge.post"), keys.sealing_key("fleet")).body
    header = {k: v for k, v in {**peek_raw_header(body), **changes}.items() if v is not None}
    altered = replace_header(body, header)
    for index, part in parts.items():
        altered = _with_part(altered, index, part)
    with pytest.raises(EnvelopeError) as caught:
        open_envelope(altered, keys)
    assert type(caught.value) is expected
    assert str(caught.value) == message


# -- parse once, then open -------------------------------------------------------------------------

BEFORE_AUTHENTICATION = (BodyTooLarge, NotJwe, UnsupportedAlgorithm, InvalidHeader)


@pytest.mark.parametrize("case", sorted(CASES))
def test_parse_then_open_fails_exactly_as_open_alone(keys: KeyRegistry, case: str) -> None:
    body, expected = CASES[case](keys)
    try:
        parsed = parse(body)
    except EnvelopeError as exc:
        # Then parse refused it with the very error open_envelope gives
        assert type(exc) is expected
        assert isinstance(exc, BEFORE_AUTHENTICATION)
        return
    assert parsed.header == peek_header(body)
    with pytest.raises(EnvelopeError) as caught:
        open_envelope(parsed, keys)
    assert type(caught.value) is expected


def test_a_parsed_envelope_opens_to_what_the_body_opens_to(keys: KeyRegistry) -> None:
    sealed = seal(sample("crm.customer.upsert", 2), keys.sealing_key("self-care"))

    parsed = parse(sealed.body)

    assert parsed.header == sealed.header == peek_header(sealed.body)
    assert open_envelope(parsed, keys) == open_envelope(sealed.body, keys)
    assert sealed.body not in repr(parsed).encode()


def test_open_checks_a_parsed_envelopes_size_against_its_own_limit(keys: KeyRegistry) -> None:
    body = seal(sample("crm.interaction.log"), keys.sealing_key("self-care")).body
    parsed = parse(body)
    with pytest.raises(BodyTooLarge):
        open_envelope(parsed, keys, max_body_bytes=len(body) - 1)
    with pytest.raises(BodyTooLarge):
        parse(body, max_body_bytes=len(body) - 1)


def test_the_sealed_header_is_the_one_a_worker_reads(keys: KeyRegistry) -> None:
    sealed = seal(sample("billing.charge.post"), keys.sealing_key("fleet"))
    segment = sealed.body.split(b".")[0]

    assert (
        unb64(segment)
        == json.dumps(sealed.header.to_jose(), ensure_ascii=True, separators=(",", ":")).encode()
    )
    assert sealed.header == peek_header(sealed.body)


# -- re-sealing (the archive's way) ----------------------------------------------------------------


def _sealed_by_hand(header: dict[str, Any], key: ProducerKey, plaintext: bytes = b"{}") -> bytes:
    """RFC 7516 compact, dir/A256GCM, written out with cryptography alone."""
    protected = b64(json.dumps(header).encode())
    iv = os.urandom(12)
    sealed = AESGCM(key.secret).encrypt(iv, plaintext, protected)
    return b".".join([protected, b"", b64(iv), b64(sealed[:-16]), b64(sealed[-16:])])


def test_decrypt_with_opens_what_is_sealed_by_hand(keys: KeyRegistry) -> None:
    key = keys.sealing_key("fleet")
    header = header_for(key, "billing.charge.post")
    assert decrypt_with(_sealed_by_hand(header, key, b"text"), key) == (header, b"text")


def test_encrypt_with_and_decrypt_with_keep_any_extra_header_member(keys: KeyRegistry) -> None:
    key = keys.sealing_key("fleet")
    header = {**header_for(key, "billing.charge.post"), "archived_from": "old.kid", "x": "ä"}

    body = encrypt_with(header, b"plaintext", key)

    assert decrypt_with(body, key) == (header, b"plaintext")
    token = jwe.decrypt_compact(body, OctKey.import_key(key.secret), registry=JOSERFC)
    assert (token.protected, token.plaintext) == (header, b"plaintext")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"alg": "A256KW"}, UnsupportedAlgorithm),
        ({"enc": "A128GCM"}, UnsupportedAlgorithm),
        ({"zip": "DEF"}, UnsupportedAlgorithm),
        ({"crit": ["exp"]}, InvalidHeader),
    ],
)
def test_encrypt_with_refuses_a_header_it_would_not_honour(
    keys: KeyRegistry, change: dict[str, Any], expected: type[EnvelopeError]
) -> None:
    key = keys.sealing_key("fleet")
    with pytest.raises(expected):
        encrypt_with({**header_for(key, "billing.charge.post"), **change}, b"{}", key)


@pytest.mark.parametrize(
    "body",
    [
        b"not a jwe",
        b"e30....",
        lambda k: _with_part(seal(sample("crm.interaction.log"), k).body, IV, b"AAAA"),
        lambda k: replace_header(
            seal(sample("crm.interaction.log"), k).body, {"alg": "dir", "enc": "A128GCM"}
        ),
        lambda k: flip_ciphertext_bit(seal(sample("crm.interaction.log"), k).body),
        lambda k: _sealed_by_hand({**header_for(k, "crm.interaction.log"), "crit": ["x"]}, k),
    ],
    ids=["text", "empty-parts", "short-iv", "other-enc", "tampered", "crit"],
)
def test_decrypt_with_answers_anything_it_cannot_open_as_authentication_failed(
    keys: KeyRegistry, body: Any
) -> None:
    key = keys.sealing_key("self-care")
    with pytest.raises(AuthenticationFailed) as caught:
        decrypt_with(body(key) if callable(body) else body, key)
    assert caught.value.__cause__ is None
