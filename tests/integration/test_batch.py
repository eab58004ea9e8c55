"""The batch path equals the one-message path: same rows, same outcomes, failures stay alone.

``handlers.batch`` applies many messages set-based in one transaction; ``handlers.bus`` (one
transaction per message) is the reference. Each example applies a random batch in one schema
the way the worker's batch writer does (``settle_batch``, then the unrolled messages one
by one), and the same messages one by one in another schema, in the order the batch applied
them; every row and every outcome (or error) must be the same.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text

from handlers import batch, bus
from handlers.context import Outcome
from handlers.store.uow import UnitOfWork
from queues.contracts import (
    Contract,
    LogInteraction,
    Money,
    OpenAccount,
    PostCharge,
    UpsertCustomer,
    UpsertCustomerV2,
)
from queues.contracts.crm import InteractionChannel
from tests.support.db import migrated_schema
from tests.support.handlers import FakeNetwork
from workers.events import EventSink
from workers.writer import BatchWriter

pytestmark = pytest.mark.db

# Account slots: 0 open in EUR, 1 closed, 2 not open (a batch may open it), 3 open in USD.
PRE_OPENED = {0: ("EUR", "open"), 1: ("EUR", "closed"), 3: ("USD", "open")}
CHARGED_AT = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def schemas() -> Iterator[tuple[Engine, Engine]]:
    """(batched, one by one): two migrated schemas of this module's own."""
    with migrated_schema(prefix="tb") as (batched, _), migrated_schema(prefix="to") as (alone, _):
        yield batched, alone


class World:
    """The ids of one example: fresh per example, so examples never meet in the schemas."""

    def __init__(self) -> None:
        self.accounts = [uuid.uuid4() for _ in range(4)]
        self.customers = [uuid.uuid4() for _ in range(4)]
        self.interactions = [uuid.uuid4() for _ in range(3)]
        self.message_ids: list[uuid.UUID] = []

    def open_accounts(self, engine: Engine) -> None:
        with engine.begin() as connection:
            for slot, (currency, status) in PRE_OPENED.items():
                connection.execute(
                    text(
                        "INSERT INTO billing_accounts (account_id, customer_id, currency, "
                        "cycle_day, payment_terms_days, status, message_id) "
                        "VALUES (:a, :c, :cur, 1, 14, :s, :m)"
                    ),
                    {
                        "a": self.accounts[slot],
                        "c": self.customers[slot],
                        "cur": currency,
                        "s": status,
                        "m": uuid.UUID(int=slot + 1),
                    },
                )
            # Customer 1 is known at entity version 2 on both sides: older upserts are stale.
            for table in ("crm_customers", "billing_account_holders"):
                connection.execute(
                    text(
                        f"INSERT INTO {table} (customer_id, entity_version, name, street, "  # noqa: S608
                        "postal_code, city, country) "
                        "VALUES (:c, 2, 'Anna Huber', 'Gasse 2', '1010', 'Wien', 'AT')"
                    ),
                    {"c": self.customers[1]},
                )

    def rows(self, engine: Engine) -> dict[str, list[Any]]:
        """Every row this example can have touched, without server-set timestamps."""
        queries = {
            "accounts": "SELECT account_id, customer_id, currency, cycle_day, payment_terms_days, "
            "status, balance_minor, message_id FROM billing_accounts "
            "WHERE account_id = ANY(:accounts) ORDER BY account_id",
            "charges": "SELECT charge_id, account_id, source_reference, amount_minor, currency, "
            "description, charged_at, service_id, message_id, invoice_id FROM billing_charges "
            "WHERE account_id = ANY(:accounts) ORDER BY charge_id",
            "interactions": "SELECT interaction_id, customer_id, channel, topic, note, "
            "occurred_at, message_id FROM crm_interactions "
            "WHERE interaction_id = ANY(:interactions) ORDER BY interaction_id",
            "customers": "SELECT customer_id, entity_version, name, email, msisdn, street, "
            "postal_code, city, country, preferred_language FROM crm_customers "
            "WHERE customer_id = ANY(:customers) ORDER BY customer_id",
            "holders": "SELECT customer_id, entity_version, name, street, postal_code, city, "
            "country FROM billing_account_holders "
            "WHERE customer_id = ANY(:customers) ORDER BY customer_id",
            "inbox": "SELECT message_id, handler, outcome FROM inbox "
            "WHERE message_id = ANY(:messages) ORDER BY message_id, handler",
        }
        ids = {
            "accounts": self.accounts,
            "interactions": self.interactions,
            "customers": self.customers,
            "messages": self.message_ids,
        }
        with engine.connect() as connection:
            return {
                name: [tuple(row) for row in connection.execute(text(sql), ids)]
                for name, sql in queries.items()
            }


@st.composite
def batches(draw: st.DrawFn) -> tuple[World, list[batch.Item]]:
    world = World()
    items: list[batch.Item] = []
    for _ in range(draw(st.integers(1, 14))):
        kind = draw(
            st.sampled_from(["open", "charge", "charge", "charge", "log", "upsert", "again"])
        )
        if kind == "again" and items:
            items.append(draw(st.sampled_from(items)))  # a redelivery: same id, same payload
            continue
        payload: Contract
        if kind == "upsert":  # fanned out: CRM's profile and billing's holder, one message id
            slot = draw(st.integers(0, 1))
            fields: dict[str, Any] = {
                "customer_id": world.customers[slot],
                "entity_version": draw(st.integers(1, 4)),
                "name": draw(st.sampled_from(["Anna Huber", "Anna Berger"])),
                "email": None,
                "msisdn": None,
                "address": {
                    "street": "Mariahilfer Straße 1",
                    "postal_code": "1060",
                    "city": "Wien",
                    "country": "AT",
                },
            }
            if draw(st.booleans()):
                fields["preferred_language"] = draw(st.sampled_from([None, "de-AT"]))
                upsert: Contract = UpsertCustomerV2.model_validate(fields)
            else:
                upsert = UpsertCustomer.model_validate(fields)
            message_id = uuid.uuid4()
            world.message_ids.append(message_id)
            for queue in draw(st.permutations(["crm", "billing"])):
                items.append(batch.Item(_context(upsert, message_id, queue), upsert))
            continue
        if kind == "open":
            slot = draw(st.sampled_from([0, 2, 2]))
            payload = OpenAccount(
                account_id=world.accounts[slot],
                customer_id=world.customers[slot],
                currency=draw(st.sampled_from(["EUR", "EUR", "USD"])),
                cycle_day=1,
                payment_terms_days=14,
            )
        elif kind == "log":
            payload = LogInteraction(
                interaction_id=world.interactions[draw(st.integers(0, 2))],
                customer_id=world.customers[0],
                channel=InteractionChannel.CALL_CENTER,
                topic="roaming question",
                note=draw(st.sampled_from([None, "explained EU roaming"])),
                occurred_at=CHARGED_AT,
            )
        else:
            payload = PostCharge(
                account_id=world.accounts[draw(st.integers(0, 3))],
                source_reference=f"cdr-{draw(st.integers(0, 2))}",
                amount=Money.of(draw(st.integers(1, 5000)), draw(st.sampled_from(["EUR", "USD"]))),
                description="usage",
                charged_at=CHARGED_AT + timedelta(minutes=draw(st.integers(0, 5))),
            )
        message_id = uuid.uuid4()
        world.message_ids.append(message_id)
        items.append(batch.Item(_context(payload, message_id), payload))
    return world, items


def _context(payload: Contract, message_id: uuid.UUID, queue: str | None = None) -> Any:
    queue = queue or ("crm" if payload.message_type.startswith("crm.") else "billing")
    return batch.context_for(
        queue, message_id, payload.message_type, "fleet", CHARGED_AT, correlation_id=None
    )


def one_by_one(engine: Engine, item: batch.Item) -> str:
    """The reference: the message's handler through the bus; its outcome or its error class."""
    try:
        return str(
            bus.handle(
                item.ctx.queue,
                item.ctx.message_id,
                item.ctx,
                item.payload,
                lambda: UnitOfWork(engine),
                FakeNetwork(),
            )
        )
    except Exception as exc:
        return type(exc).__name__


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(example=batches())
def test_a_batch_leaves_the_rows_and_outcomes_of_its_messages_one_by_one(
    schemas: tuple[Engine, Engine], example: tuple[World, list[batch.Item]]
) -> None:
    batched, alone = schemas
    world, items = example
    world.open_accounts(batched)
    world.open_accounts(alone)

    settled = batch.settle_batch(batched, items)
    in_batch = [i for i, outcome in enumerate(settled.outcomes) if outcome is not None]
    unrolled = [i for i, outcome in enumerate(settled.outcomes) if outcome is None]
    outcomes = {i: str(settled.outcomes[i]) for i in in_batch}
    outcomes |= {i: one_by_one(batched, items[i]) for i in unrolled}

    # The batch commits its groups in registry order, arrival order within a group; what it
    # unrolled runs after it.
    order = sorted(in_batch, key=lambda i: (batch.group_rank(items[i]), i)) + unrolled
    reference = {i: one_by_one(alone, items[i]) for i in order}

    assert outcomes == reference
    assert world.rows(batched) == world.rows(alone)


def _euro_charge(account_id: uuid.UUID, n: int) -> PostCharge:
    return PostCharge(
        account_id=account_id,
        source_reference=f"cdr-{n}",
        amount=Money.of(100, "EUR"),
        description="usage",
        charged_at=CHARGED_AT,
    )


def test_a_failing_message_leaves_the_rest_of_its_batch_committed(
    schemas: tuple[Engine, Engine],
) -> None:
    batched, _ = schemas
    world = World()
    world.open_accounts(batched)
    good = [_euro_charge(world.accounts[0], n) for n in range(3)]
    not_yet = good[0].model_copy(update={"account_id": world.accounts[2]})
    items = []
    for payload in [good[0], not_yet, good[1], good[2]]:
        message_id = uuid.uuid4()
        world.message_ids.append(message_id)
        items.append(batch.Item(_context(payload, message_id), payload))

    settled = batch.settle_batch(batched, items)

    assert settled.outcomes == [Outcome.OK, None, Outcome.OK, Outcome.OK]
    assert settled.committed == 3
    rows = world.rows(batched)
    assert len(rows["charges"]) == 3
    assert [row[6] for row in rows["accounts"] if row[0] == world.accounts[0]] == [300]
    assert one_by_one(batched, items[1]) == "NotYet"


def test_a_database_error_commits_nothing_and_sends_every_message_alone(
    schemas: tuple[Engine, Engine],
) -> None:
    batched, _ = schemas
    world = World()
    world.open_accounts(batched)
    items = [
        batch.Item(_context(payload, uuid.uuid4()), payload)
        for payload in (_euro_charge(world.accounts[0], n) for n in range(3))
    ]
    world.message_ids += [item.ctx.message_id for item in items]

    def crash(size: int) -> None:
        raise RuntimeError("the process dies here")

    with pytest.raises(RuntimeError):
        batch.settle_batch(batched, items, before_commit=crash)

    rows = world.rows(batched)
    assert rows["charges"] == [] and rows["inbox"] == []


def _charges(world: World, count: int) -> list[PostCharge]:
    return [
        PostCharge(
            account_id=world.accounts[n % 2 * 3],  # EUR and USD accounts, both open
            source_reference=f"cdr-{n}",
            amount=Money.of(n + 1, "EUR" if n % 2 == 0 else "USD"),
            description="usage",
            charged_at=CHARGED_AT,
        )
        for n in range(count)
    ]


class _Opened:
    """What the writer reads of an opened message: its header fields and payload."""

    def __init__(self, payload: Contract) -> None:
        self.payload = payload
        self.header = _Header(payload)


class _Header:
    def __init__(self, payload: Contract) -> None:
        self.message_id = uuid.uuid4()
        self.message_type = payload.message_type
        self.producer = "fleet"
        self.created_at = CHARGED_AT
        self.correlation_id = None


def _submit(writer: BatchWriter, opened: _Opened) -> Outcome | None:
    """Hand ``opened`` to the writer and wait for its answer (the lifecycle does not wait)."""
    done = threading.Event()
    answers: list[Outcome | None] = []

    def then(outcome: Outcome | None) -> None:
        answers.append(outcome)
        done.set()

    writer.submit("billing", opened, then)  # type: ignore[arg-type]
    assert done.wait(60), "the writer never answered"
    return answers[0]


def _submit_all(writer: BatchWriter, opened: list[_Opened]) -> list[Outcome | None]:
    results: list[Outcome | None] = [None] * len(opened)
    start = threading.Barrier(len(opened))

    def run(index: int) -> None:
        start.wait()
        results[index] = _submit(writer, opened[index])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(opened))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def test_the_writer_shares_one_transaction_between_waiting_threads(
    schemas: tuple[Engine, Engine], tmp_path: Any
) -> None:
    batched, _ = schemas
    world = World()
    world.open_accounts(batched)
    events: list[dict[str, Any]] = []
    sink = EventSink()
    sink.subscribe(events.append)
    writer = BatchWriter(batched, max_messages=16, max_wait_s=0.5, events=sink)
    try:
        opened = [_Opened(charge) for charge in _charges(world, 8)]
        results = _submit_all(writer, opened)
    finally:
        writer.close()

    assert results == [Outcome.OK] * 8
    sizes = [event["committed"] for event in events if event["event"] == "batch"]
    assert sum(sizes) == 8 and max(sizes) >= 2
    with batched.connect() as connection:
        balances = dict(
            connection.execute(
                text(
                    "SELECT account_id, balance_minor FROM billing_accounts "
                    "WHERE account_id = ANY(:ids)"
                ),
                {"ids": world.accounts},
            ).all()
        )
    assert balances[world.accounts[0]] == sum(range(1, 9, 2))
    assert balances[world.accounts[3]] == sum(range(2, 9, 2))


def test_a_closed_writer_sends_messages_alone(schemas: tuple[Engine, Engine]) -> None:
    batched, _ = schemas
    writer = BatchWriter(batched, max_messages=4, max_wait_s=0.0, events=EventSink())
    writer.close()
    world = World()
    assert _submit(writer, _Opened(_charges(world, 1)[0])) is None
