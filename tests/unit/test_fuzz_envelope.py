"""Property tests: whatever arrives, the opener answers with a documented typed error, or opens
to exactly what was sealed: an altered envelope never opens."""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from joserfc.errors import JoseError
from pydantic import ValidationError

from queues.contracts import MESSAGE_TYPES, model_for
from queues.envelope import (
    MAX_HEADER_SEGMENT_BYTES,
    EnvelopeHeader,
    OpenedMessage,
    open_envelope,
    parse,
    peek_header,
    peek_raw_header,
    seal,
)
from queues.errors import (
    ENVELOPE_ERRORS,
    AuthenticationFailed,
    EnvelopeError,
    InvalidHeader,
    InvalidPayload,
    NotJwe,
    UnsupportedAlgorithm,
)
from queues.keys import KeyRegistry, ProducerKey
from tests.support.factories import sample
from tests.support.jose import b64, header_for, seal_raw

KEYS = KeyRegistry([ProducerKey.generate("fleet", ["billing.*", "crm.*", "provisioning.*"])])
KEY = KEYS.sealing_key("fleet")
VALID = [seal(sample(t), KEY).body for t in MESSAGE_TYPES]
DOCUMENTED = tuple(ENVELOPE_ERRORS)
BASE64URL = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
HEADER, IV, CIPHERTEXT, TAG = 0, 2, 3, 4  # parts of a compact JWE (1 is the empty key)
# A failure prints the falsifying example and the blob that replays it (@reproduce_failure)
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)


def rfc3339(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def opened_or_documented_error(body: bytes) -> OpenedMessage | EnvelopeError:
    """The opened message, or the error it fails with, which must be a documented one."""
    try:
        return open_envelope(body, KEYS)
    except EnvelopeError as exc:
        assert type(exc) in DOCUMENTED, type(exc)
        assert exc.__cause__ is None
        assert exc.reason in {e.reason for e in DOCUMENTED}
        return exc


def fails_as_documented(body: bytes) -> EnvelopeError:
    outcome = opened_or_documented_error(body)
    assert isinstance(outcome, EnvelopeError), f"opened: {outcome.header}"
    return outcome


def opens_unaltered_or_fails_as_documented(body: bytes, original: bytes) -> None:
    """A changed ``original`` either fails as documented or opens to exactly the original; the
    latter only when nothing authenticated changed (bits base64url ignores, or no change)."""
    outcome = opened_or_documented_error(body)
    if isinstance(outcome, OpenedMessage):
        assert authenticated_parts(body) == authenticated_parts(original), "altered, yet opened"
        assert outcome == open_envelope(original, KEYS)


def authenticated_parts(body: bytes) -> tuple[bytes, ...]:
    """What AES-GCM authenticates: the header segment as sent (the AAD), IV, ciphertext, tag."""
    header, _key, *rest = body.split(b".")
    return (header, *(unb64(part) for part in rest))


def body_of(document: dict[str, Any]) -> bytes:
    return json.dumps(document).encode()


def unb64(part: bytes) -> bytes:
    return base64.urlsafe_b64decode(part + b"=" * (-len(part) % 4))


def with_part(body: bytes, index: int, part: bytes) -> bytes:
    parts = body.split(b".")
    parts[index] = part
    return b".".join(parts)


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes_get_a_typed_error(body: bytes) -> None:
    fails_as_documented(body)


@FUZZ
@given(
    st.sampled_from(VALID),
    st.lists(
        st.tuples(st.integers(min_value=0), st.integers(0, 255) | st.sampled_from(BASE64URL)),
        min_size=1,
        max_size=6,
    ),
)
def test_mutated_envelopes_get_a_typed_error(body: bytes, edits: list[tuple[int, int]]) -> None:
    mutated = bytearray(body)
    for position, value in edits:
        mutated[position % len(mutated)] = value
    opens_unaltered_or_fails_as_documented(bytes(mutated), body)


@FUZZ
@given(st.sampled_from(VALID), st.integers(min_value=0), st.integers(min_value=0))
def test_truncated_or_spliced_envelopes_get_a_typed_error(body: bytes, cut: int, at: int) -> None:
    fails_as_documented(body[: cut % len(body)])
    opens_unaltered_or_fails_as_documented(body[: at % len(body)] + body, body)


@FUZZ
@given(
    st.sampled_from(VALID),
    st.sampled_from([IV, CIPHERTEXT, TAG]),
    st.integers(min_value=0),
    st.integers(1, 255),
)
def test_an_altered_iv_ciphertext_or_tag_fails_authentication(
    body: bytes, index: int, position: int, mask: int
) -> None:
    raw = bytearray(unb64(body.split(b".")[index]))
    raw[position % len(raw)] ^= mask
    altered = with_part(body, index, b64(bytes(raw)))
    assert isinstance(fails_as_documented(altered), AuthenticationFailed)


@FUZZ
@given(
    st.sampled_from(VALID),
    st.one_of(
        st.tuples(st.just("message_id"), st.uuids().map(str)),
        st.tuples(st.just("correlation_id"), st.uuids().map(str)),
        st.tuples(st.just("created_at"), st.datetimes(timezones=st.just(UTC)).map(rfc3339)),
        st.tuples(st.just("message_type"), st.sampled_from(MESSAGE_TYPES)),
        st.tuples(st.just("schema_version"), st.integers(1, 3)),
        st.tuples(st.text(max_size=12).map(lambda name: f"x-{name}"), json_values),
    ),
    st.booleans(),
)
def test_a_rewritten_protected_header_fails_authentication(
    body: bytes, change: tuple[str, Any], reorder: bool
) -> None:
    # A header that still validates, under the same key: only AES-GCM can tell it was changed
    header = {**peek_raw_header(body), change[0]: change[1]}
    segment = b64(json.dumps(header, sort_keys=reorder).encode())
    assume(segment != body.split(b".")[HEADER])
    altered = with_part(body, HEADER, segment)
    assert isinstance(fails_as_documented(altered), AuthenticationFailed)


@FUZZ
@given(
    st.sampled_from(MESSAGE_TYPES), st.dictionaries(st.text(max_size=16), json_values, max_size=6)
)
def test_any_json_payload_validates_or_is_invalid_payload(
    message_type: str, document: dict[str, Any]
) -> None:
    body = seal_raw(header_for(KEY, message_type), body_of(document), KEY)
    try:
        expected = model_for(message_type, 1).model_validate_json(body_of(document), strict=True)
    except ValidationError:
        assert isinstance(fails_as_documented(body), InvalidPayload)
        return
    if expected.header_entity_version() is not None:  # the header carries none
        assert isinstance(fails_as_documented(body), InvalidHeader)
        return
    opened = open_envelope(body, KEYS)
    assert (opened.header, opened.payload) == (peek_header(body), expected)


@FUZZ
@given(st.dictionaries(st.text(max_size=16), json_values, max_size=8))
def test_any_authenticated_header_gets_a_typed_error(extra: dict[str, Any]) -> None:
    header = {**header_for(KEY, "crm.interaction.log"), **extra}
    header.update({"alg": "dir", "enc": "A256GCM", "kid": KEY.kid})
    header.pop("crit", None)
    header.pop("zip", None)
    payload = sample("crm.interaction.log")
    try:
        body = seal_raw(header, payload.model_dump_json().encode(), KEY)
    except (JoseError, ValueError, TypeError):  # joserfc refuses some headers: nothing to open
        return
    opened = opened_or_documented_error(body)
    if isinstance(opened, OpenedMessage):
        assert (opened.header, opened.payload) == (EnvelopeHeader.from_jose(header), payload)


# -- the header read straight from its JSON text is json.loads' reading ----------------------------


def near_values(valid: Any, *others: Any) -> st.SearchStrategy[Any]:
    """A field's valid value, values a lax or careless reader would take for it, anything."""
    near = st.sampled_from([valid, *others])
    return st.one_of(near, near, near, json_values)


uuids_spelled = st.uuids().flatmap(
    lambda u: st.sampled_from([str(u), str(u).upper(), u.hex, f"{{{u}}}", f"urn:uuid:{u}"])
)
# Header member ▶ what it may be set to (None: the member is left out)
HEADER_VARIANTS: dict[str, st.SearchStrategy[Any]] = {
    "alg": near_values("dir", "DIR", "A256KW", None),
    "enc": near_values("A256GCM", "A128GCM", None),
    "kid": near_values(KEY.kid, "", "k" * 129, 5, None),
    "cty": near_values("application/json", "json", "application/JSON", None),
    "message_id": uuids_spelled | st.none(),
    "message_type": near_values("billing.charge.post", "Billing.Charge", "billing", 1, None),
    "schema_version": near_values(1, "1", 1.0, True, 0, 10_001, 2**64, None),
    "producer": near_values("fleet", "Fleet", "f", None),
    "created_at": st.one_of(
        st.datetimes(timezones=st.just(UTC)).map(rfc3339),
        st.datetimes().map(lambda moment: moment.isoformat()),
        st.sampled_from(
            ["2026-11-21 23:25:03Z", "2026-11-21T23:25:03+01", "1763767503", 1763767503]
        ),
        st.none(),
    ),
    "correlation_id": uuids_spelled | st.none(),
    "entity_version": near_values(1, "1", 1.0, 0, 2**53, True, None),
    "zip": st.sampled_from(["DEF", None]),
    "crit": st.sampled_from([["exp"], [], None]),
    "x": json_values,
}
header_documents = st.builds(
    lambda base, changes: {
        name: value for name, value in {**base, **dict(changes)}.items() if value is not None
    },
    st.tuples(st.sampled_from(MESSAGE_TYPES), st.booleans()).map(
        lambda choice: header_for(KEY, choice[0], cty="application/json" if choice[1] else None)
    ),
    st.lists(
        st.sampled_from(sorted(HEADER_VARIANTS)).flatmap(
            lambda name: st.tuples(st.just(name), HEADER_VARIANTS[name])
        ),
        max_size=2,
    ),
)


@st.composite
def header_texts(draw: st.DrawFn) -> bytes:
    """A header document spelled as any JSON writer might, some of it oddly."""
    document = draw(header_documents)
    text = json.dumps(
        document,
        ensure_ascii=draw(st.booleans()),
        sort_keys=draw(st.booleans()),
        indent=draw(st.none() | st.integers(0, 2)),
    )
    duplicate = draw(
        st.none()
        | st.sampled_from(sorted(HEADER_VARIANTS)).flatmap(
            lambda name: st.tuples(st.just(name), HEADER_VARIANTS[name])
        )
    )
    if duplicate is not None and text.startswith("{") and len(text) > 2:
        member = f"{json.dumps(duplicate[0])}:{json.dumps(duplicate[1])}"
        text = (
            "{" + member + "," + text[1:]  # the document's own member wins
            if draw(st.booleans())
            else text[:-1] + "," + member + "}"  # the duplicate wins
        )
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-8", "utf-8-sig", "utf-16-le"]))
    return text.encode(encoding, "surrogatepass")


def reference_reading(body: bytes) -> EnvelopeHeader | type[EnvelopeError]:
    """The header as queues.envelope read it before issue 13: json.loads, then from_jose."""
    try:
        return EnvelopeHeader.from_jose(peek_raw_header(body))
    except EnvelopeError as exc:
        return type(exc)


def reading(body: bytes) -> EnvelopeHeader | type[EnvelopeError]:
    try:
        return peek_header(body)
    except EnvelopeError as exc:
        return type(exc)


@FUZZ
@given(header_texts(), st.sampled_from(["", " ", "\n", "\t"]))
def test_the_header_read_from_its_json_text_is_json_loads_reading(
    text: bytes, padding: str
) -> None:
    body = with_part(VALID[0], HEADER, b64(padding.encode() + text + padding.encode()))
    assume(len(body.split(b".")[HEADER]) <= MAX_HEADER_SEGMENT_BYTES)
    assert reading(body) == reference_reading(body)


def reference_parse(body: bytes) -> EnvelopeHeader | type[EnvelopeError]:
    """The checks before authentication as queues.envelope made them before issue 13, in order,
    on json.loads' reading of the header."""
    try:
        raw = peek_raw_header(body)
    except EnvelopeError as exc:
        return type(exc)
    if raw.get("alg") != "dir" or raw.get("enc") != "A256GCM" or "zip" in raw:
        return UnsupportedAlgorithm
    _header, encrypted_key, iv, ciphertext, tag = body.split(b".")
    if encrypted_key or len(iv) != 16 or len(tag) != 22 or len(ciphertext) % 4 == 1:
        return NotJwe
    if not all(re.fullmatch(rb"[A-Za-z0-9_-]*", part) for part in (iv, ciphertext, tag)):
        return NotJwe
    if "crit" in raw or not isinstance(raw.get("kid"), str) or not raw["kid"]:
        return InvalidHeader
    try:
        return EnvelopeHeader.from_jose(raw)
    except EnvelopeError as exc:
        return type(exc)


@FUZZ
@given(
    header_texts(),
    st.sampled_from(VALID),
    st.sampled_from([None, (1, b"AAAA"), (IV, b"AAAA"), (TAG, b"A" * 21), (CIPHERTEXT, b"A=")]),
)
def test_parse_refuses_as_the_ordered_checks_on_json_loads_reading(
    text: bytes, valid: bytes, broken: tuple[int, bytes] | None
) -> None:
    body = with_part(valid, HEADER, b64(text))
    assume(len(body.split(b".")[HEADER]) <= MAX_HEADER_SEGMENT_BYTES)
    if broken is not None:
        body = with_part(body, *broken)
    try:
        outcome: EnvelopeHeader | type[EnvelopeError] = parse(body).header
    except EnvelopeError as exc:
        outcome = type(exc)
    assert outcome == reference_parse(body)
