"""Property tests: whatever arrives, the opener answers with a documented typed error or a model."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from joserfc.errors import JoseError

from queues.contracts import MESSAGE_TYPES
from queues.envelope import open_envelope, seal
from queues.errors import ENVELOPE_ERRORS, EnvelopeError
from queues.keys import KeyRegistry, ProducerKey
from tests.support.factories import sample
from tests.support.jose import header_for, seal_raw

KEYS = KeyRegistry([ProducerKey.generate("fleet", ["billing.*", "crm.*", "provisioning.*"])])
KEY = KEYS.sealing_key("fleet")
VALID = [seal(sample(t), KEY).body for t in MESSAGE_TYPES]
DOCUMENTED = tuple(ENVELOPE_ERRORS)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)


def opens_or_fails_as_documented(body: bytes) -> None:
    try:
        open_envelope(body, KEYS)
    except EnvelopeError as exc:
        assert type(exc) in DOCUMENTED, type(exc)
        assert exc.__cause__ is None
        assert exc.reason in {e.reason for e in DOCUMENTED}


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes_get_a_typed_error(body: bytes) -> None:
    opens_or_fails_as_documented(body)


@FUZZ
@given(
    st.sampled_from(VALID),
    st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), min_size=1, max_size=6),
)
def test_mutated_envelopes_get_a_typed_error(body: bytes, edits: list[tuple[int, int]]) -> None:
    mutated = bytearray(body)
    for position, value in edits:
        mutated[position % len(mutated)] = value
    opens_or_fails_as_documented(bytes(mutated))


@FUZZ
@given(st.sampled_from(VALID), st.integers(min_value=0), st.integers(min_value=0))
def test_truncated_or_spliced_envelopes_get_a_typed_error(body: bytes, cut: int, at: int) -> None:
    opens_or_fails_as_documented(body[: cut % len(body)])
    opens_or_fails_as_documented(body[: at % len(body)] + body)


@FUZZ
@given(
    st.sampled_from(MESSAGE_TYPES), st.dictionaries(st.text(max_size=16), json_values, max_size=6)
)
def test_any_json_payload_validates_or_is_invalid_payload(
    message_type: str, document: dict[str, Any]
) -> None:
    body = seal_raw(header_for(KEY, message_type), json.dumps(document).encode(), KEY)
    opens_or_fails_as_documented(body)


@FUZZ
@given(st.dictionaries(st.text(max_size=16), json_values, max_size=8))
def test_any_authenticated_header_gets_a_typed_error(extra: dict[str, Any]) -> None:
    header = {**header_for(KEY, "crm.interaction.log"), **extra}
    header.update({"alg": "dir", "enc": "A256GCM", "kid": KEY.kid})
    header.pop("crit", None)
    header.pop("zip", None)
    try:
        body = seal_raw(header, sample("crm.interaction.log").model_dump_json().encode(), KEY)
    except (JoseError, ValueError, TypeError):  # joserfc refuses some headers: nothing to open
        return
    opens_or_fails_as_documented(body)
