"""What anyone can read of an envelope without a key: its size limits and its protected header.

No crypto library and no message models here, so the settings and the dead-letter archive's
readers start without them; queues.envelope builds sealing, opening and the validated header on
top of this (and re-exports these names). base64url is RFC 7515 §2's: the URL-safe alphabet,
no padding, nothing else (no whitespace, no line break).
"""

from __future__ import annotations

import binascii
import json
from typing import Any

from queues.errors import NotJwe

DEFAULT_MAX_BODY_BYTES = 256 * 1024
MAX_HEADER_SEGMENT_BYTES = 4096

_BASE64URL_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_TO_STANDARD = bytes.maketrans(b"-_", b"+/")
_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")
_NOT_FIVE_PARTS = "body is not a JWE compact serialization (five dot-separated parts)"


def is_base64url(segment: bytes) -> bool:
    """Whether ``segment`` holds only base64url characters (no padding, no whitespace)."""
    return not segment.translate(None, _BASE64URL_ALPHABET)


def b64url_decode(segment: bytes) -> bytes:
    """The bytes of a segment that ``is_base64url``.

    Raises:
        binascii.Error: its length is one more than a multiple of four (no such encoding).
    """
    return binascii.a2b_base64(segment.translate(_TO_STANDARD) + b"=" * (-len(segment) % 4))


def b64url_encode(data: bytes) -> bytes:
    """Unpadded base64url of ``data``."""
    return binascii.b2a_base64(data, newline=False).translate(_TO_URLSAFE).rstrip(b"=")


def decode_protected(segment: bytes) -> bytes:
    """The header's JSON text from the first part of a compact JWE.

    Raises:
        NotJwe: longer than ``MAX_HEADER_SEGMENT_BYTES``, or not unpadded base64url.
    """
    if len(segment) > MAX_HEADER_SEGMENT_BYTES:
        raise NotJwe("protected header is larger than 4096 bytes")
    if not is_base64url(segment):
        raise NotJwe("protected header is not unpadded base64url")
    try:
        return b64url_decode(segment)
    except binascii.Error:
        raise NotJwe("protected header is not base64url-encoded JSON") from None


def protected_object(text: bytes) -> dict[str, Any]:
    """The header's JSON text as an object.

    Raises:
        NotJwe: not JSON (nested too deep counts), or not an object.
    """
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError):
        raise NotJwe("protected header is not base64url-encoded JSON") from None
    if not isinstance(raw, dict):
        raise NotJwe("protected header is not a JSON object")
    return raw


def compact_parts(body: bytes) -> list[bytes]:
    """The five dot-separated parts of a compact JWE (of a body already within its size limit).

    Raises:
        NotJwe: not five parts.
    """
    parts = body.split(b".")
    if len(parts) != 5:
        raise NotJwe(_NOT_FIVE_PARTS)
    return parts


def protected_segment(body: bytes) -> bytes:
    """The first part of a compact JWE, however large the body.

    Raises:
        NotJwe: not five parts.
    """
    if body.count(b".") != 4:
        raise NotJwe(_NOT_FIVE_PARTS)
    return body.split(b".", 1)[0]


def peek_raw_header(body: bytes) -> dict[str, Any]:
    """The protected header as a JSON object, read without a key and without trusting it.

    Raises:
        NotJwe: not five base64url segments with a JSON object first.
    """
    return protected_object(decode_protected(protected_segment(body)))
