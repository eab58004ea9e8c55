"""The envelope: JWE compact serialization (RFC 7516), ``alg: dir``, ``enc: A256GCM``.

The protected header carries the key id and the steering fields; AES-GCM authenticates it as AAD
(its first part exactly as received), and anyone can read it without a key (``peek_header``).
The payload is the message's JSON. Opening checks, in order: size ▶ JWE form ▶ algorithms (``alg``
dir, ``enc`` A256GCM, no ``zip``) ▶ the ``dir`` shape (empty encrypted key, 96-bit IV, 128-bit tag)
▶ no ``crit`` ▶ ``kid`` present ▶ header fields ▶ ``kid`` registered ▶ AES-GCM ▶ producer owns the
kid and may send the type ▶ type and schema version ▶ payload ▶ ``entity_version`` as the
payload's. Everything before AES-GCM is checked on the unauthenticated header and only ever
refuses; nothing is trusted until the tag verifies. Each failure is its own typed error with a
stable reason code (queues.errors); none carries a payload value.

The JOSE layer is this module's own: a strict parser of the one compact form the fleet speaks,
around ``cryptography``'s AES-GCM. A general JOSE library (joserfc, until issue 13) spent most of
an open and a seal on its generality (``python -m bench.envelope`` measures both ways);
tests/interop proves the wire against Node's ``jose`` and jwcrypto, the unit tests against
joserfc.

Parse once: a worker that reads the header before opening (to route, to log) calls ``parse`` once
per delivery and hands the ``ParsedEnvelope`` to ``open_envelope`` in place of the body. ``parse``
makes every check before AES-GCM, in the order above, so a delivery it refuses would fail to open
with the very same error; ``peek_header`` stays the lenient reader (header fields only) for
operators and the archive.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import (
    ValidationError,
)
from pydantic_core import to_json

from queues.contracts import Contract, model_for
from queues.errors import (
    AuthenticationFailed,
    BodyTooLarge,
    EnvelopeError,
    InvalidHeader,
    InvalidPayload,
    NotAuthorized,
    NotJwe,
    UnknownKid,
    UnsupportedAlgorithm,
)
from queues.header import ALG as ALG
from queues.header import ENC as ENC
from queues.header import MAX_ENTITY_VERSION as MAX_ENTITY_VERSION
from queues.header import EnvelopeHeader as EnvelopeHeader
from queues.header import describe_validation_error as describe_validation_error
from queues.header import rfc3339, validated_from_json
from queues.keys import KeyRegistry, ProducerKey
from queues.wire import DEFAULT_MAX_BODY_BYTES as DEFAULT_MAX_BODY_BYTES
from queues.wire import MAX_HEADER_SEGMENT_BYTES as MAX_HEADER_SEGMENT_BYTES
from queues.wire import (
    b64url_decode,
    b64url_encode,
    compact_parts,
    decode_protected,
    is_base64url,
    protected_object,
    protected_segment,
)
from queues.wire import peek_raw_header as peek_raw_header

CONTENT_TYPE = "application/jose"
# Compact JWE with alg "dir": empty encrypted key, 96-bit IV, 128-bit tag (base64url lengths).
_IV_BYTES = 12
_TAG_BYTES = 16
_IV_CHARS = 16
_TAG_CHARS = 22
# The header's JSON as JOSE libraries write it (joserfc's and jose's form): compact, ASCII.
_HEADER_JSON = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"))
_NOT_AUTHENTIC = "ciphertext or protected header failed AES-GCM authentication"
_ALGORITHMS = f"only alg {ALG!r} with enc {ENC!r} and no zip is accepted"
_NO_CRIT = "invalid header: crit: no critical extensions are understood"


@dataclass(frozen=True)
class SealedMessage:
    """A sealed envelope ready to publish, with its readable header."""

    body: bytes
    header: EnvelopeHeader

    @property
    def message_id(self) -> uuid.UUID:
        return self.header.message_id


@dataclass(frozen=True)
class OpenedMessage:
    """An envelope that opened, authenticated, was authorized and validated."""

    header: EnvelopeHeader
    payload: Contract


@dataclass(frozen=True)
class ParsedEnvelope:
    """An envelope that passed every check made before authentication, with its header:
    validated, not yet authenticated. Made by ``parse``; ``open_envelope`` takes it in place of
    the body."""

    body: bytes = field(repr=False)
    header: EnvelopeHeader
    # The header, IV, ciphertext and tag parts, as received.
    _parts: tuple[bytes, bytes, bytes, bytes] = field(repr=False, compare=False)


def seal(
    payload: Contract,
    key: ProducerKey,
    *,
    message_id: uuid.UUID | None = None,
    correlation_id: uuid.UUID | None = None,
    created_at: datetime | None = None,
) -> SealedMessage:
    """Encrypt ``payload`` under ``key`` with the steering fields in the protected header.

    Raises:
        NotAuthorized: the key's producer may not send this type.
        pydantic.ValidationError: a header field out of its range (an ``entity_version`` above
            2^53 − 1), which no worker would accept.
    """
    if not key.may_send(payload.message_type):
        raise NotAuthorized(f"producer {key.producer} may not send {payload.message_type}")
    fields: dict[str, Any] = {
        "alg": ALG,
        "enc": ENC,
        "kid": key.kid,
        "cty": "application/json",
        "message_id": str(message_id or uuid.uuid4()),
        "message_type": payload.message_type,
        "schema_version": payload.schema_version,
        "producer": key.producer,
        "created_at": rfc3339(created_at or datetime.now(UTC)),
    }
    if correlation_id is not None:
        fields["correlation_id"] = str(correlation_id)
    entity_version = payload.header_entity_version()
    if entity_version is not None:
        fields["entity_version"] = entity_version
    # Text, digits, ids and the date-time need no escaping: the same bytes as _HEADER_JSON's.
    text = to_json(fields)
    header = EnvelopeHeader.model_validate_json(text)  # the very header a worker will read
    body = _encrypt(b64url_encode(text), payload.model_dump_json().encode(), key)
    return SealedMessage(body=body, header=header)


def encrypt_with(protected: dict[str, Any], plaintext: bytes, key: ProducerKey) -> bytes:
    """The JWE compact body of ``plaintext`` under ``key`` with this protected header (no
    envelope checks: ``seal`` is the way to publish; this also serves re-sealing archives).

    Raises:
        UnsupportedAlgorithm: the header names another algorithm than dir/A256GCM, or zip.
        InvalidHeader: the header has a crit member.
    """
    if not _supported_algorithms(protected):
        raise UnsupportedAlgorithm(_ALGORITHMS)
    if "crit" in protected:
        raise InvalidHeader(_NO_CRIT)
    return _encrypt(b64url_encode(_HEADER_JSON.encode(protected).encode("ascii")), plaintext, key)


def decrypt_with(body: bytes, key: ProducerKey) -> tuple[dict[str, Any], bytes]:
    """The authenticated protected header and plaintext of ``body`` under ``key``.

    Raises:
        AuthenticationFailed: ciphertext, tag or header altered, or another key; or not a
            compact dir/A256GCM JWE at all.
    """
    try:
        protected, encrypted_key, iv, ciphertext, tag = compact_parts(body)
        raw = protected_object(decode_protected(protected))
        if not _supported_algorithms(raw) or "crit" in raw:
            raise UnsupportedAlgorithm(_ALGORITHMS)
        _check_dir_shape(encrypted_key, iv, ciphertext, tag)
    except EnvelopeError:
        raise AuthenticationFailed(_NOT_AUTHENTIC) from None
    return raw, _decrypt((protected, iv, ciphertext, tag), key)


def peek_header(body: bytes) -> EnvelopeHeader:
    """The validated (but unauthenticated) header, for operators and the archive.

    Raises:
        NotJwe: not a JWE compact serialization.
        InvalidHeader: a steering field is missing or malformed.
    """
    text = decode_protected(protected_segment(body))
    header = validated_from_json(text)
    return header if header is not None else EnvelopeHeader.from_jose(protected_object(text))


def parse(body: bytes, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> ParsedEnvelope:
    """Every check made before authentication, in the order of the module docstring: the
    envelope's parts and its validated (not yet authenticated) header, to read and then open.

    Raises:
        BodyTooLarge, NotJwe, UnsupportedAlgorithm, InvalidHeader.
    """
    _check_size(body, max_body_bytes)
    protected, encrypted_key, iv, ciphertext, tag = compact_parts(body)
    text = decode_protected(protected)
    header = validated_from_json(text)
    if header is not None:
        # alg and enc are the model's literals, kid is required; zip and crit would be extras.
        extra = header.model_extra or {}
        if "zip" in extra:
            raise UnsupportedAlgorithm(_ALGORITHMS)
        _check_dir_shape(encrypted_key, iv, ciphertext, tag)
        if "crit" in extra:
            raise InvalidHeader(_NO_CRIT)
    else:
        raw = protected_object(text)
        if not _supported_algorithms(raw):
            raise UnsupportedAlgorithm(_ALGORITHMS)
        _check_dir_shape(encrypted_key, iv, ciphertext, tag)
        if "crit" in raw:
            raise InvalidHeader(_NO_CRIT)
        if not isinstance(raw.get("kid"), str) or not raw["kid"]:
            raise InvalidHeader("invalid header: kid: missing")
        header = EnvelopeHeader.from_jose(raw)
    return ParsedEnvelope(body=body, header=header, _parts=(protected, iv, ciphertext, tag))


def open_envelope(
    body: bytes | ParsedEnvelope,
    keys: KeyRegistry,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> OpenedMessage:
    """Open, authenticate, authorize and validate one envelope: a body, or what ``parse`` made
    of it (then only the checks after ``parse``'s are made, and the size again).

    Raises:
        BodyTooLarge, NotJwe, UnsupportedAlgorithm, InvalidHeader, UnknownKid,
        AuthenticationFailed, NotAuthorized, UnknownType, UnknownSchemaVersion, InvalidPayload.
    """
    if isinstance(body, ParsedEnvelope):
        _check_size(body.body, max_body_bytes)
        parsed = body
    else:
        parsed = parse(body, max_body_bytes=max_body_bytes)
    header = parsed.header
    key = keys.get(header.kid)
    if key is None:
        raise UnknownKid(f"no registered key has id {header.kid!r}")
    plaintext = _decrypt(parsed._parts, key)  # the header is the AAD: authenticated from here
    if header.producer != key.producer:
        raise NotAuthorized(f"key {key.kid} belongs to another producer than {header.producer}")
    if not key.may_send(header.message_type):
        raise NotAuthorized(f"producer {header.producer} may not send {header.message_type}")
    model = model_for(header.message_type, header.schema_version)
    try:
        payload = model.model_validate_json(plaintext, strict=True)
    except ValidationError as exc:
        raise InvalidPayload(f"invalid payload: {describe_validation_error(exc)}") from None
    if payload.header_entity_version() != header.entity_version:
        raise InvalidHeader("invalid header: entity_version differs from the payload's")
    return OpenedMessage(header=header, payload=payload)


def _supported_algorithms(fields: dict[str, Any]) -> bool:
    return fields.get("alg") == ALG and fields.get("enc") == ENC and "zip" not in fields


def _check_size(body: bytes, max_body_bytes: int) -> None:
    if len(body) > max_body_bytes:
        raise BodyTooLarge(f"body of {len(body)} bytes exceeds the limit of {max_body_bytes}")


def _check_dir_shape(encrypted_key: bytes, iv: bytes, ciphertext: bytes, tag: bytes) -> None:
    if encrypted_key:
        raise NotJwe("the encrypted-key part must be empty for alg 'dir'")
    if len(iv) != _IV_CHARS or len(tag) != _TAG_CHARS:
        raise NotJwe("A256GCM needs a 96-bit IV and a 128-bit tag")
    # A length of 4n + 1 characters encodes no byte string.
    if not is_base64url(iv + ciphertext + tag) or len(ciphertext) % 4 == 1:
        raise NotJwe("IV, ciphertext and tag must be unpadded base64url")


@lru_cache(maxsize=64)
def _cipher(secret: bytes) -> AESGCM:
    # Key set-up is half the cost of one small AES-GCM operation; the object is immutable and
    # safe to share between threads.
    return AESGCM(secret)


def _encrypt(protected: bytes, plaintext: bytes, key: ProducerKey) -> bytes:
    iv = os.urandom(_IV_BYTES)  # random 96-bit IV: rotate keys long before 2^32 (queues.keys)
    sealed = _cipher(key.secret).encrypt(iv, plaintext, protected)
    return b".".join(
        (
            protected,
            b"",
            b64url_encode(iv),
            b64url_encode(sealed[:-_TAG_BYTES]),
            b64url_encode(sealed[-_TAG_BYTES:]),
        )
    )


def _decrypt(parts: tuple[bytes, bytes, bytes, bytes], key: ProducerKey) -> bytes:
    protected, iv, ciphertext, tag = parts
    try:
        return _cipher(key.secret).decrypt(
            b64url_decode(iv), b64url_decode(ciphertext) + b64url_decode(tag), protected
        )
    except InvalidTag:
        raise AuthenticationFailed(_NOT_AUTHENTIC) from None
