"""The key registry: kid ▶ producer ▶ types it may send ▶ 32-byte AES-256-GCM key.

Kept in a JSON file of mode 0600 (refused when group or others can read it) or given as JSON text
(e.g. a Kubernetes secret in ``FLEET_KEYS_JSON``). Sealing uses a producer's newest key; opening
accepts any registered key, then the envelope checks that the header's producer owns the kid and
may send the type. Type patterns are shell-style: ``*`` matches any run of characters, dots
included, so ``billing.*`` covers every billing type; a pattern without ``*`` is one exact type.

File format (``version`` 1)::

    {"version": 1, "keys": [{"kid": "payment-gateway.20261121.3fa2c1",
      "producer": "payment-gateway", "types": ["billing.payment.*"],
      "created_at": "2026-11-21T23:30:00Z", "key": "<base64url of 32 bytes>"}]}

Usage counts (messages sealed per kid) live beside it in ``<file>.usage.json``, merged under a
file lock, because AES-GCM with random 96-bit nonces must be rotated long before 2^32 messages.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import re
import secrets
import stat
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from queues.errors import FleetError

KEY_BYTES = 32
PRODUCER_PATTERN = re.compile(r"^[a-z][a-z0-9-]{1,31}$")
KID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{2,127}$")
TYPE_PATTERN = re.compile(r"^[a-z0-9*][a-z0-9.*_-]{0,127}$")
# Rotate far below the 2^32 random-nonce bound of AES-GCM (NIST SP 800-38D §8.3).
ROTATE_AFTER_MESSAGES = 2**30


class KeyRegistryError(FleetError):
    """The key registry cannot be loaded, saved or used as asked."""

    reason = "key_registry"


@dataclass(frozen=True)
class ProducerKey:
    """One producer key. The key bytes never appear in its repr."""

    kid: str
    producer: str
    types: tuple[str, ...]
    created_at: datetime
    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not KID_PATTERN.match(self.kid):
            raise KeyRegistryError("key id must be 3-128 of A-Z a-z 0-9 . _ -")
        if not PRODUCER_PATTERN.match(self.producer):
            raise KeyRegistryError("producer must be 2-32 of a-z 0-9 -, starting with a letter")
        if not self.types or not all(TYPE_PATTERN.match(p) for p in self.types):
            raise KeyRegistryError("types must be one or more patterns like 'billing.*'")
        if len(self.secret) != KEY_BYTES:
            raise KeyRegistryError(f"key {self.kid} is not {KEY_BYTES} bytes")
        if self.created_at.tzinfo is None:
            raise KeyRegistryError("created_at must carry a timezone")

    def may_send(self, message_type: str) -> bool:
        """Whether this key's producer may send ``message_type``."""
        return any(fnmatchcase(message_type, pattern) for pattern in self.types)

    def to_json(self) -> dict[str, Any]:
        return {
            "kid": self.kid,
            "producer": self.producer,
            "types": list(self.types),
            "created_at": self.created_at.isoformat().replace("+00:00", "Z"),
            "key": base64.urlsafe_b64encode(self.secret).rstrip(b"=").decode(),
        }

    @classmethod
    def from_json(cls, item: dict[str, Any]) -> ProducerKey:
        try:
            raw = str(item["key"])
            secret = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
            return cls(
                kid=str(item["kid"]),
                producer=str(item["producer"]),
                types=tuple(str(t) for t in item["types"]),
                created_at=datetime.fromisoformat(str(item["created_at"]).replace("Z", "+00:00")),
                secret=secret,
            )
        except KeyRegistryError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise KeyRegistryError(f"malformed key entry ({type(exc).__name__})") from None

    @classmethod
    def generate(
        cls, producer: str, types: Iterable[str], *, now: datetime | None = None
    ) -> ProducerKey:
        """A fresh random key for ``producer``."""
        created = (now or datetime.now(UTC)).replace(microsecond=0)
        kid = f"{producer}.{created:%Y%m%d}.{secrets.token_hex(3)}"
        return cls(
            kid=kid,
            producer=producer,
            types=tuple(types),
            created_at=created,
            secret=secrets.token_bytes(KEY_BYTES),
        )


class KeyRegistry:
    """The keys a process holds, by kid, with per-kid usage counters for this process."""

    def __init__(self, keys: Iterable[ProducerKey] = ()) -> None:
        self._keys: dict[str, ProducerKey] = {}
        self._sealed: Counter[str] = Counter()
        for key in keys:
            self.add(key)

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[ProducerKey]:
        return iter(sorted(self._keys.values(), key=lambda k: (k.producer, k.created_at, k.kid)))

    def __repr__(self) -> str:
        return f"KeyRegistry(kids={sorted(self._keys)!r})"

    def add(self, key: ProducerKey) -> None:
        """Register a key.

        Raises:
            KeyRegistryError: the kid is already registered.
        """
        if key.kid in self._keys:
            raise KeyRegistryError(f"duplicate key id {key.kid}")
        self._keys[key.kid] = key

    def remove(self, kid: str) -> ProducerKey:
        """Unregister (retire) a key.

        Raises:
            KeyRegistryError: no key has this id.
        """
        try:
            return self._keys.pop(kid)
        except KeyError:
            raise KeyRegistryError(f"no key with id {kid}") from None

    def get(self, kid: str) -> ProducerKey | None:
        """The key with this id, or None."""
        return self._keys.get(kid)

    def producers(self) -> list[str]:
        return sorted({k.producer for k in self._keys.values()})

    def sealing_key(self, producer: str) -> ProducerKey:
        """The producer's newest key, the one that seals.

        Raises:
            KeyRegistryError: the producer has no key here.
        """
        candidates = [k for k in self._keys.values() if k.producer == producer]
        if not candidates:
            raise KeyRegistryError(f"no key for producer {producer}")
        return max(candidates, key=lambda k: (k.created_at, k.kid))

    def record_seal(self, kid: str) -> None:
        self._sealed[kid] += 1

    def sealed_counts(self) -> dict[str, int]:
        """Messages sealed per kid by this process since the last flush."""
        return dict(self._sealed)

    # -- persistence ---------------------------------------------------------------------------

    def to_json(self) -> str:
        return json.dumps({"version": 1, "keys": [k.to_json() for k in self]}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> KeyRegistry:
        """Load from JSON text.

        Raises:
            KeyRegistryError: the text is not a valid registry.
        """
        try:
            document = json.loads(text)
        except ValueError:
            raise KeyRegistryError("key registry is not valid JSON") from None
        if not isinstance(document, dict) or document.get("version") != 1:
            raise KeyRegistryError("key registry must be an object with version 1")
        entries = document.get("keys")
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise KeyRegistryError("key registry must hold a list of keys")
        return cls(ProducerKey.from_json(e) for e in entries)

    @classmethod
    def load(cls, path: Path) -> KeyRegistry:
        """Load from a file that only its owner can read.

        Raises:
            KeyRegistryError: missing, readable by group or others, or malformed.
        """
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            raise KeyRegistryError(f"key registry {path} does not exist") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyRegistryError(
                f"key registry {path} is accessible by group or others; run: chmod 600 {path}"
            )
        return cls.from_json(path.read_text())

    def save(self, path: Path) -> None:
        """Write atomically with mode 0600."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(self.to_json())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def flush_usage(self, registry_path: Path) -> dict[str, int]:
        """Add this process's seal counts to ``<registry>.usage.json``; return the totals."""
        counts = dict(self._sealed)
        self._sealed.clear()
        return add_usage(registry_path, counts)


def usage_path(registry_path: Path) -> Path:
    return registry_path.with_name(registry_path.name + ".usage.json")


def add_usage(registry_path: Path, counts: dict[str, int]) -> dict[str, int]:
    """Merge ``counts`` into the usage file under an exclusive lock; return the new totals."""
    target = usage_path(registry_path)
    fd = os.open(target, os.O_RDWR | os.O_CREAT, 0o600)
    with os.fdopen(fd, "r+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        text = handle.read()
        try:
            totals: dict[str, int] = {str(k): int(v) for k, v in json.loads(text or "{}").items()}
        except (ValueError, AttributeError):
            raise KeyRegistryError(f"usage file {target} is malformed") from None
        for kid, count in counts.items():
            totals[kid] = totals.get(kid, 0) + count
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(totals, indent=2, sort_keys=True) + "\n")
    return totals


def read_usage(registry_path: Path) -> dict[str, int]:
    """Usage totals per kid; empty when nothing was sealed yet."""
    target = usage_path(registry_path)
    if not target.exists():
        return {}
    return add_usage(registry_path, {})
