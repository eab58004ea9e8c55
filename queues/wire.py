"""What anyone can read of an envelope without a key: its size limits and its protected header.

No crypto library and no message models here, so the settings and the dead-letter archive's
readers start without them; queues.envelope builds sealing, opening and the validated header on
top of this (and re-exports these names).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from queues.errors import NotJwe

DEFAULT_MAX_BODY_BYTES = 256 * 1024
MAX_HEADER_SEGMENT_BYTES = 4096

BASE64URL = re.compile(rb"^[A-Za-z0-9_-]*$")


def peek_raw_header(body: bytes) -> dict[str, Any]:
    """The protected header as a JSON object, read without a key and without trusting it.

    Raises:
        NotJwe: not five base64url segments with a JSON object first.
    """
    if body.count(b".") != 4:
        raise NotJwe("body is not a JWE compact serialization (five dot-separated parts)")
    segment = body.split(b".", 1)[0]
    if len(segment) > MAX_HEADER_SEGMENT_BYTES:
        raise NotJwe("protected header is larger than 4096 bytes")
    if not BASE64URL.match(segment):
        raise NotJwe("protected header is not unpadded base64url")
    try:
        decoded = base64.urlsafe_b64decode(segment + b"=" * (-len(segment) % 4))
        raw = json.loads(decoded)
    except (binascii.Error, ValueError):
        raise NotJwe("protected header is not base64url-encoded JSON") from None
    if not isinstance(raw, dict):
        raise NotJwe("protected header is not a JSON object")
    return raw
