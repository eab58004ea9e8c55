"""``fleet dlq`` and ``fleet retry`` on the real RabbitMQ and PostgreSQL: inspect, replay, parked
retries, housekeeping — audited, payloads hidden, destructive steps confirmed."""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from dlq import replay as replay_module
from dlq.archiver import Archiver
from dlq.crypto import decrypt
from handlers.errors import CurrencyMismatch, NetworkUnavailable
from queues.envelope import open_envelope
from queues.errors import NotYet
from queues.keys import KeyRegistry, ProducerKey
from queues.publisher import Outgoing, Publisher, PublishResult
from queues.roles import apply_roles, fleet_roles
from tests.support.dlq import DlqStack, dlq_stack, new_id
from tests.support.factories import sample
from tests.support.jose import header_for, seal_raw
from tests.support.rabbit import amqp_url, scratch_users

pytestmark = [pytest.mark.broker, pytest.mark.db]

DOCS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DlqStack]:
    with dlq_stack(tmp_path_factory.mktemp("dlq-cli")) as under_test:
        yield under_test


def token() -> str:
    return f"tok{uuid.uuid4().hex[:10]}"


def kill_charges(stack: DlqStack, count: int, error: Exception, **options: Any) -> list[str]:
    return [
        stack.kill_payload(sample("billing.charge.post"), error, **options) for _ in range(count)
    ]


def audit_rows(stack: DlqStack) -> list[Any]:
    return stack.query(
        "SELECT operator, action, result, dead_letter_ids, detail FROM operator_audit"
    )


def test_archive_drain_archives_what_is_waiting_then_exits(stack: DlqStack) -> None:
    message_id = stack.kill_payload(sample("billing.charge.post"), CurrencyMismatch("x"))
    result = stack.cli("archive", "--drain")
    assert result.exit_code == 0, result.output
    assert re.search(r"archived [1-9]\d* dead letters", result.stderr)
    stack.letter_id(message_id)
    assert stack.depth("billing.dead") == 0


# ── inspect ────────────────────────────────────────────────────────────────────────────────────


def test_ls_filters_newest_first_with_paging(stack: DlqStack) -> None:
    mark = token()
    first = kill_charges(stack, 3, CurrencyMismatch(f"currency {mark}"))
    later = stack.kill_payload(
        sample("crm.interaction.log"),
        NetworkUnavailable(f"timeout {mark}"),
        attempt=3,
        producer="self-care",
    )
    stack.archive()

    listing = stack.cli_json("ls", "--text", mark)
    assert listing["total"] == 4
    assert listing["items"][0]["message_id"] == later  # newest death first
    assert stack.cli_json("ls", "--text", mark, "--reason", "currency_mismatch")["total"] == 3
    assert stack.cli_json("ls", "--text", mark, "--queue", "crm")["items"][0]["last_reason"] == (
        "network_unavailable"
    )
    assert stack.cli_json("ls", "--text", mark, "--producer", "self-care")["total"] == 1
    assert stack.cli_json("ls", "--text", mark, "--error-class", "NetworkUnavailable")["total"] == 1
    assert stack.cli_json("ls", "--text", mark, "--type", "billing.charge.post")["total"] == 3
    assert stack.cli_json("ls", "--text", mark, "--until", "1h")["total"] == 0
    assert stack.cli_json("ls", "--text", mark, "--since", "1h")["total"] == 4
    page_one = stack.cli_json("ls", "--text", mark, "--limit", "3")["items"]
    page_two = stack.cli_json("ls", "--text", mark, "--limit", "3", "--page", "2")["items"]
    assert len(page_one) == 3 and len(page_two) == 1
    assert {i["message_id"] for i in page_one + page_two} == {*first, later}
    human = stack.cli("ls", "--text", mark)
    assert human.exit_code == 0 and "dead letters (open): 4" in human.stderr


def test_groups_count_across_reasons_and_types(stack: DlqStack) -> None:
    since = (datetime.now(UTC) - timedelta(milliseconds=2)).isoformat()
    kill_charges(stack, 3, CurrencyMismatch("x"))
    kill_charges(stack, 2, NotYet("account not open yet"), attempt=3)
    for _ in range(2):
        stack.kill_payload(
            sample("crm.interaction.log"), CurrencyMismatch("x"), producer="self-care"
        )
    stack.archive()

    groups = stack.cli_json("groups", "--since", since)
    counts = {(g["reason"], g["error_class"], g["type"]): g["count"] for g in groups}
    assert counts == {
        ("currency_mismatch", "CurrencyMismatch", "billing.charge.post"): 3,
        ("not_yet_expired", "NotYet", "billing.charge.post"): 2,
        ("currency_mismatch", "CurrencyMismatch", "crm.interaction.log"): 2,
    }
    biggest = groups[0]
    assert biggest["count"] == 3 and biggest["queues"] == ["billing"]
    in_group = stack.cli_json("ls", "--group", biggest["group"], "--since", since)
    assert in_group["total"] == 3


def test_show_has_fields_history_and_traceback(stack: DlqStack) -> None:
    message_id = stack.kill_payload(sample("billing.charge.post"), CurrencyMismatch("differs"))
    stack.archive()
    letter = stack.letter_id(message_id)
    detail = stack.cli_json("show", str(letter))
    assert detail["message_id"] == message_id and detail["reason"] == "currency_mismatch"
    assert detail["encrypted"] is True and "payload" not in detail
    assert "CurrencyMismatch" in detail["traceback"]
    assert [e["event"] for e in detail["history"]] == ["died"]
    human = stack.cli("show", str(letter))
    assert human.exit_code == 0 and "failure history" in human.stderr
    assert stack.cli("show", "999999999").exit_code != 0


# ── payloads stay hidden ───────────────────────────────────────────────────────────────────────


def peek_headers(stack: DlqStack, queue: str) -> list[str]:
    """Every dead letter's headers and properties, read without consuming them."""
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(stack.url))
    seen = []
    try:
        channel = connection.channel()
        while True:
            method, properties, _body = channel.basic_get(queue)
            if method is None:
                break
            seen.append(repr(properties))
    finally:
        connection.close()  # returns them
    return seen


def test_a_planted_secret_leaks_nowhere_unless_decrypted_and_then_it_is_audited(
    stack: DlqStack,
) -> None:
    secret = f"SECRET-{uuid.uuid4().hex}"
    # a valid payload that dies in its handler, and an invalid one that dies at validation
    handled = stack.kill_payload(
        sample("crm.interaction.log", note=secret, topic=secret[:40]),
        CurrencyMismatch("refused"),
        producer="self-care",
    )
    key = stack.keys.sealing_key("self-care")
    invalid_id = new_id()
    header = header_for(key, "crm.interaction.log", message_id=invalid_id)
    plaintext = json.dumps({"note": secret, "channel": secret, "occurred_at": 5}).encode()
    stack.kill(seal_raw(header, plaintext, key), "crm.interaction.log", invalid_id, queue="crm")

    headers = peek_headers(stack, "crm.dead")
    assert len(headers) == 2 and not any(secret in h for h in headers)
    stack.archive()
    ids = [stack.letter_id(handled), stack.letter_id(invalid_id)]
    assert stack.query(
        "SELECT reason FROM dead_letters WHERE id = ANY(:ids) ORDER BY id", ids=ids
    ) == [("currency_mismatch",), ("invalid_payload",)]

    outputs = []
    for args in (
        ("ls", "--status", "all"),
        ("ls", "--status", "all", "--json"),
        ("groups", "--status", "all"),
        ("groups", "--json"),
        *[("show", str(i)) for i in ids],
        *[("show", str(i), "--json") for i in ids],
        ("export",),
        ("audit", "--json"),
    ):
        result = stack.cli(*args)
        assert result.exit_code == 0, (args, result.output)
        outputs.append(result.output)
    assert not [o for o in outputs if secret in o]
    assert not [r for r in audit_rows(stack) if secret in repr(r)]
    archived = stack.query("SELECT body, headers, error, traceback FROM dead_letters")
    assert not [r for r in archived if secret.encode() in bytes(r.body) or secret in repr(r[1:])]

    # With --decrypt the operator sees it — and the decrypt was audited first
    decrypted = stack.cli("show", str(ids[1]), "--decrypt", "--json")
    assert decrypted.exit_code == 0, decrypted.output
    assert json.loads(decrypted.stdout)["payload"]["note"] == secret
    decrypts = [r for r in audit_rows(stack) if r.action == "decrypt"]
    assert [(r.operator, r.result, r.dead_letter_ids) for r in decrypts] == [
        ("postgres", "ok", [ids[1]])
    ]
    assert not [r for r in audit_rows(stack) if secret in repr(r)]
    history = stack.cli_json("show", str(ids[1]))["history"]
    assert [e["event"] for e in history] == ["died", "decrypt"]


# ── JSON fields are the documented ones ────────────────────────────────────────────────────────


def documented_fields(heading: str) -> list[str]:
    lines = DOCS.read_text().splitlines()
    start = lines.index(f"### `{heading}`")
    fields = []
    for line in lines[start + 1 :]:
        if line.startswith("### ") or line.startswith("## "):
            break
        match = re.match(r"^\| `([a-z0-9_]+)` \|", line)
        if match:
            fields.append(match.group(1))
    assert fields, heading
    return fields


def test_json_output_matches_the_documented_fields(stack: DlqStack) -> None:
    message_id = stack.kill_payload(sample("billing.charge.post"), CurrencyMismatch("x"))
    stack.kill_payload(sample("billing.charge.post"), NotYet("x"))  # parked
    stack.archive()
    letter = str(stack.letter_id(message_id))
    list_fields = documented_fields("fleet dlq ls --json")

    listing = stack.cli_json("ls", "--message-id", message_id)
    assert set(listing) == {"total", "page", "limit", "items"}
    assert list(listing["items"][0]) == list_fields
    assert list(stack.cli_json("groups")[0]) == documented_fields("fleet dlq groups --json")
    show_fields = list_fields + documented_fields("fleet dlq show ID --json")
    shown = stack.cli_json("show", letter)
    assert list(shown) == [f for f in show_fields if f != "payload"]
    decrypted = stack.cli_json("show", letter, "--decrypt")
    assert list(decrypted) == show_fields
    exported = stack.cli("export", "--status", "all")
    assert exported.exit_code == 0
    line = json.loads(exported.stdout.splitlines()[0])
    assert sorted(line) == sorted(
        [f for f in show_fields if f not in ("history", "payload")]
        + documented_fields("fleet dlq export")
    )
    replayed = stack.cli_json("replay", letter, "--dry-run")
    replay_fields = documented_fields("fleet dlq replay --json")
    assert list(replayed) == replay_fields
    assert list(replayed["items"][0]) == ["id", "message_id", "queue", "type", "outcome", "detail"]
    assert list(stack.cli_json("audit")[0]) == documented_fields("fleet dlq audit --json")
    parked = stack.cli_json("ls", "--queue", "billing", retry=True)
    assert list(parked[0]) == documented_fields("fleet retry ls --json")
    flushed = stack.cli_json("flush", "billing", "--dry-run", retry=True)
    assert list(flushed[0]) == documented_fields("fleet retry flush --json")
    housekeeping = set(
        documented_fields("fleet dlq resolve --json`, `purge --json`, `reencrypt --json")
    )
    assert set(stack.cli_json("purge", "--older-than", "3650d", "--dry-run")) <= housekeeping
    assert set(stack.cli_json("reencrypt", "--kid", "nothing-has-this", "--dry-run")) <= (
        housekeeping
    )


def _reason_codes() -> set[str]:
    import handlers.bus  # noqa: F401  (loads every handler module and its errors)
    import workers.lifecycle  # noqa: F401
    from queues.errors import LIFECYCLE_REASONS, PermanentError, TransientError

    codes = set(LIFECYCLE_REASONS) | {"unexpected_error"}
    pending: list[type] = [PermanentError, TransientError, NotYet]
    while pending:
        cls = pending.pop()
        if cls.__module__.split(".")[0] in ("queues", "handlers", "workers"):
            codes.add(cls.reason)  # type: ignore[attr-defined]
        pending += cls.__subclasses__()
    return codes


def test_every_reason_code_is_documented_for_operators() -> None:
    documented = set(re.findall(r"`([a-z_]+)`", DOCS.read_text()))
    assert _reason_codes() - documented == set()


# ── destructive commands ask first ─────────────────────────────────────────────────────────────


def test_destructive_commands_refuse_without_confirmation(stack: DlqStack) -> None:
    message_id = stack.kill_payload(sample("billing.charge.post"), CurrencyMismatch("x"))
    stack.kill_payload(sample("billing.charge.post"), NotYet("x"))  # parked
    stack.archive()
    letter = str(stack.letter_id(message_id))
    before = (
        stack.query("SELECT count(*), count(replayed_at), count(resolved_at) FROM dead_letters"),
        len(audit_rows(stack)),
        stack.depth("billing.retry.5m"),
    )
    for args, retry in (
        (("replay", letter), False),
        (("resolve", letter, "--note", "n"), False),
        (("purge", "--older-than", "0s"), False),
        (("reencrypt",), False),
        (("flush", "billing"), True),
    ):
        result = stack.cli(*args, retry=retry)
        assert result.exit_code != 0, args
        assert "pass --yes" in result.stderr, (args, result.stderr)
    after = (
        stack.query("SELECT count(*), count(replayed_at), count(resolved_at) FROM dead_letters"),
        len(audit_rows(stack)),
        stack.depth("billing.retry.5m"),
    )
    assert after == before


# ── housekeeping ───────────────────────────────────────────────────────────────────────────────


def test_resolve_and_purge_are_audited_and_a_resolved_letter_is_not_replayed(
    stack: DlqStack,
) -> None:
    ids = kill_charges(stack, 3, CurrencyMismatch("x"))
    stack.archive()
    letters = [str(stack.letter_id(m)) for m in ids]

    resolved = stack.cli("resolve", *letters[:2], "--note", "ticket 42", "--yes", "--json")
    assert resolved.exit_code == 0, resolved.output
    assert json.loads(resolved.stdout)["resolved"] == [int(i) for i in letters[:2]]
    again = stack.cli("resolve", letters[0], "--note", "twice", "--yes")
    assert again.exit_code == 1 and "already resolved by postgres" in again.stderr
    replay = stack.cli("replay", letters[0], "--yes", "--json")
    assert replay.exit_code == 1
    assert "resolved by postgres" in json.loads(replay.stdout)["items"][0]["detail"]

    with stack.engine.begin() as connection:
        connection.execute(
            text(
                "UPDATE dead_letters SET archived_at = now() - interval '100 days' "
                "WHERE id = ANY(:ids)"
            ),
            {"ids": [int(i) for i in letters]},
        )
    preview = stack.cli_json("purge", "--older-than", "90d", "--dry-run")
    assert preview == {"matched": 3, "unhandled": 1, "deleted": 0, "dry_run": True}
    kept_open = stack.cli_json("purge", "--older-than", "90d", "--only-handled", "--yes")
    assert kept_open["deleted"] == 2
    purged = stack.cli_json("purge", "--older-than", "90d", "--yes")
    assert purged["deleted"] == 1
    assert stack.query(
        "SELECT count(*) FROM dead_letters WHERE message_id = ANY(:ids)", ids=ids
    ) == [(0,)]
    actions = [(r.action, r.result) for r in audit_rows(stack)]
    assert ("resolve", "ok") in actions and actions.count(("purge", "ok")) == 2


def test_reencrypt_reseals_under_the_archive_key_and_replay_still_works(
    stack: DlqStack, tmp_path: Path
) -> None:
    payment = sample("billing.payment.record")
    message_id = stack.kill_payload(payment, CurrencyMismatch("x"), producer="payment-gateway")
    stack.archive()
    letter = stack.letter_id(message_id)
    old_kid = stack.keys.sealing_key("payment-gateway").kid

    # Without the producer's key it refuses and changes nothing
    without = KeyRegistry(k for k in stack.keys if k.kid != old_kid)
    lacking = tmp_path / "lacking.json"
    without.save(lacking)
    refused = stack.cli(
        "reencrypt", "--producer", "payment-gateway", "--yes", env={"FLEET_KEYS_FILE": str(lacking)}
    )
    assert refused.exit_code != 0 and old_kid in refused.stderr
    assert stack.query("SELECT kid FROM dead_letters WHERE id = :i", i=letter) == [(old_kid,)]

    # With it, the envelope is sealed under the archive key, provenance kept
    done = stack.cli_json("reencrypt", "--producer", "payment-gateway", "--yes")
    assert done["from_kids"] == {old_kid: done["reencrypted"]}
    archive_kid = stack.keys.sealing_key("archive").kid
    shown = stack.cli_json("show", str(letter))
    assert (shown["kid"], shown["original_kid"], shown["original_producer"]) == (
        archive_kid,
        old_kid,
        "payment-gateway",
    )
    body = stack.query("SELECT body FROM dead_letters WHERE id = :i", i=letter)[0][0]
    _header, plaintext = decrypt(bytes(body), stack.keys)
    assert json.loads(plaintext)["gateway_reference"] == payment.gateway_reference  # type: ignore[attr-defined]

    # The producer key is retired (rotated); the replay re-seals under the producer's new key
    rotated = KeyRegistry(k for k in stack.keys if k.kid != old_kid)
    rotated.add(ProducerKey.generate("payment-gateway", ["billing.payment.*"]))
    rotated_file = tmp_path / "rotated.json"
    rotated.save(rotated_file)
    stack.purge("billing")
    replayed = stack.cli(
        "replay", str(letter), "--yes", "--json", env={"FLEET_KEYS_FILE": str(rotated_file)}
    )
    assert replayed.exit_code == 0, replayed.output
    [(properties, body)] = stack.take("billing")
    opened = open_envelope(body, rotated)
    assert str(opened.header.message_id) == message_id == properties.message_id
    assert opened.payload == payment


# ── replay ─────────────────────────────────────────────────────────────────────────────────────


def test_a_fanned_out_upsert_replayed_from_billing_does_not_reach_crm(stack: DlqStack) -> None:
    upsert = sample("crm.customer.upsert")
    sealed = stack.seal(upsert, "self-care")
    message_id = str(sealed.message_id)
    stack.kill(
        sealed.body,
        upsert.message_type,
        message_id,
        error=NetworkUnavailable("store down"),
        queue="billing",
        attempt=3,
    )
    stack.archive()
    stack.purge("billing", "crm")
    letter = stack.letter_id(message_id)

    result = stack.cli("replay", str(letter), "--yes", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["published"] == 1 and report["operator"] == "postgres"

    assert stack.depth("crm") == 0
    [(properties, body)] = stack.take("billing")
    assert body == sealed.body and properties.message_id == message_id
    assert properties.headers["x-fleet-replay-of"] == letter
    assert not {"x-fleet-attempt", "x-fleet-first-failure"} & set(properties.headers)
    row = stack.query(
        "SELECT replayed_by, replay_count, replayed_at IS NOT NULL FROM dead_letters WHERE id = :i",
        i=letter,
    )
    assert row == [("postgres", 1, True)]
    again = stack.cli("replay", str(letter), "--yes", "--json")
    assert again.exit_code == 1
    assert "already replayed by postgres" in json.loads(again.stdout)["items"][0]["detail"]
    assert stack.depth("billing") == 0


def test_replay_refuses_unroutable_and_messages_older_than_the_dedup_horizon(
    stack: DlqStack,
) -> None:
    stray = new_id()
    stack.publish(Outgoing("fleet", "marketing.offer.send", b"x", stray, ""))
    old = stack.kill_payload(sample("billing.charge.post"), CurrencyMismatch("x"))
    fresh = stack.kill_payload(sample("billing.charge.post"), CurrencyMismatch("x"))
    stack.archive()
    with stack.engine.begin() as connection:
        connection.execute(
            text(
                "UPDATE dead_letters SET created_at = now() - interval '31 days' "
                "WHERE message_id = :m"
            ),
            {"m": old},
        )
    stack.purge("billing")
    ids = [str(stack.letter_id(m)) for m in (stray, old, fresh)]

    dry_run = stack.cli("replay", *ids, "--dry-run", "--json")
    outcomes = {i["id"]: i["outcome"] for i in json.loads(dry_run.stdout)["items"]}
    assert outcomes == {
        int(ids[0]): "refused",
        int(ids[1]): "refused",
        int(ids[2]): "would_publish",
    }
    assert stack.depth("billing") == 0

    result = stack.cli("replay", *ids, "--yes", "--json")
    assert result.exit_code == 1
    items = {i["id"]: i for i in json.loads(result.stdout)["items"]}
    assert "unroutable" in items[int(ids[0])]["detail"]
    assert "dedup horizon" in items[int(ids[1])]["detail"]
    assert items[int(ids[2])]["outcome"] == "published"
    assert stack.depth("billing") == 1


class SlowPublisher:
    """Publishes like the real one, after a pause: the row locks are held meanwhile."""

    def __init__(self, publisher: Publisher, pause_s: float) -> None:
        self.publisher = publisher
        self.pause_s = pause_s

    def publish_raw(self, items: Sequence[Outgoing]) -> list[PublishResult]:
        time.sleep(self.pause_s)
        return self.publisher.publish_raw(items)


def test_concurrent_replays_publish_each_message_once(stack: DlqStack) -> None:
    ids = kill_charges(stack, 20, CurrencyMismatch("x"))
    stack.archive()
    stack.purge("billing")
    letters = [stack.letter_id(m) for m in ids]
    reports: list[replay_module.ReplayReport] = []
    publishers = [Publisher(stack.url), Publisher(stack.url)]

    def operator(publisher: Publisher, delay_s: float) -> None:
        time.sleep(delay_s)
        reports.append(
            replay_module.replay(
                stack.engine,
                SlowPublisher(publisher, 0.8),
                letters,
                horizon=timedelta(days=30),
            )
        )

    threads = [
        threading.Thread(target=operator, args=(publishers[0], 0)),
        threading.Thread(target=operator, args=(publishers[1], 0.2)),
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        for publisher in publishers:
            publisher.close()

    published = [i.id for r in reports for i in r.items if i.outcome == "published"]
    assert sorted(published) == sorted(letters)
    loser = min(reports, key=lambda r: r.count("published"))
    assert loser.count("published") == 0
    assert {i.detail for i in loser.items} == {
        "being replayed by another operator right now (row locked)"
    }
    delivered = [p.message_id for p, _ in stack.take("billing")]
    assert sorted(delivered) == sorted(ids)


# ── parked retries ─────────────────────────────────────────────────────────────────────────────


def test_retry_ls_shows_what_is_parked_and_flush_moves_it_back_now(stack: DlqStack) -> None:
    stack.purge("billing.retry.5m", "billing.retry.10m", "billing")
    charges = [
        stack.kill_payload(sample("billing.charge.post"), NotYet("account not open yet"))
        for _ in range(3)
    ]
    stack.kill_payload(
        sample("crm.customer.upsert"),
        NetworkUnavailable("x"),
        producer="self-care",
        queue="billing",
    )
    parked = {(p["queue"], p["tier"]): p for p in stack.cli_json("ls", retry=True)}
    five = parked[("billing", "5m")]
    assert five["count"] == 4 and five["inspected"] == 4
    assert five["by_type"] == {"billing.charge.post": 3, "crm.customer.upsert": 1}
    oldest = datetime.fromisoformat(five["oldest_parked_at"])
    assert datetime.fromisoformat(five["next_due_at"]) - oldest == timedelta(minutes=5)
    assert parked[("crm", "5m")]["count"] == 0
    assert stack.depth("billing.retry.5m") == 4  # reading consumed nothing

    flushed = stack.cli(
        "flush", "billing", "--type", "billing.charge.post", "--yes", "--json", retry=True
    )
    assert flushed.exit_code == 0, flushed.output
    by_tier = {r["tier"]: r for r in json.loads(flushed.stdout)}
    assert (by_tier["5m"]["moved"], by_tier["5m"]["kept"]) == (3, 1)
    assert stack.depth("billing.retry.5m") == 1
    back = stack.take("billing")
    assert sorted(p.message_id for p, _ in back) == sorted(charges)
    assert all(p.headers["x-fleet-attempt"] == 2 for p, _ in back)  # the budget continues
    assert all("x-death" not in p.headers for p, _ in back)
    flushes = [r for r in audit_rows(stack) if r.action == "flush"]
    assert flushes[-1].detail["moved"] == 3 and flushes[-1].operator == "postgres"


# ── least privilege on the broker ──────────────────────────────────────────────────────────────


def test_the_archiver_and_operator_broker_users_are_enough(stack: DlqStack) -> None:
    with scratch_users() as prefix:
        passwords = {prefix + role.user: secrets.token_urlsafe(16) for role in fleet_roles()}
        apply_roles(stack.vhost, prefix=prefix, passwords=passwords)

        def url(role: str) -> str:
            return amqp_url(stack.vhost, prefix + role, passwords[prefix + role])

        stack.purge("billing", "billing.retry.5m")
        dead = stack.kill_payload(sample("billing.charge.post"), CurrencyMismatch("x"))
        parked = stack.kill_payload(sample("billing.charge.post"), NotYet("x"))
        Archiver(url("fleet-archiver"), stack.engine, linger_s=0.05).drain(idle_s=0.5)
        letter = stack.letter_id(dead)

        as_operator = {"FLEET_AMQP_URL": url("fleet-operator")}
        assert stack.cli("ls", "--json", retry=True, env=as_operator).exit_code == 0
        replayed = stack.cli("replay", str(letter), "--yes", env=as_operator)
        assert replayed.exit_code == 0, replayed.output
        flushed = stack.cli("flush", "billing", "--yes", retry=True, env=as_operator)
        assert flushed.exit_code == 0, flushed.output
        assert sorted(p.message_id for p, _ in stack.take("billing")) == sorted([dead, parked])


@pytest.mark.parametrize("command", ["ls", "groups", "audit"])
def test_a_schema_never_migrated_ends_a_command_with_one_line_naming_the_fix(
    stack: DlqStack, command: str
) -> None:
    result = stack.cli(command, env={"FLEET_DB_SCHEMA": f"never_migrated_{uuid.uuid4().hex[:8]}"})
    assert isinstance(result.exception, SystemExit), result.exception  # not a traceback
    assert result.exit_code == 2
    [line] = result.stderr.strip().splitlines()
    assert "fleet db upgrade" in line and "UndefinedTable" in line
