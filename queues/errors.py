"""The fleet's errors: one root, three families that steer what happens to a message.

    FleetError                      root of everything the fleet raises on purpose
    ├── PermanentError              dead-letter at once, with a reason code
    │   ├── EnvelopeError           the envelope cannot be opened or trusted
    │   │   ├── BodyTooLarge            body_too_large
    │   │   ├── NotJwe                  not_jwe
    │   │   ├── UnsupportedAlgorithm    unsupported_algorithm
    │   │   ├── InvalidHeader           invalid_header
    │   │   ├── UnknownKid              unknown_kid          (retryable: deployment skew)
    │   │   ├── AuthenticationFailed    authentication_failed
    │   │   ├── NotAuthorized           not_authorized
    │   │   ├── UnknownType             unknown_type
    │   │   ├── UnknownSchemaVersion    unknown_schema_version (retryable: deployment skew)
    │   │   ├── InvalidPayload          invalid_payload
    │   │   └── Misrouted               misrouted
    │   └── IllegalTransition       illegal_transition
    ├── TransientError              retry with backoff (database down, network element timeout)
    └── NotYet                      a precondition an in-flight message may still satisfy

Every ``reason`` is a stable code documented in docs/wire-format.md (§8). Besides the codes of
these classes, the fleet's lifecycle gives dead letters the codes in ``LIFECYCLE_REASONS``.
No message built here carries a payload value: callers pass field names, never values.
"""

from __future__ import annotations

from typing import ClassVar


class FleetError(Exception):
    """Root of the errors the fleet raises on purpose."""

    reason: ClassVar[str] = "error"
    retryable: ClassVar[bool] = False

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.reason)
        self.message = message or self.reason

    def __repr__(self) -> str:
        return f"{type(self).__name__}(reason={self.reason!r}, message={self.message!r})"


class PermanentError(FleetError):
    """Cannot succeed however often it is tried: dead-letter at once."""

    reason = "permanent"


class TransientError(FleetError):
    """May succeed later (database down, network element timeout or 5xx): retry with backoff."""

    reason = "transient"
    retryable = True


class NotYet(FleetError):
    """A precondition a message still in flight may satisfy: retry up to a horizon."""

    reason = "not_yet"
    retryable = True


class IllegalTransition(PermanentError):
    """A state transition impossible from any future state (e.g. after terminate)."""

    reason = "illegal_transition"


class EnvelopeError(PermanentError):
    """The envelope cannot be opened, trusted or understood."""

    reason = "envelope_error"


class BodyTooLarge(EnvelopeError):
    """The body is larger than the configured maximum."""

    reason = "body_too_large"


class NotJwe(EnvelopeError):
    """The body is not a JWE compact serialization with a JSON object header."""

    reason = "not_jwe"


class UnsupportedAlgorithm(EnvelopeError):
    """The header names an algorithm, encryption or compression other than dir / A256GCM / none."""

    reason = "unsupported_algorithm"


class InvalidHeader(EnvelopeError):
    """A steering field of the protected header is missing or malformed."""

    reason = "invalid_header"


class UnknownKid(EnvelopeError):
    """No registered key has this id (retryable a bounded number of times: deployment skew)."""

    reason = "unknown_kid"
    retryable = True


class AuthenticationFailed(EnvelopeError):
    """AES-GCM authentication failed: ciphertext, tag or protected header was altered."""

    reason = "authentication_failed"


class NotAuthorized(EnvelopeError):
    """The header's producer does not own the kid, or may not send the type."""

    reason = "not_authorized"


class UnknownType(EnvelopeError):
    """The message type is not in the catalogue."""

    reason = "unknown_type"


class UnknownSchemaVersion(EnvelopeError):
    """The type is known but not this schema version (retryable: deployment skew)."""

    reason = "unknown_schema_version"
    retryable = True


class InvalidPayload(EnvelopeError):
    """The decrypted payload does not validate against its model."""

    reason = "invalid_payload"


class Misrouted(EnvelopeError):
    """The routing key on the fleet exchange differs from the header's type."""

    reason = "misrouted"


ENVELOPE_ERRORS: tuple[type[EnvelopeError], ...] = (
    BodyTooLarge,
    NotJwe,
    UnsupportedAlgorithm,
    InvalidHeader,
    UnknownKid,
    AuthenticationFailed,
    NotAuthorized,
    UnknownType,
    UnknownSchemaVersion,
    InvalidPayload,
    Misrouted,
)


LIFECYCLE_REASONS: dict[str, str] = {
    "retries_exhausted": "a transient failure outlived the retry budget (the last reason is kept)",
    "not_yet_expired": "a NotYet precondition was still unmet at the horizon",
    "delivery_limit": "the broker's delivery limit dead-lettered it (crashed its workers)",
    "unroutable": "published to the fleet exchange with a routing key no queue is bound to",
}
