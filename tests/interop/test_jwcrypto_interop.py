"""The fleet and a jwcrypto publisher written from docs/wire-format.md understand each other."""

from __future__ import annotations

import ast
import uuid
from pathlib import Path

import pytest
from jwcrypto.jwe import InvalidJWEData

from queues.envelope import open_envelope, seal
from queues.errors import AuthenticationFailed
from queues.keys import KeyRegistry
from tests.interop import foreign_jwcrypto as foreign
from tests.interop.cases import CASE_IDS, CASES, key_for, with_new_message_id
from tests.support.factories import sample

FOREIGN_MODULES = {"__future__", "base64", "datetime", "json", "jwcrypto", "typing", "uuid"}


def test_the_foreign_publisher_imports_nothing_of_the_project() -> None:
    tree = ast.parse(Path(foreign.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative imports"
            imported.add((node.module or "").split(".")[0])
    assert imported <= FOREIGN_MODULES


@pytest.mark.parametrize(("message_type", "schema_version"), CASES, ids=CASE_IDS)
def test_an_envelope_sealed_with_jwcrypto_opens_in_the_fleet_to_the_equal_model(
    keys: KeyRegistry, message_type: str, schema_version: int
) -> None:
    # Given a foreign publisher holding its key entry and a payload as JSON
    key = key_for(keys, message_type)
    model = sample(message_type, schema_version)
    correlation_id = str(uuid.uuid4())

    # When it seals the message following the document
    body, header = foreign.seal(
        key.to_json(),
        message_type,
        schema_version,
        model.model_dump(mode="json"),
        correlation_id=correlation_id,
    )
    opened = open_envelope(body.encode("ascii"), keys)

    # Then the fleet opens it to the same model and the same header
    assert opened.payload == model
    assert type(opened.payload) is type(model)
    assert opened.header.to_jose() == header


@pytest.mark.parametrize(("message_type", "schema_version"), CASES, ids=CASE_IDS)
def test_an_envelope_sealed_by_the_fleet_opens_in_jwcrypto_with_equal_header_and_payload(
    keys: KeyRegistry, message_type: str, schema_version: int
) -> None:
    key = key_for(keys, message_type)
    model = sample(message_type, schema_version)

    sealed = seal(model, key)
    body = sealed.body.decode("ascii")
    header, payload = foreign.open_body(key.to_json(), body)

    assert header == sealed.header.to_jose()
    assert foreign.read_header(body) == header
    assert payload == model.model_dump(mode="json")
    if message_type == "crm.customer.upsert":
        assert header["entity_version"] == payload["entity_version"]
    else:
        assert "entity_version" not in header


def test_a_jwcrypto_envelope_with_a_tampered_header_fails_authentication(
    keys: KeyRegistry,
) -> None:
    key = key_for(keys, "billing.payment.record")
    model = sample("billing.payment.record")
    body, _ = foreign.seal(key.to_json(), model.message_type, 1, model.model_dump(mode="json"))

    with pytest.raises(AuthenticationFailed) as failure:
        open_envelope(with_new_message_id(body).encode("ascii"), keys)

    assert failure.value.reason == "authentication_failed"


def test_a_fleet_envelope_with_a_tampered_header_does_not_open_in_jwcrypto(
    keys: KeyRegistry,
) -> None:
    key = key_for(keys, "provisioning.service.activate")
    sealed = seal(sample("provisioning.service.activate"), key)

    with pytest.raises(InvalidJWEData):
        foreign.open_body(key.to_json(), with_new_message_id(sealed.body.decode("ascii")))
