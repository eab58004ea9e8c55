"""The key registry: owner-only files, newest key seals, no key material in listings."""

from __future__ import annotations

import base64
import json
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from queues.keys import KeyRegistry, KeyRegistryError, ProducerKey, add_usage, read_usage
from workers.cli import app


def test_saved_registry_is_owner_only_and_loads_back(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    registry = KeyRegistry([ProducerKey.generate("self-care", ["crm.*"])])
    registry.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = KeyRegistry.load(path)
    assert [k.kid for k in loaded] == [k.kid for k in registry]
    assert loaded.sealing_key("self-care").secret == registry.sealing_key("self-care").secret


def test_registry_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    KeyRegistry([ProducerKey.generate("self-care", ["crm.*"])]).save(path)
    os.chmod(path, 0o644)
    with pytest.raises(KeyRegistryError, match="chmod 600"):
        KeyRegistry.load(path)


@pytest.mark.parametrize(
    "entry",
    [
        {
            "kid": "a.b.c",
            "producer": "p1",
            "types": ["crm.*"],
            "created_at": "2026-01-01T00:00:00Z",
            "key": base64.urlsafe_b64encode(b"short").decode(),
        },
        {
            "kid": "a.b.c",
            "producer": "Bad Name",
            "types": ["crm.*"],
            "created_at": "2026-01-01T00:00:00Z",
            "key": base64.urlsafe_b64encode(bytes(32)).decode(),
        },
        {
            "kid": "a.b.c",
            "producer": "p1",
            "types": [],
            "created_at": "2026-01-01T00:00:00Z",
            "key": base64.urlsafe_b64encode(bytes(32)).decode(),
        },
        {
            "kid": "a.b.c",
            "producer": "p1",
            "types": ["crm.*"],
            "created_at": "2026-01-01T00:00:00",
            "key": base64.urlsafe_b64encode(bytes(32)).decode(),
        },
        {"producer": "p1"},
    ],
)
def test_malformed_entries_are_refused_without_echoing_the_key(entry: dict[str, object]) -> None:
    with pytest.raises(KeyRegistryError) as caught:
        KeyRegistry.from_json(json.dumps({"version": 1, "keys": [entry]}))
    assert str(entry.get("key", "")) not in str(caught.value) or not entry.get("key")


def test_newest_key_seals_and_patterns_match_dotted_types() -> None:
    now = datetime(2026, 11, 1, tzinfo=UTC)
    old = ProducerKey.generate("payment-gateway", ["billing.payment.*"], now=now)
    new = ProducerKey.generate(
        "payment-gateway", ["billing.payment.*"], now=now + timedelta(days=90)
    )
    registry = KeyRegistry([new, old])
    assert registry.sealing_key("payment-gateway") == new
    assert new.may_send("billing.payment.record")
    assert not new.may_send("billing.charge.post")
    assert ProducerKey.generate("fleet", ["billing.*"]).may_send("billing.charge.post")
    with pytest.raises(KeyRegistryError):
        registry.sealing_key("nobody")


def test_key_material_never_in_repr() -> None:
    key = ProducerKey.generate("self-care", ["crm.*"])
    encoded = base64.urlsafe_b64encode(key.secret).rstrip(b"=").decode()
    registry = KeyRegistry([key])
    for text in (repr(key), str(key), repr(registry)):
        assert encoded not in text
        assert key.secret.hex() not in text


def test_usage_counts_accumulate_across_flushes(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    key = ProducerKey.generate("self-care", ["crm.*"])
    registry = KeyRegistry([key])
    registry.save(path)
    for _ in range(3):
        registry.record_seal(key.kid)
    assert registry.flush_usage(path) == {key.kid: 3}
    registry.record_seal(key.kid)
    registry.flush_usage(path)
    add_usage(path, {key.kid: 10})
    assert read_usage(path) == {key.kid: 14}


def test_cli_new_then_list_shows_ids_and_usage_but_no_key_material(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    runner = CliRunner()
    created = runner.invoke(
        app,
        [
            "keys",
            "new",
            "--producer",
            "payment-gateway",
            "--types",
            "billing.payment.*",
            "--file",
            str(path),
            "--json",
        ],
    )
    assert created.exit_code == 0, created.output
    kid = json.loads(created.stdout)["kid"]
    registry = KeyRegistry.load(path)
    registry.record_seal(kid)
    registry.flush_usage(path)
    listed = runner.invoke(app, ["keys", "list", "--file", str(path), "--json"])
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)
    assert rows == [
        {
            "kid": kid,
            "producer": "payment-gateway",
            "types": ["billing.payment.*"],
            "created_at": rows[0]["created_at"],
            "sealing": True,
            "messages_sealed": 1,
            "rotate_due": False,
        }
    ]
    secret = registry.get(kid).secret  # type: ignore[union-attr]
    encoded = base64.urlsafe_b64encode(secret).rstrip(b"=").decode()
    table = runner.invoke(app, ["keys", "list", "--file", str(path)])
    for output in (listed.output, table.output, created.output):
        assert encoded not in output
        assert encoded[:16] not in output


def test_cli_retire_needs_confirmation(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    key = ProducerKey.generate("self-care", ["crm.*"])
    KeyRegistry([key]).save(path)
    runner = CliRunner()
    refused = runner.invoke(app, ["keys", "retire", key.kid, "--file", str(path)], input="n\n")
    assert refused.exit_code != 0
    assert KeyRegistry.load(path).get(key.kid) is not None
    done = runner.invoke(app, ["keys", "retire", key.kid, "--file", str(path), "--yes"])
    assert done.exit_code == 0, done.output
    assert KeyRegistry.load(path).get(key.kid) is None
