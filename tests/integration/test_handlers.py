"""The business handlers through the bus, on the real PostgreSQL with a fake network element."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, text, update
from sqlalchemy.exc import OperationalError

from handlers import bus
from handlers.bus import Outcome, is_retryable_conflict
from handlers.context import HandlerContext
from handlers.errors import (
    AccountConflict,
    ConcurrentUpdate,
    CurrencyMismatch,
    DatabaseUnavailable,
    NetworkUnavailable,
    NoHandler,
    ServiceConflict,
    StoreRejected,
)
from handlers.registry import HANDLERS, handler_name
from handlers.store.db import make_engine
from handlers.store.models import (
    BillingAccount,
    BillingAccountHolder,
    BillingCharge,
    CrmCustomer,
    CrmInteraction,
    Inbox,
    Outbox,
    ProvisioningService,
)
from handlers.store.uow import UnitOfWork
from queues.contracts import CATALOGUE, Contract, LogInteraction, Money, PostCharge
from queues.errors import IllegalTransition, NotYet, PermanentError, TransientError
from tests.support.db import DATABASE_URL
from tests.support.factories import sample
from tests.support.handlers import Deliver, FakeNetwork
from tests.support.polling import poll
from tests.support.sleeps import record_sleeps

pytestmark = pytest.mark.db


def _inbox(read: Callable[..., Any], message_id: uuid.UUID) -> dict[str, str]:
    return dict(
        read(
            lambda s: s.execute(
                select(Inbox.handler, Inbox.outcome).where(Inbox.message_id == message_id)
            ).all()
        )
    )


def _open_account(deliver: Deliver, currency: str = "EUR") -> uuid.UUID:
    account = sample("billing.account.open", currency=currency)
    assert deliver("billing", account) is Outcome.OK
    return account.account_id  # type: ignore[attr-defined, no-any-return]


def _balance(read: Callable[..., Any], account_id: uuid.UUID) -> tuple[int, int, int]:
    """(balance, number of charges, sum of charges) of an account."""
    balance = read(lambda s: s.get_one(BillingAccount, account_id).balance_minor)
    count, total = read(
        lambda s: s.execute(
            select(func.count(), func.coalesce(func.sum(BillingCharge.amount_minor), 0)).where(
                BillingCharge.account_id == account_id
            )
        ).one()
    )
    return balance, count, total


# -- the registry -----------------------------------------------------------------------------


def test_every_catalogue_type_has_a_handler_on_its_domain_queue() -> None:
    registered = {message_type for _, message_type in HANDLERS}
    catalogue = {message_type for message_type, _ in CATALOGUE}
    assert catalogue == registered
    for queue, message_type in HANDLERS:
        if (queue, message_type) != ("billing", "crm.customer.upsert"):
            assert message_type.split(".")[0] == queue
    assert ("billing", "crm.customer.upsert") in HANDLERS


def test_handler_names_are_unique_because_the_inbox_keys_on_them() -> None:
    names = [handler_name(h) for h in HANDLERS.values()]
    assert len(set(names)) == len(names)


def test_a_type_without_a_handler_is_refused_with_a_reason(deliver: Deliver) -> None:
    with pytest.raises(NoHandler) as caught:
        deliver("billing", sample("billing.invoice.issue"), handlers={})
    assert caught.value.reason == "no_handler"
    assert isinstance(caught.value, PermanentError)


# -- CRM --------------------------------------------------------------------------------------


def test_upsert_creates_the_profile(deliver: Deliver, read: Callable[..., Any]) -> None:
    upsert = sample("crm.customer.upsert", 2, entity_version=3)
    message_id = uuid.uuid4()

    assert deliver("crm", upsert, message_id) is Outcome.OK

    customer = read(lambda s: s.get_one(CrmCustomer, upsert.customer_id))  # type: ignore[attr-defined]
    assert (customer.name, customer.entity_version, customer.preferred_language) == (
        "Anna Huber",
        3,
        "de-AT",
    )
    assert customer.city == "Wien"
    assert _inbox(read, message_id) == {"upsert_customer": "ok"}


def test_a_redelivered_upsert_is_a_duplicate_with_no_second_effect(
    deliver: Deliver, read: Callable[..., Any]
) -> None:
    upsert = sample("crm.customer.upsert", entity_version=5)
    message_id = uuid.uuid4()
    assert deliver("crm", upsert, message_id) is Outcome.OK
    updated_at = read(lambda s: s.get_one(CrmCustomer, upsert.customer_id).updated_at)  # type: ignore[attr-defined]

    assert deliver("crm", upsert, message_id) is Outcome.DUPLICATE

    assert read(lambda s: s.get_one(CrmCustomer, upsert.customer_id).updated_at) == updated_at  # type: ignore[attr-defined]
    assert _inbox(read, message_id) == {"upsert_customer": "ok"}


def test_an_older_upsert_after_a_newer_one_is_stale_and_the_newer_data_stays(
    deliver: Deliver, read: Callable[..., Any]
) -> None:
    customer_id = uuid.uuid4()
    newer = sample("crm.customer.upsert", customer_id=customer_id, entity_version=7, name="New")
    older = sample("crm.customer.upsert", customer_id=customer_id, entity_version=6, name="Old")
    same = sample("crm.customer.upsert", customer_id=customer_id, entity_version=7, name="Same")
    assert deliver("crm", newer) is Outcome.OK

    older_id = uuid.uuid4()
    assert deliver("crm", older, older_id) is Outcome.STALE
    assert deliver("crm", same) is Outcome.STALE

    customer = read(lambda s: s.get_one(CrmCustomer, customer_id))
    assert (customer.name, customer.entity_version) == ("New", 7)
    assert _inbox(read, older_id) == {"upsert_customer": "stale"}
    assert deliver("crm", older, older_id) is Outcome.DUPLICATE


def test_a_schema_1_upsert_keeps_the_preferred_language_it_cannot_know(
    deliver: Deliver, read: Callable[..., Any]
) -> None:
    customer_id = uuid.uuid4()
    assert (
        deliver("crm", sample("crm.customer.upsert", 2, customer_id=customer_id, entity_version=1))
        is Outcome.OK
    )
    assert (
        deliver(
            "crm",
            sample(
                "crm.customer.upsert", 1, customer_id=customer_id, entity_version=2, name="Renamed"
            ),
        )
        is Outcome.OK
    )

    customer = read(lambda s: s.get_one(CrmCustomer, customer_id))
    assert (customer.name, customer.preferred_language) == ("Renamed", "de-AT")


def test_the_upsert_fan_out_applies_once_on_each_side(
    deliver: Deliver, read: Callable[..., Any]
) -> None:
    upsert = sample("crm.customer.upsert", entity_version=2, name="Fan Out")
    message_id = uuid.uuid4()

    assert deliver("crm", upsert, message_id) is Outcome.OK
    assert deliver("billing", upsert, message_id) is Outcome.OK
    assert deliver("billing", upsert, message_id) is Outcome.DUPLICATE
    assert deliver("crm", upsert, message_id) is Outcome.DUPLICATE

    holder = read(lambda s: s.get_one(BillingAccountHolder, upsert.customer_id))  # type: ignore[attr-defined]
    assert (holder.name, holder.entity_version, holder.country) == ("Fan Out", 2, "AT")
    assert _inbox(read, message_id) == {"upsert_customer": "ok", "mirror_account_holder": "ok"}


def test_the_billing_mirror_applies_before_the_account_exists_and_ignores_stale_versions(
    deliver: Deliver, read: Callable[..., Any]
) -> None:
    customer_id = uuid.uuid4()
    assert (
        deliver(
            "billing",
            sample("crm.customer.upsert", customer_id=customer_id, entity_version=4, name="Four"),
        )
        is Outcome.OK
    )
    assert (
        deliver(
            "billing",
            sample("crm.customer.upsert", customer_id=customer_id, entity_version=3, name="Three"),
        )
        is Outcome.STALE
    )

    account = sample("billing.account.open", customer_id=customer_id)
    assert deliver("billing", account) is Outcome.OK
    assert read(lambda s: s.get_one(BillingAccountHolder, customer_id).name) == "Four"


def test_an_interaction_is_appended_once_per_interaction_id(
    deliver: Deliver, read: Callable[..., Any]
) -> None:
    interaction = sample("crm.interaction.log")
    assert deliver("crm", interaction) is Outcome.OK
    other_message_id = uuid.uuid4()
    assert deliver("crm", interaction, other_message_id) is Outcome.DUPLICATE

    rows = read(
        lambda s: s.scalars(
            select(CrmInteraction.topic).where(
                CrmInteraction.interaction_id == interaction.interaction_id  # type: ignore[attr-defined]
            )
        ).all()
    )
    assert rows == ["roaming question"]
    assert _inbox(read, other_message_id) == {"log_interaction": "duplicate"}


# -- billing ----------------------------------------------------------------------------------


def test_opening_the_same_account_twice_is_a_duplicate_and_other_data_a_conflict(
    deliver: Deliver, read: Callable[..., Any]
) -> None:
    account = sample("billing.account.open")
    assert deliver("billing", account) is Outcome.OK
    assert deliver("billing", account) is Outcome.DUPLICATE

    conflicting = account.model_copy(update={"currency": "USD"})
    conflict_id = uuid.uuid4()
    with pytest.raises(AccountConflict) as caught:
        deliver("billing", conflicting, conflict_id)
    assert caught.value.reason == "account_conflict"
    assert "currency" in caught.value.message and "USD" not in caught.value.message
    assert read(lambda s: s.get_one(BillingAccount, account.account_id).currency) == "EUR"  # type: ignore[attr-defined]
    assert _inbox(read, conflict_id) == {}


def test_a_charge_before_its_account_is_not_yet_and_posts_once_the_account_is_open(
    deliver: Deliver, read: Callable[..., Any]
) -> None:
    account = sample("billing.account.open")
    charge = sample("billing.charge.post", account_id=account.account_id)  # type: ignore[attr-defined]
    message_id = uuid.uuid4()

    with pytest.raises(NotYet, match="account not open yet"):
        deliver("billing", charge, message_id)
    assert _inbox(read, message_id) == {}

    assert deliver("billing", account) is Outcome.OK
    assert deliver("billing", charge, message_id) is Outcome.OK
    assert _balance(read, account.account_id) == (1999, 1, 1999)  # type: ignore[attr-defined]


def test_a_charge_in_another_currency_is_refused_as_currency_mismatch(
    deliver: Deliver, read: Callable[..., Any]
) -> None:
    account_id = _open_account(deliver, "EUR")
    charge = sample("billing.charge.post", account_id=account_id, amount=Money.of(500, "JPY"))
    with pytest.raises(CurrencyMismatch) as caught:
        deliver("billing", charge)
    assert caught.value.reason == "currency_mismatch"
    assert isinstance(caught.value, PermanentError)
    assert _balance(read, account_id) == (0, 0, 0)


def test_the_same_source_reference_under_two_message_ids_is_charged_once(
    deliver: Deliver, read: Callable[..., Any]
) -> None:
    account_id = _open_account(deliver)
    charge = sample("billing.charge.post", account_id=account_id, source_reference="cdr-42")
    second_id = uuid.uuid4()

    assert deliver("billing", charge) is Outcome.OK
    assert deliver("billing", charge, second_id) is Outcome.DUPLICATE

    assert _balance(read, account_id) == (1999, 1, 1999)
    assert _inbox(read, second_id) == {"post_charge": "duplicate"}


def test_concurrent_charges_to_one_account_add_up_exactly(
    deliver: Deliver, read: Callable[..., Any]
) -> None:
    account_id = _open_account(deliver)
    amounts = [100 + i for i in range(64)]
    charges = [
        sample("billing.charge.post", account_id=account_id, amount=Money.of(amount, "EUR"))
        for amount in amounts
    ]
    start = threading.Barrier(8)

    def post(chunk: list[Contract]) -> list[Outcome]:
        start.wait()
        return [deliver("billing", charge) for charge in chunk]

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = [o for chunk in pool.map(post, [charges[i::8] for i in range(8)]) for o in chunk]

    assert results == [Outcome.OK] * len(charges)
    assert _balance(read, account_id) == (sum(amounts), len(amounts), sum(amounts))


@pytest.fixture
def tagged_engine(migrated: tuple[Engine, str]) -> Iterator[tuple[Engine, str]]:
    """An engine on the module's schema, and the application name that tags its sessions."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    tagged = make_engine(DATABASE_URL, migrated[1], application_name=name)
    yield tagged, name
    tagged.dispose()


def test_a_serialization_failure_reruns_the_whole_transaction(
    engine: Engine,
    tagged_engine: tuple[Engine, str],
    network: FakeNetwork,
    read: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given the charge handler runs SERIALIZABLE and another transaction holds the account row
    serializable = Deliver(
        lambda: UnitOfWork(tagged_engine[0], isolation_level="SERIALIZABLE"), network
    )
    account_id = _open_account(serializable)
    charge = sample("billing.charge.post", account_id=account_id, amount=Money.of(700, "EUR"))
    outcome: list[Outcome | BaseException] = []

    with engine.connect() as other:
        other.execute(
            update(BillingAccount)
            .where(BillingAccount.account_id == account_id)
            .values(balance_minor=BillingAccount.balance_minor + 5)
        )

        def run() -> None:
            try:
                outcome.append(serializable("billing", charge))
            except BaseException as exc:  # the assertion below shows it
                outcome.append(exc)

        worker = threading.Thread(target=run)
        caplog.set_level(logging.WARNING, logger="handlers.bus")
        worker.start()
        _wait_until_blocked_on_a_lock(engine, application_name=tagged_engine[1])
        # When the other transaction commits under the handler's snapshot
        other.commit()
    worker.join(timeout=30)

    # Then the handler's first attempt failed with 40001 and the rerun posted the charge once
    assert outcome == [Outcome.OK]
    assert any("SQLSTATE 40001" in r.getMessage() for r in caplog.records)
    assert _balance(read, account_id) == (705, 1, 700)


def _wait_until_blocked_on_a_lock(
    engine: Engine, *, application_name: str, timeout_s: float = 10.0
) -> None:
    with engine.connect() as probe:

        def waiting() -> bool:
            count = probe.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock' "
                    "AND application_name = :application_name"
                ),
                {"application_name": application_name},
            )
            probe.rollback()
            return bool(count)

        poll(waiting, timeout_s, "the handler to wait on the locked row")


def test_deadlocks_and_serialization_failures_are_classified_from_real_postgresql_errors(
    engine: Engine,
) -> None:
    with engine.begin() as setup:
        setup.execute(text("CREATE TABLE IF NOT EXISTS deadlock_probe (id int PRIMARY KEY)"))
        setup.execute(text("INSERT INTO deadlock_probe VALUES (1), (2) ON CONFLICT DO NOTHING"))
    errors: list[BaseException] = []
    both_locked = threading.Barrier(2)

    def lock(first: int, second: int) -> None:
        try:
            with engine.begin() as connection:
                connection.execute(
                    text("SELECT * FROM deadlock_probe WHERE id = :id FOR UPDATE"), {"id": first}
                )
                both_locked.wait()
                connection.execute(
                    text("SELECT * FROM deadlock_probe WHERE id = :id FOR UPDATE"), {"id": second}
                )
        except OperationalError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=lock, args=pair) for pair in ((1, 2), (2, 1))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert len(errors) == 1
    assert bus.sqlstate_of(errors[0]) == "40P01"
    assert is_retryable_conflict(errors[0])

    with engine.connect() as a, engine.connect() as b:
        a.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
        a.execute(text("SELECT * FROM deadlock_probe"))
        b.execute(text("UPDATE deadlock_probe SET id = id WHERE id = 1"))
        b.commit()
        with pytest.raises(OperationalError) as caught:
            a.execute(text("UPDATE deadlock_probe SET id = id WHERE id = 1"))
    assert bus.sqlstate_of(caught.value) == "40001"
    assert is_retryable_conflict(caught.value)
    assert not is_retryable_conflict(OperationalError("SELECT 1", None, ConnectionError()))


def test_a_transaction_that_keeps_deadlocking_becomes_a_transient_error_after_bounded_attempts(
    deliver: Deliver, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psycopg.errors

    attempts: list[int] = []

    def always_deadlocks(cmd: Contract, ctx: HandlerContext, uow: UnitOfWork) -> Outcome:
        attempts.append(1)
        raise OperationalError("UPDATE x", None, psycopg.errors.DeadlockDetected("deadlock"))

    # The jitter always draws its maximum: the backoffs below are the worst case.
    monkeypatch.setattr(bus, "random", WorstCaseJitter())
    sleeps = record_sleeps(monkeypatch)
    with pytest.raises(DatabaseUnavailable) as caught:
        deliver(
            "crm",
            sample("crm.interaction.log"),
            handlers={("crm", "crm.interaction.log"): always_deadlocks},
            attempts=4,
        )
    assert len(attempts) == 4
    assert isinstance(caught.value, TransientError)
    assert "40P01" in caught.value.message
    # Bounded time: one backoff between attempts, none after the last, at worst 20 ms doubling.
    assert sleeps == pytest.approx([0.04, 0.08, 0.16])


class WorstCaseJitter:
    """Stands in for the ``random`` module: ``uniform(a, b)`` is always ``b``."""

    def uniform(self, low: float, high: float) -> float:
        return high


def test_an_unreachable_database_is_a_transient_error_without_the_url(
    network: FakeNetwork,
) -> None:
    dead = make_engine("postgresql+psycopg://postgres:PLANTED-PASSWORD@127.0.0.1:9/test")
    try:
        with pytest.raises(DatabaseUnavailable) as caught:
            Deliver(lambda: UnitOfWork(dead), network)("crm", sample("crm.interaction.log"))
    finally:
        dead.dispose()
    assert caught.value.reason == "database_unavailable"
    assert "PLANTED" not in caught.value.message and "127.0.0.1" not in caught.value.message


def test_data_postgresql_refuses_is_a_permanent_error_that_names_no_value(
    deliver: Deliver,
) -> None:
    planted = f"PLANTED-{uuid.uuid4().hex}"

    def writes_garbage(cmd: Contract, ctx: HandlerContext, uow: UnitOfWork) -> Outcome:
        with uow:
            uow.session.execute(text("SELECT CAST(:v AS integer)"), {"v": planted})
        return Outcome.OK

    with pytest.raises(StoreRejected) as caught:
        deliver(
            "crm",
            sample("crm.interaction.log"),
            handlers={("crm", "crm.interaction.log"): writes_garbage},
        )
    assert planted not in caught.value.message and planted not in repr(caught.value)
    assert "22P02" in caught.value.message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_a_handler_that_forgets_to_commit_its_claim_is_caught(deliver: Deliver) -> None:
    def forgetful(cmd: Contract, ctx: HandlerContext, uow: UnitOfWork) -> Outcome:
        with uow:
            uow.claim_inbox(ctx.message_id, ctx.handler)
        return Outcome.OK

    with pytest.raises(RuntimeError, match="without committing"):
        deliver(
            "crm",
            sample("crm.interaction.log"),
            handlers={("crm", "crm.interaction.log"): forgetful},
        )


# -- provisioning -----------------------------------------------------------------------------


def test_activation_calls_the_network_once_and_queues_two_follow_ups_with_derived_ids(
    deliver: Deliver, network: FakeNetwork, read: Callable[..., Any]
) -> None:
    activate = sample("provisioning.service.activate")
    message_id, correlation_id = uuid.uuid4(), uuid.uuid4()

    assert deliver("provisioning", activate, message_id, correlation_id) is Outcome.OK
    assert deliver("provisioning", activate, message_id, correlation_id) is Outcome.DUPLICATE

    service_id = activate.service_id  # type: ignore[attr-defined]
    assert network.calls == [("activate", service_id, str(message_id))]
    assert read(lambda s: s.get_one(ProvisioningService, service_id).state) == "active"
    rows = read(
        lambda s: {
            row.message_type: (row.message_id, row.correlation_id, row.payload)
            for row in s.scalars(
                select(Outbox).where(
                    Outbox.message_id.in_(
                        [
                            uuid.uuid5(message_id, t)
                            for t in ("billing.charge.post", "crm.interaction.log")
                        ]
                    )
                )
            )
        }
    )
    assert set(rows) == {"billing.charge.post", "crm.interaction.log"}
    charge_id, charge_correlation, charge_payload = rows["billing.charge.post"]
    assert charge_id == uuid.uuid5(message_id, "billing.charge.post")
    assert charge_correlation == correlation_id
    charge = PostCharge.model_validate(charge_payload)
    assert charge.source_reference == f"activation:{service_id}"
    assert charge.amount == activate.activation_fee  # type: ignore[attr-defined]
    assert charge.service_id == service_id
    note = LogInteraction.model_validate(rows["crm.interaction.log"][2])
    assert note.customer_id == activate.customer_id  # type: ignore[attr-defined]
    assert rows["crm.interaction.log"][0] == uuid.uuid5(message_id, "crm.interaction.log")


def test_the_activation_fee_follow_up_posts_once_on_billing(
    deliver: Deliver, read: Callable[..., Any]
) -> None:
    account_id = _open_account(deliver)
    activate = sample("provisioning.service.activate", account_id=account_id)
    message_id = uuid.uuid4()
    assert deliver("provisioning", activate, message_id) is Outcome.OK
    charge_message_id = uuid.uuid5(message_id, "billing.charge.post")
    payload = read(
        lambda s: s.scalars(
            select(Outbox.payload).where(Outbox.message_id == charge_message_id)
        ).one()
    )
    follow_up = PostCharge.model_validate(payload)

    assert deliver("billing", follow_up, charge_message_id) is Outcome.OK
    assert deliver("billing", follow_up, charge_message_id) is Outcome.DUPLICATE
    assert _balance(read, account_id) == (4900, 1, 4900)


def test_a_free_activation_queues_no_charge(deliver: Deliver, read: Callable[..., Any]) -> None:
    activate = sample("provisioning.service.activate", activation_fee=Money.of(0, "EUR"))
    message_id = uuid.uuid4()
    assert deliver("provisioning", activate, message_id) is Outcome.OK
    types = read(
        lambda s: s.scalars(
            select(Outbox.message_type).where(
                Outbox.message_id.in_(
                    [
                        uuid.uuid5(message_id, "billing.charge.post"),
                        uuid.uuid5(message_id, "crm.interaction.log"),
                    ]
                )
            )
        ).all()
    )
    assert types == ["crm.interaction.log"]


def test_an_unavailable_network_leaves_nothing_behind_and_the_retry_succeeds(
    deliver: Deliver, network: FakeNetwork, read: Callable[..., Any]
) -> None:
    activate = sample("provisioning.service.activate")
    message_id = uuid.uuid4()
    network.failure = NetworkUnavailable("network element activate: no success after 4 attempts")

    with pytest.raises(TransientError):
        deliver("provisioning", activate, message_id)
    assert read(lambda s: s.get(ProvisioningService, activate.service_id)) is None  # type: ignore[attr-defined]
    assert _inbox(read, message_id) == {}

    network.failure = None
    assert deliver("provisioning", activate, message_id) is Outcome.OK
    assert [key for _, _, key in network.calls] == [str(message_id)] * 2


def test_a_second_activation_of_the_same_service_is_a_duplicate_and_other_data_a_conflict(
    deliver: Deliver, network: FakeNetwork, read: Callable[..., Any]
) -> None:
    activate = sample("provisioning.service.activate")
    assert deliver("provisioning", activate) is Outcome.OK
    again_id = uuid.uuid4()

    assert deliver("provisioning", activate, again_id) is Outcome.DUPLICATE
    with pytest.raises(ServiceConflict, match="plan_code"):
        deliver("provisioning", activate.model_copy(update={"plan_code": "MOBILE_L"}))

    assert network.calls_for(activate.service_id) == ["activate"]  # type: ignore[attr-defined]
    assert (
        read(
            lambda s: s.scalar(
                select(func.count())
                .select_from(Outbox)
                .where(Outbox.message_id == uuid.uuid5(again_id, "crm.interaction.log"))
            )
        )
        == 0
    )


def test_suspend_before_activation_is_not_yet(deliver: Deliver, network: FakeNetwork) -> None:
    suspend = sample("provisioning.service.suspend")
    with pytest.raises(NotYet, match="service not active yet"):
        deliver("provisioning", suspend)
    assert network.calls == []


def test_the_service_state_machine(
    deliver: Deliver, network: FakeNetwork, read: Callable[..., Any]
) -> None:
    activate = sample("provisioning.service.activate")
    service_id: uuid.UUID = activate.service_id  # type: ignore[attr-defined]

    def state() -> str:
        return str(read(lambda s: s.get_one(ProvisioningService, service_id).state))

    assert deliver("provisioning", activate) is Outcome.OK
    assert (
        deliver("provisioning", sample("provisioning.service.resume", service_id=service_id))
        is Outcome.OK
    )
    assert state() == "active"
    suspend = sample("provisioning.service.suspend", service_id=service_id, reason="fraud")
    assert deliver("provisioning", suspend) is Outcome.OK
    assert state() == "suspended"
    assert (
        deliver("provisioning", sample("provisioning.service.suspend", service_id=service_id))
        is Outcome.OK
    )
    assert (
        deliver("provisioning", sample("provisioning.service.resume", service_id=service_id))
        is Outcome.OK
    )
    assert state() == "active"
    terminate = sample("provisioning.service.terminate", service_id=service_id)
    assert deliver("provisioning", terminate) is Outcome.OK
    assert state() == "terminated"
    assert read(lambda s: s.get_one(ProvisioningService, service_id).state_reason) == "port_out"

    assert network.calls_for(service_id) == ["activate", "suspend", "resume", "terminate"]


def test_nothing_but_terminate_follows_a_termination(
    deliver: Deliver, network: FakeNetwork, read: Callable[..., Any]
) -> None:
    activate = sample("provisioning.service.activate")
    service_id: uuid.UUID = activate.service_id  # type: ignore[attr-defined]
    activate_id, terminate_id = uuid.uuid4(), uuid.uuid4()
    terminate = sample("provisioning.service.terminate", service_id=service_id)
    deliver("provisioning", activate, activate_id)
    deliver("provisioning", terminate, terminate_id)

    # redeliveries of what already happened stay duplicates, not illegal transitions
    assert deliver("provisioning", activate, activate_id) is Outcome.DUPLICATE
    assert deliver("provisioning", terminate, terminate_id) is Outcome.DUPLICATE
    for late in (
        sample("provisioning.service.suspend", service_id=service_id),
        sample("provisioning.service.resume", service_id=service_id),
        activate,
    ):
        late_id = uuid.uuid4()
        with pytest.raises(IllegalTransition) as caught:
            deliver("provisioning", late, late_id)
        assert caught.value.reason == "illegal_transition"
        assert _inbox(read, late_id) == {}
    assert (
        deliver("provisioning", sample("provisioning.service.terminate", service_id=service_id))
        is Outcome.OK
    )
    assert network.calls_for(service_id) == ["activate", "terminate"]


def test_a_state_change_during_the_network_call_reruns_the_handler(
    deliver: Deliver, network: FakeNetwork, read: Callable[..., Any]
) -> None:
    activate = sample("provisioning.service.activate")
    service_id: uuid.UUID = activate.service_id  # type: ignore[attr-defined]
    deliver("provisioning", activate)
    network.during_call = lambda: deliver(
        "provisioning", sample("provisioning.service.terminate", service_id=service_id)
    )

    # The suspend saw "active", the terminate committed while the suspend called the network:
    # the bus reruns the suspend, which now finds the service terminated.
    with pytest.raises(IllegalTransition):
        deliver("provisioning", sample("provisioning.service.suspend", service_id=service_id))
    assert read(lambda s: s.get_one(ProvisioningService, service_id).state) == "terminated"


def test_concurrent_update_is_retried_in_process_then_surfaces(deliver: Deliver) -> None:
    attempts: list[int] = []

    def always_raced(cmd: Contract, ctx: HandlerContext, uow: UnitOfWork) -> Outcome:
        attempts.append(1)
        raise ConcurrentUpdate("service state changed while the network element was called")

    with pytest.raises(ConcurrentUpdate):
        deliver(
            "crm",
            sample("crm.interaction.log"),
            handlers={("crm", "crm.interaction.log"): always_raced},
            attempts=3,
        )
    assert len(attempts) == 3


def test_the_bus_builds_the_context_from_the_header_never_the_payload(deliver: Deliver) -> None:
    seen: list[HandlerContext] = []

    def spy(cmd: Contract, ctx: HandlerContext, uow: UnitOfWork) -> Outcome:
        seen.append(ctx)
        with uow:
            uow.claim_inbox(ctx.message_id, ctx.handler)
            uow.commit()
        return Outcome.OK

    message_id, correlation_id = uuid.uuid4(), uuid.uuid4()
    deliver(
        "crm",
        sample("crm.interaction.log"),
        message_id,
        correlation_id,
        handlers={("crm", "crm.interaction.log"): spy},
    )
    (ctx,) = seen
    assert (ctx.message_id, ctx.correlation_id, ctx.producer, ctx.handler, ctx.queue) == (
        message_id,
        correlation_id,
        "fleet",
        "spy",
        "crm",
    )
    assert ctx.chain_id == correlation_id
    assert ctx.follow_up_id("x") == uuid.uuid5(message_id, "x")
