"""Test-side JWE helpers: seal arbitrary headers and plaintexts, to build bad envelopes."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime
from typing import Any

from joserfc import jwe
from joserfc.jwk import OctKey

from queues.keys import ProducerKey

_REGISTRY = jwe.JWERegistry(algorithms=["dir", "A256GCM"], strict_check_header=False)


def header_for(
    key: ProducerKey, message_type: str, schema_version: int = 1, **extra: Any
) -> dict[str, Any]:
    header: dict[str, Any] = {
        "alg": "dir",
        "enc": "A256GCM",
        "kid": key.kid,
        "message_id": str(uuid.uuid4()),
        "message_type": message_type,
        "schema_version": schema_version,
        "producer": key.producer,
        "created_at": datetime.now(UTC).isoformat(),
    }
    header.update(extra)
    return {k: v for k, v in header.items() if v is not None}


def seal_raw(header: dict[str, Any], plaintext: bytes, key: ProducerKey) -> bytes:
    token = jwe.encrypt_compact(
        header, plaintext, OctKey.import_key(key.secret), registry=_REGISTRY
    )
    return token.encode()


def b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def replace_header(body: bytes, header: dict[str, Any]) -> bytes:
    """The same envelope with another protected header segment (breaks the AAD)."""
    parts = body.split(b".")
    parts[0] = b64(json.dumps(header).encode())
    return b".".join(parts)


def flip_ciphertext_bit(body: bytes) -> bytes:
    parts = body.split(b".")
    raw = bytearray(base64.urlsafe_b64decode(parts[3] + b"=" * (-len(parts[3]) % 4)))
    raw[0] ^= 0x01
    parts[3] = b64(bytes(raw))
    return b".".join(parts)
