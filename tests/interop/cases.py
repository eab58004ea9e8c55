"""What the interop suites share: the catalogue entries to cross, the key to use, tampering."""

from __future__ import annotations

import base64
import json
import uuid

from queues.contracts import CATALOGUE
from queues.keys import KeyRegistry, ProducerKey

# Every (type, schema version): entity versions (crm.customer.upsert v1, v2), money
# (billing.charge.post, billing.payment.record, provisioning.service.activate), enums, dates.
CASES: list[tuple[str, int]] = sorted(CATALOGUE)
CASE_IDS: list[str] = [f"{message_type}.v{version}" for message_type, version in CASES]


def key_for(keys: KeyRegistry, message_type: str) -> ProducerKey:
    """The sealing key of an upstream producer allowed to send the type, else the fleet's own."""
    allowed = [key for key in keys if key.may_send(message_type)]
    upstream = [key for key in allowed if key.producer != "fleet"]
    return (upstream or allowed)[0]


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def with_new_message_id(body: str) -> str:
    """The body with its header rewritten to carry another message id (a replay attempt)."""
    segments = body.split(".")
    header = json.loads(base64.urlsafe_b64decode(segments[0] + "=" * (-len(segments[0]) % 4)))
    header["message_id"] = str(uuid.uuid4())
    segments[0] = _b64url(json.dumps(header, separators=(",", ":")).encode())
    return ".".join(segments)


def with_flipped_character(body: str, segment: int) -> str:
    """The body with the first character of one part changed (a bit flip in transit)."""
    segments = body.split(".")
    first = segments[segment][0]
    segments[segment] = ("B" if first == "A" else "A") + segments[segment][1:]
    return ".".join(segments)
