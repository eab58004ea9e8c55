"""A foreign publisher and reader of the fleet's envelope, written from docs/wire-format.md alone.

It stands for an upstream team that never reads the fleet's code: it imports nothing from the
project, only jwcrypto (a JOSE implementation independent of the fleet's joserfc) and the
standard library. Key entries are the JSON objects of the key registry (§6.1 of the document).
"""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime
from typing import Any

from jwcrypto import jwe, jwk

# §3.1: the types whose header carries ``entity_version``, copied from this payload field.
ENTITY_VERSION_FIELD = {"crm.customer.upsert": "entity_version"}


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _key(entry: dict[str, Any]) -> jwk.JWK:
    secret = _b64url_decode(entry["key"])
    if len(secret) != 32:
        raise ValueError("a fleet key is 32 bytes")
    return jwk.JWK(kty="oct", k=entry["key"])


def rfc3339_now() -> str:
    """Now, in UTC with milliseconds: ``2026-11-21T23:25:03.123Z``."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def protected_header(
    entry: dict[str, Any],
    message_type: str,
    schema_version: int,
    payload: dict[str, Any],
    *,
    message_id: str | None = None,
    correlation_id: str | None = None,
    created_at: str | None = None,
) -> dict[str, Any]:
    """The protected header of §3.1 for one message."""
    header: dict[str, Any] = {
        "alg": "dir",
        "enc": "A256GCM",
        "kid": entry["kid"],
        "cty": "application/json",
        "message_id": message_id or str(uuid.uuid4()),
        "message_type": message_type,
        "schema_version": schema_version,
        "producer": entry["producer"],
        "created_at": created_at or rfc3339_now(),
    }
    if correlation_id is not None:
        header["correlation_id"] = correlation_id
    field = ENTITY_VERSION_FIELD.get(message_type)
    if field is not None:
        header["entity_version"] = payload[field]
    return header


def seal_header(header: dict[str, Any], entry: dict[str, Any], payload: dict[str, Any]) -> str:
    """The AMQP body for a given protected header: JWE compact, dir + A256GCM."""
    plaintext = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    token = jwe.JWE(plaintext, protected=json.dumps(header, separators=(",", ":")))
    token.add_recipient(_key(entry))
    return str(token.serialize(compact=True))


def seal(
    entry: dict[str, Any],
    message_type: str,
    schema_version: int,
    payload: dict[str, Any],
    *,
    correlation_id: str | None = None,
) -> tuple[str, dict[str, Any]]:
    """Seal ``payload``; returns the body and the protected header it carries."""
    header = protected_header(
        entry, message_type, schema_version, payload, correlation_id=correlation_id
    )
    return seal_header(header, entry, payload), header


def read_header(body: str) -> dict[str, Any]:
    """The protected header, read without a key (§3: it travels in the clear)."""
    decoded = json.loads(_b64url_decode(body.split(".")[0]))
    if not isinstance(decoded, dict):
        raise ValueError("the protected header is not a JSON object")
    return decoded


def open_body(entry: dict[str, Any], body: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Decrypt and authenticate a body; returns (protected header, payload).

    Raises:
        jwcrypto.jwe.InvalidJWEData: the body does not decrypt or authenticate under the key.
    """
    token = jwe.JWE()
    token.allowed_algs = ["dir", "A256GCM"]
    token.deserialize(body, key=_key(entry))
    header = json.loads(token.objects["protected"])
    payload = json.loads(token.payload.decode("utf-8"))
    return header, payload
