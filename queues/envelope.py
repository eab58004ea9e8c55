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
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Annotated, Any, Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetPydanticSchema,
    ValidationError,
    WithJsonSchema,
    field_validator,
)
from pydantic_core import core_schema, to_json

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

ALG: Literal["dir"] = "dir"
ENC: Literal["A256GCM"] = "A256GCM"
CONTENT_TYPE = "application/jose"
MAX_ENTITY_VERSION = 2**53 - 1  # exact in every JSON implementation (JavaScript numbers)

_CANONICAL_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$")
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
_UUID_SPELLING = "must be a lower-case hyphenated UUID"


def _uuid_from_text(value: object) -> object:
    if isinstance(value, str):
        if not _CANONICAL_UUID.match(value):
            raise ValueError(_UUID_SPELLING)
        return uuid.UUID(value)
    return value


def _canonical_uuid_schema(_source: Any, _handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
    # One spelling only, so that ids compare as text everywhere (AMQP property, archive). From the
    # wire, pydantic-core checks and converts it without a Python call (the Python validators of
    # the two ids were over a third of the header's validation); built in Python
    # (EnvelopeHeader(...)), a UUID or its canonical text.
    from_wire = core_schema.chain_schema(
        [
            core_schema.str_schema(pattern=_CANONICAL_UUID.pattern),
            core_schema.uuid_schema(strict=False),
        ]
    )
    return core_schema.json_or_python_schema(
        json_schema=core_schema.custom_error_schema(
            from_wire,
            custom_error_type="value_error",
            custom_error_context={"error": _UUID_SPELLING},
        ),
        python_schema=core_schema.no_info_before_validator_function(
            _uuid_from_text, core_schema.uuid_schema()
        ),
    )


CanonicalUuid = Annotated[
    uuid.UUID,
    GetPydanticSchema(_canonical_uuid_schema),
    WithJsonSchema({"format": "uuid", "type": "string"}),
]


class EnvelopeHeader(BaseModel):
    """The protected header: key id, algorithms and the steering fields. Authoritative."""

    model_config = ConfigDict(frozen=True, extra="allow", strict=True)

    alg: Literal["dir"]
    enc: Literal["A256GCM"]
    kid: str = Field(min_length=1, max_length=128)
    cty: Literal["application/json"] = "application/json"
    message_id: CanonicalUuid = Field(
        description="Unique per message, kept across retries and replays"
    )
    message_type: str = Field(pattern=r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$", max_length=128)
    schema_version: int = Field(ge=1, le=10_000)
    producer: str = Field(pattern=r"^[a-z][a-z0-9-]{1,31}$")
    created_at: AwareDatetime
    correlation_id: CanonicalUuid | None = None
    entity_version: int | None = Field(default=None, ge=1, le=MAX_ENTITY_VERSION)

    @field_validator("created_at", mode="before")
    @classmethod
    def _rfc3339(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        if not _RFC3339.match(value):
            raise ValueError("must be an RFC 3339 date-time with an offset")
        return datetime.fromisoformat(value.replace("Z", "+00:00"))

    def to_jose(self) -> dict[str, Any]:
        fields = self.model_dump(mode="json", exclude_none=True)
        fields["created_at"] = _rfc3339(self.created_at)
        return fields

    @classmethod
    def from_jose(cls, raw: dict[str, Any]) -> EnvelopeHeader:
        """Validate a decoded header object.

        Raises:
            InvalidHeader: a steering field is missing or malformed (named, never its value).
        """
        try:
            return cls.model_validate_json(json.dumps(raw))
        except ValidationError as exc:
            raise InvalidHeader(f"invalid header: {describe_validation_error(exc)}") from None


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


def describe_validation_error(exc: ValidationError, limit: int = 8) -> str:
    """Field locations and error kinds of a pydantic error; never the input values."""
    parts = []
    for error in exc.errors(include_input=False, include_url=False, include_context=False)[:limit]:
        location = ".".join(str(p) for p in error["loc"]) or "(root)"
        parts.append(f"{location}: {error['type']}")
    more = exc.error_count() - limit
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts)


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
        "created_at": _rfc3339(created_at or datetime.now(UTC)),
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
    header = _validated(text)
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
    header = _validated(text)
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


def _validated(text: bytes) -> EnvelopeHeader | None:
    """The header validated straight from its JSON text, else None: then the ordered checks on
    ``json.loads``' reading name the first failure. pydantic-core's JSON parser accepts a subset
    of what ``json.loads`` does and reads it alike (the last of duplicate names wins in both), so
    a header it validates is the one ``EnvelopeHeader.from_jose(json.loads(text))`` would be
    (tests/unit/test_fuzz_envelope.py checks this against that reading)."""
    try:
        return EnvelopeHeader.model_validate_json(text)
    except ValidationError:
        return None


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


def _rfc3339(moment: datetime) -> str:
    # Milliseconds, truncated, so that the sealed header equals the opened one.
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
