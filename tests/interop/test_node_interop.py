"""The fleet and a Node publisher written from docs/wire-format.md with jose understand each other.

Needs Node.js and npm: the packages pinned in tests/interop/node/package-lock.json are installed
once per session with ``npm ci`` (only when node_modules is missing or differs from the lock; see
the ``node`` fixture). Without Node the tests are skipped locally and fail in CI (``CI`` set).
"""

from __future__ import annotations

import dataclasses
import re
import secrets
import uuid
from typing import Any

import pytest

from queues.envelope import open_envelope, seal
from queues.errors import AuthenticationFailed
from queues.keys import KeyRegistry, ProducerKey
from tests.interop.cases import (
    CASE_IDS,
    CASES,
    key_for,
    with_flipped_character,
    with_new_message_id,
)
from tests.interop.nodejs import NODE_DIR, run_json, run_script
from tests.support.factories import sample


def node_seal(
    node: str, key: ProducerKey, message_type: str, schema_version: int, payload: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    output = run_json(
        node,
        "seal.mjs",
        {
            "key": key.to_json(),
            "message_type": message_type,
            "schema_version": schema_version,
            "payload": payload,
            "header": {"correlation_id": str(uuid.uuid4())},
        },
    )
    return output["jwe"], output["header"]


def node_open(node: str, key: ProducerKey, body: str) -> tuple[dict[str, Any], dict[str, Any]]:
    output = run_json(node, "open.mjs", {"key": key.to_json(), "jwe": body})
    return output["header"], output["payload"]


def test_the_node_side_imports_only_jose_and_node_builtins() -> None:
    for script in NODE_DIR.glob("*.mjs"):
        modules = re.findall(r"""from\s+['"]([^'"]+)['"]""", script.read_text())
        assert modules, script.name
        for module in modules:
            assert module == "jose" or module.startswith(("node:", "./")), (script.name, module)


@pytest.mark.parametrize(("message_type", "schema_version"), CASES, ids=CASE_IDS)
def test_an_envelope_sealed_in_node_opens_in_the_fleet_to_the_equal_model(
    node: str, keys: KeyRegistry, message_type: str, schema_version: int
) -> None:
    # Given a Node publisher holding its key entry and a payload as JSON
    key = key_for(keys, message_type)
    model = sample(message_type, schema_version)

    # When it seals the message with jose
    body, header = node_seal(node, key, message_type, schema_version, model.model_dump(mode="json"))
    opened = open_envelope(body.encode("ascii"), keys)

    # Then the fleet opens it to the same model and the same header
    assert opened.payload == model
    assert type(opened.payload) is type(model)
    assert opened.header.to_jose() == header


@pytest.mark.parametrize(("message_type", "schema_version"), CASES, ids=CASE_IDS)
def test_an_envelope_sealed_by_the_fleet_opens_in_node_with_equal_header_and_payload(
    node: str, keys: KeyRegistry, message_type: str, schema_version: int
) -> None:
    key = key_for(keys, message_type)
    model = sample(message_type, schema_version)

    sealed = seal(model, key, correlation_id=uuid.uuid4())
    header, payload = node_open(node, key, sealed.body.decode("ascii"))

    assert header == sealed.header.to_jose()
    assert payload == model.model_dump(mode="json")


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(with_new_message_id, id="header-rewritten"),
        pytest.param(lambda body: with_flipped_character(body, 3), id="ciphertext-bit-flip"),
        pytest.param(lambda body: with_flipped_character(body, 4), id="tag-bit-flip"),
    ],
)
def test_a_tampered_node_envelope_fails_to_open_as_authentication_failed(
    node: str, keys: KeyRegistry, tamper: Any
) -> None:
    key = key_for(keys, "crm.customer.upsert")
    model = sample("crm.customer.upsert", 2)
    body, _ = node_seal(node, key, model.message_type, 2, model.model_dump(mode="json"))

    with pytest.raises(AuthenticationFailed) as failure:
        open_envelope(tamper(body).encode("ascii"), keys)

    assert failure.value.reason == "authentication_failed"


def test_a_node_envelope_sealed_with_other_key_bytes_under_a_known_kid_fails_authentication(
    node: str, keys: KeyRegistry
) -> None:
    key = key_for(keys, "billing.charge.post")
    impostor = dataclasses.replace(key, secret=secrets.token_bytes(32))
    model = sample("billing.charge.post")
    body, _ = node_seal(node, impostor, model.message_type, 1, model.model_dump(mode="json"))

    with pytest.raises(AuthenticationFailed):
        open_envelope(body.encode("ascii"), keys)


def test_a_fleet_envelope_with_a_tampered_header_does_not_open_in_node(
    node: str, keys: KeyRegistry
) -> None:
    key = key_for(keys, "billing.charge.post")
    sealed = seal(sample("billing.charge.post"), key)

    result = run_script(
        node,
        "open.mjs",
        {"key": key.to_json(), "jwe": with_new_message_id(sealed.body.decode("ascii"))},
    )

    assert result.returncode == 1
    assert "ERR_JWE_DECRYPTION_FAILED" in result.stderr
