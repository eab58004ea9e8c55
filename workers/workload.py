"""The demo's workload: a realistic, mixed stream of upstream jobs, with planted troubles.

Plain functions build payloads from ``queues.contracts`` with random ids (seeded: the same seed
gives the same workload). ``build_workload`` strings customer journeys together — a CRM profile,
a billing account, a SIM service with its charges, suspensions and terminations, call-center
notes — and interleaves them the way independent upstream systems would send them, so some
messages overtake their causes (a charge before its account, a suspension before its
activation: ``NotYet``, retried) and some older profile versions arrive late (``stale``).

Besides the happy journeys it plants, whatever the size:

- scenarios that *must* happen, each triggered by the fleet's own progress (``Deferred``): a
  charge whose account opens only after the charge was retried, a suspension whose activation
  is sent only after it was retried, an older profile sent after the newer one settled (stale
  on both queues), an activation sent after its service was terminated (``illegal_transition``);
- permanently bad messages, each dead-lettered with its own reason: a tampered envelope
  (``authentication_failed``), a producer sending a type its key does not grant
  (``not_authorized``), an activation with an ICCID failing its check digit (``invalid_payload``);
- re-sends: the same message id published twice (absorbed by the inbox) and the same charge
  under a new message id (absorbed by its business key).

Invoices and payments are not in this workload (yet): the bill run (`fleet billrun`) and
tests/e2e/test_billing_fleet.py exercise them.
"""

from __future__ import annotations

import dataclasses
import random
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Literal

from queues.contracts import (
    ActivateService,
    Contract,
    LogInteraction,
    Money,
    OpenAccount,
    PostCharge,
    SuspendService,
    TerminateService,
    UpsertCustomer,
    UpsertCustomerV2,
)
from queues.contracts.crm import InteractionChannel, PostalAddress
from queues.contracts.fields import luhn_check_digit
from queues.contracts.provisioning import ResumeService, SuspendReason, TerminationReason
from queues.envelope import SealedMessage, seal
from queues.keys import KeyRegistry

PRODUCER_TYPES: dict[str, tuple[str, ...]] = {
    "order-management": ("provisioning.service.*", "billing.account.open"),
    "self-care": ("crm.*",),
    "payment-gateway": ("billing.payment.*",),
    "network-inventory": ("provisioning.service.suspend", "provisioning.service.resume"),
    "fleet": ("billing.*", "crm.*", "provisioning.*"),
}
"""Who may send what. ``fleet`` seals the outbox's follow-ups and stands in for the rating
engine that posts usage charges (no upstream key grants ``billing.charge.post``)."""

NAMES = (
    "Anna Huber", "Lukas Gruber", "Sophie Wagner", "Maximilian Bauer", "Laura Pichler",
    "David Moser", "Lena Steiner", "Felix Hofer", "Hannah Leitner", "Jakob Berger",
)  # fmt: skip
CITIES = (("1060", "Wien"), ("8010", "Graz"), ("4020", "Linz"), ("5020", "Salzburg"))
STREETS = ("Mariahilfer Straße", "Herrengasse", "Landstraße", "Getreidegasse")
PLANS = ("MOBILE_S", "MOBILE_M", "MOBILE_L", "DATA_ONLY")
TOPICS = ("roaming question", "bill explained", "tariff change", "device order", "complaint")


class Envelope(StrEnum):
    """How a job's envelope is made."""

    SEALED = "sealed"
    """Sealed with the producer's own key, as a well-behaved upstream does."""
    TAMPERED = "tampered"
    """Sealed, then one bit of the ciphertext flipped on the way."""
    WIDENED_KEY = "widened_key"
    """Sealed with a copy of the producer's key that claims a type the registry does not grant."""


@dataclass(frozen=True)
class Job:
    """One message an upstream sends. ``planned`` names what must become of it, if anything."""

    producer: str
    payload: Contract
    message_id: uuid.UUID
    envelope: Envelope = Envelope.SEALED
    planned: str | None = None

    @property
    def message_type(self) -> str:
        return self.payload.message_type


@dataclass(frozen=True)
class Deferred:
    """A job sent only once the message ``after`` was retried (or settled) on every queue."""

    job: Job
    after: uuid.UUID
    when: Literal["retried", "settled"]
    scenario: str


@dataclass
class Workload:
    """What to publish, in order (a re-sent job appears twice), and what waits for a trigger."""

    stream: list[Job]
    deferred: list[Deferred]
    planned_dead: Counter[str] = field(default_factory=Counter)
    resent_ids: list[uuid.UUID] = field(default_factory=list)
    business_duplicates: int = 0

    @property
    def messages(self) -> int:
        """Distinct messages (message ids), deferred ones included."""
        return len({j.message_id for j in self.stream} | {d.job.message_id for d in self.deferred})

    @property
    def publishes(self) -> int:
        return len(self.stream) + len(self.deferred)

    def planned(self) -> dict[str, object]:
        """What the fleet must show for this workload, whatever the timing."""
        return {
            "dead_by_reason": dict(sorted(self.planned_dead.items())),
            "resent_same_id": len(self.resent_ids),
            "resent_same_business_key": self.business_duplicates,
            "stale_at_least": 2,
            "retried_at_least": 2,
            "deferred": sorted(d.scenario for d in self.deferred),
        }


# ── payloads ───────────────────────────────────────────────────────────────────────────────────


def new_id(rng: random.Random) -> uuid.UUID:
    return uuid.UUID(int=rng.getrandbits(128), version=4)


def msisdn(rng: random.Random) -> str:
    return "+43664" + "".join(rng.choice("0123456789") for _ in range(7))


def iccid(rng: random.Random) -> str:
    body = "8943" + "".join(rng.choice("0123456789") for _ in range(14))
    return body + luhn_check_digit(body)


def upsert_customer(
    rng: random.Random, customer_id: uuid.UUID, version: int
) -> UpsertCustomer | UpsertCustomerV2:
    """A CRM profile at ``version``; a third of them in schema version 2."""
    name = rng.choice(NAMES)
    postal_code, city = rng.choice(CITIES)
    fields = {
        "customer_id": customer_id,
        "entity_version": version,
        "name": name,
        "email": f"{name.lower().replace(' ', '.')}{rng.randint(1, 999)}@example.at",
        "msisdn": msisdn(rng),
        "address": PostalAddress(
            street=f"{rng.choice(STREETS)} {rng.randint(1, 120)}",
            postal_code=postal_code,
            city=city,
            country="AT",
        ),
    }
    if rng.random() < 1 / 3:
        return UpsertCustomerV2(**fields, preferred_language=rng.choice(("de-AT", "en", "tr")))
    return UpsertCustomer(**fields)


def open_account(
    rng: random.Random, account_id: uuid.UUID, customer_id: uuid.UUID, currency: str
) -> OpenAccount:
    return OpenAccount(
        account_id=account_id,
        customer_id=customer_id,
        currency=currency,
        cycle_day=rng.randint(1, 28),
        payment_terms_days=rng.choice((14, 14, 30)),
    )


def post_charge(
    rng: random.Random, account_id: uuid.UUID, currency: str, now: datetime
) -> PostCharge:
    """A rated usage or monthly charge; its source reference is the business key."""
    kind = rng.choice(("cdr", "roaming", "monthly", "addon"))
    return PostCharge(
        account_id=account_id,
        source_reference=f"{kind}-{rng.getrandbits(48):012x}",
        amount=Money.of(rng.randint(50, 4999), currency),
        description=f"{kind} charge",
        charged_at=now - timedelta(minutes=rng.randint(0, 600)),
    )


def activate_service(
    rng: random.Random,
    service_id: uuid.UUID,
    customer_id: uuid.UUID,
    account_id: uuid.UUID,
    currency: str,
) -> ActivateService:
    """A SIM activation; a fee above zero makes the fleet post it as a follow-up charge."""
    return ActivateService(
        service_id=service_id,
        customer_id=customer_id,
        account_id=account_id,
        msisdn=msisdn(rng),
        iccid=iccid(rng),
        plan_code=rng.choice(PLANS),
        activation_fee=Money.of(rng.choice((0, 990, 1990, 4900)), currency),
    )


def suspend_service(rng: random.Random, service_id: uuid.UUID) -> SuspendService:
    return SuspendService(service_id=service_id, reason=rng.choice(list(SuspendReason)))


def resume_service(service_id: uuid.UUID) -> ResumeService:
    return ResumeService(service_id=service_id)


def terminate_service(rng: random.Random, service_id: uuid.UUID) -> TerminateService:
    return TerminateService(service_id=service_id, reason=rng.choice(list(TerminationReason)))


def log_interaction(rng: random.Random, customer_id: uuid.UUID, now: datetime) -> LogInteraction:
    return LogInteraction(
        interaction_id=new_id(rng),
        customer_id=customer_id,
        channel=rng.choice((InteractionChannel.CALL_CENTER, InteractionChannel.SHOP)),
        topic=rng.choice(TOPICS),
        note="resolved on first contact",
        occurred_at=now - timedelta(minutes=rng.randint(0, 600)),
    )


def invalid_activation(rng: random.Random) -> ActivateService:
    """An activation whose ICCID fails its Luhn check digit, built without validation the way a
    buggy upstream in another language would send it."""
    good = iccid(rng)
    bad = good[:-1] + str((int(good[-1]) + 1) % 10)
    valid = activate_service(rng, new_id(rng), new_id(rng), new_id(rng), "EUR")
    return ActivateService.model_construct(**{**dict(valid), "iccid": bad})


# ── envelopes ──────────────────────────────────────────────────────────────────────────────────


def seal_job(job: Job, keys: KeyRegistry) -> SealedMessage:
    """The envelope of ``job``, made as ``job.envelope`` says (sealed now: ``created_at``)."""
    key = keys.sealing_key(job.producer)
    if job.envelope is Envelope.WIDENED_KEY:
        key = dataclasses.replace(key, types=(*key.types, job.message_type))
    sealed = seal(job.payload, key, message_id=job.message_id)
    if job.envelope is Envelope.TAMPERED:
        return tampered(sealed)
    return sealed


def tampered(sealed: SealedMessage) -> SealedMessage:
    """The same envelope with the first ciphertext character changed (6 bits flipped)."""
    header, encrypted_key, iv, ciphertext, tag = sealed.body.split(b".")
    first = b"B" if ciphertext[:1] == b"A" else b"A"
    body = b".".join((header, encrypted_key, iv, first + ciphertext[1:], tag))
    return SealedMessage(body=body, header=sealed.header)


# ── the workload ───────────────────────────────────────────────────────────────────────────────


def customer_journey(rng: random.Random, now: datetime) -> list[Job]:
    """One customer's messages in the order their systems send them (with natural inversions)."""

    def job(producer: str, payload: Contract) -> Job:
        return Job(producer, payload, new_id(rng))

    customer, account = new_id(rng), new_id(rng)
    currency = rng.choice(("EUR",) * 9 + ("CHF",))
    version = rng.randint(2, 40)
    jobs = [job("self-care", upsert_customer(rng, customer, version))]
    if rng.random() < 0.15:  # an older version overtaken by the newer one: likely stale
        jobs.append(job("self-care", upsert_customer(rng, customer, version - 1)))

    opening = job("order-management", open_account(rng, account, customer, currency))
    charges = [
        job("fleet", post_charge(rng, account, currency, now))
        for _ in range(rng.choice((0, 1, 1, 2)))
    ]
    if charges and rng.random() < 0.1:  # rated before the account is open: NotYet, retried
        jobs += [charges[0], opening, *charges[1:]]
    else:
        jobs += [opening, *charges]

    if rng.random() < 0.85:
        service = new_id(rng)
        activation = job(
            "order-management", activate_service(rng, service, customer, account, currency)
        )
        draw = rng.random()
        if draw < 0.25:
            suspension = job("network-inventory", suspend_service(rng, service))
            resumption = job("network-inventory", resume_service(service))
            if rng.random() < 0.15:  # the suspension overtakes the activation: NotYet
                jobs += [suspension, activation, resumption]
            else:
                jobs += [activation, suspension, resumption]
        elif draw < 0.33:
            jobs += [activation, job("order-management", terminate_service(rng, service))]
        else:
            jobs.append(activation)
    if rng.random() < 0.5:
        jobs.append(job("self-care", log_interaction(rng, customer, now)))
    return jobs


def interleave(rng: random.Random, journeys: list[list[Job]]) -> list[Job]:
    """A random merge that keeps each journey's own order (independent senders, one exchange)."""
    slots = [index for index, journey in enumerate(journeys) for _ in journey]
    rng.shuffle(slots)
    cursors = [iter(journey) for journey in journeys]
    return [next(cursors[index]) for index in slots]


def planted(rng: random.Random, now: datetime) -> tuple[list[list[Job]], list[Deferred]]:
    """The scenarios that must happen, and the permanently bad messages."""

    def job(producer: str, payload: Contract, **options: object) -> Job:
        return Job(producer, payload, new_id(rng), **options)  # type: ignore[arg-type]

    journeys: list[list[Job]] = []
    deferred: list[Deferred] = []

    # A charge whose account opens only once the charge has been retried.
    customer, account = new_id(rng), new_id(rng)
    early = job("fleet", post_charge(rng, account, "EUR", now), planned="not_yet")
    journeys.append([early])
    opening = job("order-management", open_account(rng, account, customer, "EUR"))
    deferred.append(Deferred(opening, early.message_id, "retried", "account opened late"))

    # A suspension whose activation is sent only once the suspension has been retried.
    service, account2 = new_id(rng), new_id(rng)
    suspension = job("network-inventory", suspend_service(rng, service), planned="not_yet")
    journeys.append([job("order-management", open_account(rng, account2, customer, "EUR"))])
    journeys.append([suspension])
    activation = job("order-management", activate_service(rng, service, customer, account2, "EUR"))
    deferred.append(Deferred(activation, suspension.message_id, "retried", "activated late"))

    # An older profile version sent after the newer one settled: stale on crm and billing.
    profile = new_id(rng)
    newer = job("self-care", upsert_customer(rng, profile, 7))
    journeys.append([newer])
    older = job("self-care", upsert_customer(rng, profile, 6), planned="stale")
    deferred.append(Deferred(older, newer.message_id, "settled", "older profile version"))

    # An activation after the service was terminated: impossible from any future state.
    doomed, account3 = new_id(rng), new_id(rng)
    first = activate_service(rng, doomed, customer, account3, "EUR")
    termination = job("order-management", terminate_service(rng, doomed))
    journeys.append(
        [
            job("order-management", open_account(rng, account3, customer, "EUR")),
            job("order-management", first),
            termination,
        ]
    )
    again = job("order-management", first, planned="illegal_transition")
    deferred.append(Deferred(again, termination.message_id, "settled", "activated after terminate"))

    # Permanently bad envelopes and payloads.
    journeys.append(
        [
            job(
                "self-care",
                log_interaction(rng, customer, now),
                envelope=Envelope.TAMPERED,
                planned="authentication_failed",
            )
        ]
    )
    journeys.append(
        [
            job(
                "self-care",
                post_charge(rng, account, "EUR", now),
                envelope=Envelope.WIDENED_KEY,
                planned="not_authorized",
            )
        ]
    )
    journeys.append([job("order-management", invalid_activation(rng), planned="invalid_payload")])
    return journeys, deferred


def build_workload(messages: int, seed: int | None = None) -> Workload:
    """About ``messages`` distinct messages (at least the planted ones), in publish order."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    journeys, deferred = planted(rng, now)
    count = sum(len(j) for j in journeys) + len(deferred)
    while count < messages:
        journey = customer_journey(rng, now)
        journeys.append(journey)
        count += len(journey)
    stream = interleave(rng, journeys)

    # Re-sends: the same message id again, later in the stream (inbox: duplicate) …
    plain = [
        j
        for j in stream
        if j.planned is None
        and j.message_type in ("crm.customer.upsert", "crm.interaction.log", "billing.charge.post")
    ]
    resent = rng.sample(plain, min(len(plain), max(3, messages // 300)))
    # … and a charge again under a new message id (billing: duplicate by source reference).
    charges = [j for j in plain if j.message_type == "billing.charge.post" and j not in resent]
    originals = rng.sample(charges, min(len(charges), max(1, messages // 1000)))
    again = [Job(j.producer, j.payload, new_id(rng)) for j in originals]
    for original, copy in [*zip(resent, resent, strict=True), *zip(originals, again, strict=True)]:
        position = stream.index(original)
        stream.insert(rng.randint(position + 1, len(stream)), copy)
    planned_dead = Counter(
        j.planned
        for j in [*stream, *(d.job for d in deferred)]
        if j.planned not in (None, "not_yet", "stale")
    )
    return Workload(
        stream=stream,
        deferred=deferred,
        planned_dead=Counter({str(k): v for k, v in planned_dead.items()}),
        resent_ids=[j.message_id for j in resent],
        business_duplicates=len(again),
    )
