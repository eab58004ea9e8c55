"""The bad-input catalogue, published from outside the project: each gets its documented outcome.

Publishers here are plain pika, Debian's ``amqp-publish`` (a C client that cannot set a message
id or wait for confirms) and jwcrypto (a JOSE implementation other than the fleet's). Healthy
messages flow meanwhile; no worker crashes, nothing retries except the bounded skew cases.
"""

from __future__ import annotations

import base64
import json
import pickle
import shutil
import subprocess
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pika
import pytest

from queues.keys import ProducerKey
from tests.interop import foreign_jwcrypto as foreign
from tests.support.factories import sample
from tests.support.fleet import FleetUnderTest, fleet_under_test
from workers.ledger import check_ledger, drain_dead_letters

pytestmark = [pytest.mark.broker, pytest.mark.db, pytest.mark.slow]


def entry(key: ProducerKey) -> dict[str, Any]:
    return key.to_json()


def document(message_type: str, **changes: Any) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads(sample(message_type).model_dump_json())
    payload.update(changes)
    return payload


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class Outsider:
    """A foreign publisher: plain pika with publisher confirms, no project code."""

    def __init__(self, url: str) -> None:
        self.connection = pika.BlockingConnection(pika.URLParameters(url))
        self.channel = self.connection.channel()
        self.channel.confirm_delivery()

    def publish(self, routing_key: str, body: bytes | str, message_id: str | None) -> None:
        raw = body.encode() if isinstance(body, str) else body
        properties = pika.BasicProperties(
            delivery_mode=2, content_type="application/jose", message_id=message_id
        )
        self.channel.basic_publish("fleet", routing_key, raw, properties, mandatory=True)

    def close(self) -> None:
        self.connection.close()


def foreign_seal(
    key: ProducerKey, message_type: str, payload: dict[str, Any], /, **header: Any
) -> tuple[str, str]:
    """(body, message id) sealed by jwcrypto with header fields overridden (None removes one)."""
    fields = foreign.protected_header(entry(key), message_type, 1, payload)
    for name, value in header.items():
        if value is None:
            fields.pop(name, None)
        else:
            fields[name] = value
    message_id = fields.get("message_id") or str(uuid.uuid4())
    return foreign.seal_header(fields, entry(key), payload), message_id


@pytest.fixture
def fleet(tmp_path: Path) -> FleetUnderTest:
    with fleet_under_test(tmp_path, env={"FLEET_SKEW_MAX_ATTEMPTS": "2"}) as under_test:
        yield under_test


def test_every_bad_input_gets_its_documented_outcome_and_healthy_traffic_flows(
    fleet: FleetUnderTest,
) -> None:
    fleet_key = fleet.keys.sealing_key("fleet")
    self_care = fleet.keys.sealing_key("self-care")
    stranger = ProducerKey.generate("self-care", ["crm.*"])  # a key the workers do not hold
    expected: dict[str, str] = {}  # message id ▶ documented reason
    published: dict[str, str] = {}  # message id ▶ the type whose queues it reaches

    workers = fleet.start_workers(processes=1, threads=4)
    outsider = Outsider(fleet.url)

    def send(
        reason: str, routing_key: str, body: bytes | str, message_type: str | None = None
    ) -> None:
        message_id = str(uuid.uuid4())
        outsider.publish(routing_key, body, message_id)
        expected[message_id] = reason
        published[message_id] = message_type or routing_key

    def send_sealed(
        reason: str, body: str, message_id: str, message_type: str, routing_key: str | None = None
    ) -> None:
        outsider.publish(routing_key or message_type, body, message_id)
        expected[message_id] = reason
        published[message_id] = message_type

    healthy = [sample("crm.interaction.log") for _ in range(60)]
    fleet.publish(healthy[:30], "self-care")

    send("not_jwe", "crm.interaction.log", "hello, fleet")
    send("not_jwe", "crm.interaction.log", pickle.dumps({"action": "rm -rf /"}))
    send("body_too_large", "crm.interaction.log", b"x" * 300_000)
    wrong_alg = {"alg": "A256KW", "enc": "A256GCM", "kid": fleet_key.kid}
    send(
        "unsupported_algorithm",
        "crm.interaction.log",
        f"{b64(json.dumps(wrong_alg).encode())}.a.b.c.d",
    )
    for reason, type_, overrides in [
        ("invalid_header", "crm.interaction.log", {"message_id": None}),
        ("invalid_header", "crm.interaction.log", {"message_type": None}),
        ("unknown_type", "billing.charge.refund", {}),
        ("unknown_schema_version", "crm.interaction.log", {"schema_version": 9}),
    ]:
        message_id = str(uuid.uuid4())
        header = {"message_id": message_id} | overrides
        body, _ = foreign_seal(fleet_key, type_, document("crm.interaction.log"), **header)
        send_sealed(reason, body, message_id, type_)
    body, message_id = foreign_seal(
        fleet_key, "crm.interaction.log", document("crm.interaction.log")
    )
    send_sealed(
        "misrouted", body, message_id, "crm.interaction.note", routing_key="crm.interaction.note"
    )
    for changes in (
        {"customer_id": 12345},
        {"surprise": "extra field"},
    ):
        body, message_id = foreign_seal(
            fleet_key, "crm.interaction.log", document("crm.interaction.log", **changes)
        )
        send_sealed("invalid_payload", body, message_id, "crm.interaction.log")
    for amount in (
        {"amount_minor": -100, "currency": "EUR", "exponent": 2},
        {"amount_minor": 100, "currency": "JPY", "exponent": 2},
    ):
        body, message_id = foreign_seal(
            fleet_key, "billing.charge.post", document("billing.charge.post", amount=amount)
        )
        send_sealed("invalid_payload", body, message_id, "billing.charge.post")

    a, a_id = foreign_seal(self_care, "crm.interaction.log", document("crm.interaction.log"))
    b, b_id = foreign_seal(self_care, "crm.interaction.log", document("crm.interaction.log"))
    parts = a.split(".")
    ciphertext = bytearray(foreign._b64url_decode(parts[3]))
    ciphertext[0] ^= 1
    send_sealed(
        "authentication_failed",
        ".".join([*parts[:3], b64(bytes(ciphertext)), parts[4]]),
        a_id,
        "crm.interaction.log",
    )
    header = foreign.read_header(b) | {"correlation_id": str(uuid.uuid4())}
    tampered = ".".join([b64(json.dumps(header).encode()), *b.split(".")[1:]])
    send_sealed("authentication_failed", tampered, b_id, "crm.interaction.log")
    c, _ = foreign_seal(self_care, "crm.interaction.log", document("crm.interaction.log"))
    d, _ = foreign_seal(self_care, "crm.interaction.log", document("crm.interaction.log"))
    swapped = ".".join([c.split(".")[0], *d.split(".")[1:]])
    send_sealed(
        "authentication_failed",
        swapped,
        foreign.read_header(c)["message_id"],
        "crm.interaction.log",
    )

    body, message_id = foreign_seal(
        stranger, "crm.interaction.log", document("crm.interaction.log")
    )
    send_sealed("unknown_kid", body, message_id, "crm.interaction.log")
    body, message_id = foreign_seal(
        self_care,
        "crm.interaction.log",
        document("crm.interaction.log"),
        producer="payment-gateway",
    )
    send_sealed("not_authorized", body, message_id, "crm.interaction.log")

    # The same envelope twice: the second copy is absorbed by the inbox.
    replayed, replayed_id = foreign_seal(
        self_care, "crm.interaction.log", document("crm.interaction.log")
    )
    outsider.publish("crm.interaction.log", replayed, replayed_id)
    outsider.publish("crm.interaction.log", replayed, replayed_id)
    published[replayed_id] = "crm.interaction.log"

    if shutil.which("amqp-publish") is None:
        pytest.fail("Debian's amqp-tools (amqp-publish) is missing: apt-get install amqp-tools")
    subprocess.run(
        [
            "amqp-publish",
            "--url",
            fleet.url,
            "-e",
            "fleet",
            "-r",
            "crm.interaction.log",
            "-p",
            "-C",
            "application/jose",
        ],
        input=bytes(range(256)),
        check=True,
        timeout=30,
    )
    anonymous, anonymous_id = foreign_seal(
        self_care, "crm.interaction.log", document("crm.interaction.log")
    )
    subprocess.run(
        [
            "amqp-publish",
            "--url",
            fleet.url,
            "-e",
            "fleet",
            "-r",
            "crm.interaction.log",
            "-p",
            "-C",
            "application/jose",
            "-b",
            anonymous,
        ],
        check=True,
        timeout=30,
    )
    published[anonymous_id] = "crm.interaction.log"
    outsider.close()
    fleet.publish(healthy[30:], "self-care")
    fleet.confirmed.update(published)

    fleet.wait_for(
        lambda: (
            fleet.expected() - {(m, "crm") for m in expected} <= fleet.settled()
            and len([e for e in fleet.events() if e["event"] == "dead"]) >= len(expected) + 1
        ),
        timeout_s=120,
        what="every bad input dead-lettered and every healthy message processed",
    )
    assert workers.poll() is None, "a worker process died"
    letters = drain_dead_letters(fleet.url)
    anonymous_letters = [d for d in letters if not d.message_id]
    assert [d.reason for d in anonymous_letters] == ["not_jwe"], "the id-less garbage"
    by_id = {d.message_id: d.reason for d in letters if d.message_id}
    assert by_id == expected
    report = check_ledger(fleet.engine, fleet.confirmed, [d for d in letters if d.message_id])
    print(report.summary())
    assert report.ok, report.summary()

    events = fleet.events()
    retried = Counter(e["reason"] for e in events if e["event"] == "retried")
    assert retried == {"unknown_schema_version": 1, "unknown_kid": 1}, (
        "only skew cases retry, boundedly"
    )
    assert not [e for e in events if e["event"] == "suspect"]
    outcomes = Counter(e["event"] for e in events if e.get("message_id") == replayed_id)
    assert outcomes == {"ok": 1, "duplicate": 1}
    assert [e["event"] for e in events if e.get("message_id") == anonymous_id] == ["ok"]
    healthy_ids = set(fleet.confirmed) - set(published)
    healthy_outcomes = Counter(e["event"] for e in events if e.get("message_id") in healthy_ids)
    assert healthy_outcomes == {"ok": len(healthy)}
