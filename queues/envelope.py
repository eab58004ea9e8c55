"""The envelope: JWE compact serialization (RFC 7516), ``alg: dir``, ``enc: A256GCM``.

The protected header carries the key id and the steering fields; JWE authenticates it as AAD, and
anyone can read it without a key (``peek_header``). The payload is the message's JSON.
Opening checks, in order: size ▶ JWE form ▶ algorithms ▶ header fields ▶ kid ▶ AES-GCM ▶
producer owns the kid and may send the type ▶ type and schema version ▶ payload. Everything
before AES-GCM is checked on the unauthenticated header and only ever refuses; nothing is
trusted until the tag verifies. Each failure is its own typed error with a stable reason code
(queues.errors); none carries a payload value.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from joserfc import jwe
from joserfc.errors import JoseError
from joserfc.jwk import OctKey
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from queues.contracts import Contract, model_for
from queues.errors import (
    AuthenticationFailed,
    BodyTooLarge,
    InvalidHeader,
    InvalidPayload,
    NotAuthorized,
    NotJwe,
    UnknownKid,
    UnsupportedAlgorithm,
)
from queues.keys import KeyRegistry, ProducerKey
from queues.wire import BASE64URL
from queues.wire import DEFAULT_MAX_BODY_BYTES as DEFAULT_MAX_BODY_BYTES
from queues.wire import MAX_HEADER_SEGMENT_BYTES as MAX_HEADER_SEGMENT_BYTES
from queues.wire import peek_raw_header as peek_raw_header

ALG: Literal["dir"] = "dir"
ENC: Literal["A256GCM"] = "A256GCM"
CONTENT_TYPE = "application/jose"
MAX_ENTITY_VERSION = 2**53 - 1  # exact in every JSON implementation (JavaScript numbers)

_CANONICAL_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$")
# Compact JWE with alg "dir": empty encrypted key, 96-bit IV, 128-bit tag (base64url lengths).
_IV_CHARS = 16
_TAG_CHARS = 22


class _Registry(jwe.JWERegistry):
    # Our own size check runs first and is the one that counts; joserfc's defaults (64 KiB of
    # ciphertext) would refuse legitimate bodies below our configurable limit.
    max_protected_header_length = MAX_HEADER_SEGMENT_BYTES
    max_ciphertext_length = 64 * 1024 * 1024
    max_aad_length = 64 * 1024 * 1024


_JOSE = _Registry(algorithms=[ALG, ENC], strict_check_header=False)


class EnvelopeHeader(BaseModel):
    """The protected header: key id, algorithms and the steering fields. Authoritative."""

    model_config = ConfigDict(frozen=True, extra="allow", strict=True)

    alg: Literal["dir"]
    enc: Literal["A256GCM"]
    kid: str = Field(min_length=1, max_length=128)
    cty: Literal["application/json"] = "application/json"
    message_id: uuid.UUID = Field(description="Unique per message, kept across retries and replays")
    message_type: str = Field(pattern=r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$", max_length=128)
    schema_version: int = Field(ge=1, le=10_000)
    producer: str = Field(pattern=r"^[a-z][a-z0-9-]{1,31}$")
    created_at: AwareDatetime
    correlation_id: uuid.UUID | None = None
    entity_version: int | None = Field(default=None, ge=1, le=MAX_ENTITY_VERSION)

    @field_validator("message_id", "correlation_id", mode="before")
    @classmethod
    def _canonical_uuid(cls, value: object) -> object:
        # One spelling only, so that ids compare as text everywhere (AMQP property, archive).
        if not isinstance(value, str):
            return value
        if not _CANONICAL_UUID.match(value):
            raise ValueError("must be a lower-case hyphenated UUID")
        return uuid.UUID(value)

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
    """
    if not key.may_send(payload.message_type):
        raise NotAuthorized(f"producer {key.producer} may not send {payload.message_type}")
    header = EnvelopeHeader(
        alg=ALG,
        enc=ENC,
        kid=key.kid,
        message_id=message_id or uuid.uuid4(),
        message_type=payload.message_type,
        schema_version=payload.schema_version,
        producer=key.producer,
        created_at=_to_millis(created_at or datetime.now(UTC)),
        correlation_id=correlation_id,
        entity_version=payload.header_entity_version(),
    )
    body = encrypt_with(header.to_jose(), payload.model_dump_json().encode(), key)
    return SealedMessage(body=body, header=header)


def encrypt_with(protected: dict[str, Any], plaintext: bytes, key: ProducerKey) -> bytes:
    """The JWE compact body of ``plaintext`` under ``key`` with this protected header
    (no checks: ``seal`` is the way to publish; this also serves re-sealing archives)."""
    token = jwe.encrypt_compact(protected, plaintext, OctKey.import_key(key.secret), registry=_JOSE)
    return token.encode("ascii")


def decrypt_with(body: bytes, key: ProducerKey) -> tuple[dict[str, Any], bytes]:
    """The authenticated protected header and plaintext of ``body`` under ``key``.

    Raises:
        AuthenticationFailed: ciphertext, tag or header altered, or another key.
    """
    try:
        token = jwe.decrypt_compact(body, OctKey.import_key(key.secret), registry=_JOSE)
    except (JoseError, ValueError):
        raise AuthenticationFailed(
            "ciphertext or protected header failed AES-GCM authentication"
        ) from None
    return token.protected, token.plaintext or b""


def peek_header(body: bytes) -> EnvelopeHeader:
    """The validated (but unauthenticated) header, for operators and the archive.

    Raises:
        NotJwe: not a JWE compact serialization.
        InvalidHeader: a steering field is missing or malformed.
    """
    return EnvelopeHeader.from_jose(peek_raw_header(body))


def open_envelope(
    body: bytes, keys: KeyRegistry, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
) -> OpenedMessage:
    """Open, authenticate, authorize and validate one envelope.

    Raises:
        BodyTooLarge, NotJwe, UnsupportedAlgorithm, InvalidHeader, UnknownKid,
        AuthenticationFailed, NotAuthorized, UnknownType, UnknownSchemaVersion, InvalidPayload.
    """
    if len(body) > max_body_bytes:
        raise BodyTooLarge(f"body of {len(body)} bytes exceeds the limit of {max_body_bytes}")
    raw = peek_raw_header(body)
    if raw.get("alg") != ALG or raw.get("enc") != ENC or "zip" in raw:
        raise UnsupportedAlgorithm(f"only alg {ALG!r} with enc {ENC!r} and no zip is accepted")
    _check_compact_segments(body)
    if "crit" in raw:
        raise InvalidHeader("invalid header: crit: no critical extensions are understood")
    if not isinstance(raw.get("kid"), str) or not raw["kid"]:
        raise InvalidHeader("invalid header: kid: missing")
    header = EnvelopeHeader.from_jose(raw)
    key = keys.get(header.kid)
    if key is None:
        raise UnknownKid(f"no registered key has id {header.kid!r}")
    _authenticated, plaintext = decrypt_with(body, key)  # the header is this very segment
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


def _check_compact_segments(body: bytes) -> None:
    _header, encrypted_key, iv, ciphertext, tag = body.split(b".")
    if encrypted_key:
        raise NotJwe("the encrypted-key part must be empty for alg 'dir'")
    if len(iv) != _IV_CHARS or len(tag) != _TAG_CHARS:
        raise NotJwe("A256GCM needs a 96-bit IV and a 128-bit tag")
    if not all(BASE64URL.match(part) for part in (iv, ciphertext, tag)):
        raise NotJwe("IV, ciphertext and tag must be unpadded base64url")


def _to_millis(moment: datetime) -> datetime:
    # The header carries milliseconds; truncate so the sealed header equals the opened one.
    moment = moment.astimezone(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
