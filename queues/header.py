"""The envelope's protected header, validated: steering fields (queues.envelope seals, opens).

Readable without a key, authenticated as AAD once the envelope opens. One spelling per field
(canonical lower-case UUIDs, RFC 3339 with an offset), so ids compare as text everywhere; errors
name the field and the kind of failure, never a value.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

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
from pydantic_core import core_schema

from queues.errors import InvalidHeader

ALG: Literal["dir"] = "dir"
ENC: Literal["A256GCM"] = "A256GCM"
MAX_ENTITY_VERSION = 2**53 - 1  # exact in every JSON implementation (JavaScript numbers)

_CANONICAL_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$")
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
        fields["created_at"] = rfc3339(self.created_at)
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


def validated_from_json(text: bytes) -> EnvelopeHeader | None:
    """The header validated straight from its JSON text, else None: then the ordered checks on
    ``json.loads``' reading name the first failure. pydantic-core's JSON parser accepts a subset
    of what ``json.loads`` does and reads it alike (the last of duplicate names wins in both), so
    a header it validates is the one ``EnvelopeHeader.from_jose(json.loads(text))`` would be
    (tests/unit/test_fuzz_envelope.py checks this against that reading)."""
    try:
        return EnvelopeHeader.model_validate_json(text)
    except ValidationError:
        return None


def rfc3339(moment: datetime) -> str:
    # Milliseconds, truncated, so that the sealed header equals the opened one.
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
