"""Opening and re-sealing archived envelopes — only for ``show --decrypt``, ``reencrypt`` and the
replay of a re-encrypted dead letter. Everything else in ``dlq`` reads the header alone.

The archive key is a key-registry entry of producer ``archive`` (``fleet keys new --producer
archive --types '*'``). An archive-sealed envelope keeps the original protected header — message
id, type, producer, created-at — with the archive key's ``kid`` and an ``archived_from`` field
naming the original kid; a worker refuses it (the producer does not own the kid), so it can only
reach a queue by replay, which re-seals it under the producer's current key.
"""

from __future__ import annotations

from typing import Any

from queues.envelope import decrypt_with, encrypt_with, peek_raw_header
from queues.errors import FleetError
from queues.keys import KeyRegistry, KeyRegistryError, ProducerKey

ARCHIVE_PRODUCER = "archive"
ARCHIVED_FROM = "archived_from"


class MissingKey(FleetError):
    """The key registry here does not hold a key this envelope needs."""

    reason = "missing_key"


def kid_of(body: bytes) -> str | None:
    """The ``kid`` of a JWE body, or None when it is not one."""
    try:
        kid = peek_raw_header(body).get("kid")
    except FleetError:
        return None
    return kid if isinstance(kid, str) else None


def decrypt(body: bytes, keys: KeyRegistry) -> tuple[dict[str, Any], bytes]:
    """The protected header and the plaintext of an archived envelope.

    Raises:
        NotJwe: the body is not a JWE compact serialization.
        MissingKey: no key for its kid here.
        AuthenticationFailed: the ciphertext or header was altered (or the key is wrong).
    """
    header = peek_raw_header(body)
    kid = header.get("kid")
    key = keys.get(kid) if isinstance(kid, str) else None
    if key is None:
        raise MissingKey(f"no key with id {kid!r} in the key registry")
    return decrypt_with(body, key)


def seal_with(header: dict[str, Any], plaintext: bytes, key: ProducerKey) -> bytes:
    """A JWE compact envelope of ``plaintext`` under ``key`` with this protected header."""
    return encrypt_with({**header, "kid": key.kid}, plaintext, key)


def archive_key(keys: KeyRegistry) -> ProducerKey:
    """The newest archive key.

    Raises:
        MissingKey: the registry has no key of producer ``archive``.
    """
    try:
        return keys.sealing_key(ARCHIVE_PRODUCER)
    except KeyRegistryError:
        raise MissingKey(
            "no archive key: create one with `fleet keys new --producer archive --types '*'`"
        ) from None


def seal_for_archive(body: bytes, keys: KeyRegistry) -> tuple[bytes, str]:
    """Re-seal an envelope under the newest archive key; the new body and the kid it replaced.

    Raises:
        NotJwe, MissingKey, AuthenticationFailed: as ``decrypt``.
    """
    header, plaintext = decrypt(body, keys)
    key = archive_key(keys)
    old_kid = str(header["kid"])
    header.setdefault(ARCHIVED_FROM, old_kid)
    return seal_with(header, plaintext, key), old_kid


def seal_for_replay(body: bytes, keys: KeyRegistry) -> bytes:
    """The envelope to replay for an archive-sealed one: the original header under the
    producer's current key (same message id, type, created-at).

    Raises:
        NotJwe, MissingKey, AuthenticationFailed: the envelope cannot be opened, or the
            producer has no key here.
    """
    header, plaintext = decrypt(body, keys)
    header.pop(ARCHIVED_FROM, None)
    producer = header.get("producer")
    try:
        key = keys.sealing_key(str(producer))
    except KeyRegistryError:
        raise MissingKey(f"no key of producer {producer!r} to re-seal it for replay") from None
    return seal_with(header, plaintext, key)
