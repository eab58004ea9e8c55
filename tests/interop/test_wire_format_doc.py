"""docs/wire-format.md stays true: its example opens everywhere, its tables match the code."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pika
import pytest

from queues.contracts import MESSAGE_TYPES, model_for, supported_versions
from queues.envelope import (
    DEFAULT_MAX_BODY_BYTES,
    MAX_HEADER_SEGMENT_BYTES,
    open_envelope,
    peek_header,
)
from queues.errors import (
    ENVELOPE_ERRORS,
    FleetError,
    IllegalTransition,
    NotYet,
    TransientError,
)
from queues.keys import KeyRegistry, ProducerKey
from tests.interop import foreign_jwcrypto as foreign
from tests.interop.nodejs import NODE_DIR, NODE_TIMEOUT_S, run_json

WIRE_FORMAT = Path(__file__).parents[2] / "docs" / "wire-format.md"


def example(name: str) -> str:
    """The code block that follows ``<!-- example:<name> -->`` in the document."""
    match = re.search(
        rf"<!-- example:{name} -->\n```[a-z]*\n(.*?)\n```", WIRE_FORMAT.read_text(), re.DOTALL
    )
    assert match is not None, f"docs/wire-format.md has no example block {name!r}"
    return match.group(1)


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@pytest.fixture
def entry() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(example("key"))
    return document


@pytest.fixture
def body() -> str:
    return example("body").strip()


@pytest.fixture
def header() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(example("header"))
    return document


@pytest.fixture
def payload() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(example("payload"))
    return document


def test_the_example_opens_in_the_fleet_to_the_documented_header_and_payload(
    entry: dict[str, Any], body: str, header: dict[str, Any], payload: dict[str, Any]
) -> None:
    keys = KeyRegistry([ProducerKey.from_json(entry)])

    opened = open_envelope(body.encode("ascii"), keys)

    assert opened.header.to_jose() == header
    assert opened.payload == model_for(header["message_type"], 1).model_validate(payload)
    assert peek_header(body.encode("ascii")) == opened.header


def test_the_example_opens_in_jwcrypto(
    entry: dict[str, Any], body: str, header: dict[str, Any], payload: dict[str, Any]
) -> None:
    assert foreign.open_body(entry, body) == (header, payload)


def test_the_example_opens_in_node(
    node: str, entry: dict[str, Any], body: str, header: dict[str, Any], payload: dict[str, Any]
) -> None:
    opened = run_json(node, "open.mjs", {"key": entry, "jwe": body})

    assert (opened["header"], opened["payload"]) == (header, payload)


def test_the_example_has_the_documented_shape(entry: dict[str, Any], body: str) -> None:
    protected, encrypted_key, iv, ciphertext, tag = body.split(".")

    assert re.fullmatch(r"[A-Za-z0-9_-]+", protected + iv + ciphertext + tag)
    assert encrypted_key == ""
    assert len(b64url_decode(iv)) == 12
    assert len(b64url_decode(tag)) == 16
    assert len(b64url_decode(entry["key"])) == 32
    assert re.fullmatch(r"[a-z][a-z0-9-]{1,31}\.\d{8}\.[0-9a-f]{6}", entry["kid"])
    assert len(protected) <= MAX_HEADER_SEGMENT_BYTES
    assert len(body) <= DEFAULT_MAX_BODY_BYTES


def documented_reasons() -> dict[str, bool]:
    """Reason code ▶ retried?, from the tables of §8."""
    section = WIRE_FORMAT.read_text().split("\n## 8.", 1)[1].split("\n## 9.", 1)[0]
    rows = re.findall(r"^\| `([a-z_]+)` \| [^|]+ \| ([^|]+) \|", section, re.MULTILINE)
    return {code: retried.lstrip("*").startswith("yes") for code, retried in rows}


def test_every_reason_code_is_documented_with_whether_it_is_retried() -> None:
    documented = documented_reasons()
    errors: tuple[type[FleetError], ...] = (
        *ENVELOPE_ERRORS,
        IllegalTransition,
        NotYet,
        TransientError,
    )

    for error in errors:
        assert error.reason in documented, error.reason
        assert documented[error.reason] == error.retryable, error.reason


def test_the_documented_limits_are_the_code_defaults() -> None:
    text = WIRE_FORMAT.read_text()

    assert f"default **{DEFAULT_MAX_BODY_BYTES}**" in text
    assert f"**{MAX_HEADER_SEGMENT_BYTES}**" in text


def test_the_catalogue_table_lists_every_type_and_schema_version() -> None:
    section = WIRE_FORMAT.read_text().split("\n## 5.", 1)[1].split("\n## 6.", 1)[0]
    rows = {
        message_type: (versions, files)
        for message_type, versions, files in re.findall(
            r"^\| `([a-z_.]+)` \| ([0-9, ]+) \| ([^|]+) \|", section, re.MULTILINE
        )
    }

    assert set(rows) == set(MESSAGE_TYPES)
    for message_type, (versions, files) in rows.items():
        assert [int(v) for v in versions.split(",")] == supported_versions(message_type)
        for version in supported_versions(message_type):
            name = f"{message_type}.v{version}.schema.json"
            assert f"`{name}`" in files
            assert (WIRE_FORMAT.parent / "schemas" / name).is_file(), name


@pytest.mark.broker
def test_the_node_publisher_of_the_document_publishes_a_message_the_fleet_opens(
    node: str, vhost_url: str
) -> None:
    # Given the fleet's exchange and billing queue, and a payment-gateway key
    key = ProducerKey.generate("payment-gateway", ["billing.payment.*"])
    connection = pika.BlockingConnection(pika.URLParameters(vhost_url))
    try:
        channel = connection.channel()
        channel.exchange_declare("fleet", "topic", durable=True)
        channel.queue_declare("billing", durable=True, arguments={"x-queue-type": "quorum"})
        channel.queue_bind("billing", "fleet", "billing.#")

        # When the program of §11.1 runs, as printed
        result = subprocess.run(
            [node, "--input-type=module"],
            input=example("node-publisher"),
            cwd=NODE_DIR,
            env={
                **os.environ,
                "FLEET_KEY_ENTRY": json.dumps(key.to_json()),
                "AMQP_URL": vhost_url,
            },
            capture_output=True,
            text=True,
            timeout=NODE_TIMEOUT_S,
        )
        assert result.returncode == 0, result.stderr

        # Then the fleet receives a message as §2 describes, and opens it
        method, properties, body = channel.basic_get("billing", auto_ack=True)
    finally:
        connection.close()
    assert method is not None
    opened = open_envelope(body, KeyRegistry([key]))
    assert method.routing_key == opened.header.message_type == "billing.payment.record"
    assert properties.delivery_mode == 2
    assert properties.content_type == "application/jose"
    assert properties.message_id == str(opened.header.message_id)
    assert properties.type == opened.header.message_type
