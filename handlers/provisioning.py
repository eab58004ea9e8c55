"""Provisioning handlers: a service's life on the network element.

State machine (``provisioning_services.state``)::

    (none) ──activate──▶ active ──suspend──▶ suspended ──resume──▶ active
                           │                    │
                           └─────terminate──────┴──────▶ terminated (final)

A transition from an unknown service ▶ ``NotYet`` (its activation may be in flight); to the state
it is already in ▶ ``ok``, a no-op without a network call; anything but terminate from
``terminated`` ▶ ``IllegalTransition``. Every handler calls the network element with no database
transaction open: a cheap read first (duplicate? which state?), then the call (idempotency key =
message id), then one transaction that claims the inbox and writes the effects. If the state moved
in between, ``ConcurrentUpdate`` makes the bus run the handler again.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Row, select, text

from handlers.context import HandlerContext, Outcome, commit_outcome
from handlers.errors import ConcurrentUpdate, ServiceConflict
from handlers.network import NetworkElement
from handlers.store.models import ProvisioningService
from handlers.store.uow import UnitOfWork
from queues.contracts import (
    ActivateService,
    LogInteraction,
    PostCharge,
    ResumeService,
    SuspendService,
    TerminateService,
)
from queues.contracts.crm import InteractionChannel
from queues.errors import IllegalTransition, NotYet

ACTIVE = "active"
SUSPENDED = "suspended"
TERMINATED = "terminated"

_IDENTITY_FIELDS = ("customer_id", "account_id", "msisdn", "iccid", "plan_code")


def activation_charge_reference(service_id: uuid.UUID) -> str:
    """The activation fee's source reference: one activation fee per service, ever."""
    return f"activation:{service_id}"


def activate_service(
    cmd: ActivateService, ctx: HandlerContext, uow: UnitOfWork, network: NetworkElement
) -> Outcome:
    """Activate on the network element, record the service, and queue the activation fee
    (``billing.charge.post``) and a CRM note (``crm.interaction.log``) in the outbox.

    Follow-up message ids derive from this message's id, so a redelivery cannot send them twice.
    A service id already provisioned with the same data is a duplicate (no call, no follow-ups).

    Raises:
        IllegalTransition: the service is terminated.
        ServiceConflict: the service id is provisioned with other data.
        NetworkRejected, NetworkUnavailable: from the network element.
    """
    with uow:
        if uow.already_processed(ctx.message_id, ctx.handler):
            return Outcome.DUPLICATE
        existing = uow.session.execute(_READ_SERVICE, {"service_id": cmd.service_id}).first()
        if existing is not None:
            _check_same_service(existing, cmd)
    if existing is None:
        network.activate(
            cmd.service_id,
            msisdn=cmd.msisdn,
            iccid=cmd.iccid,
            plan_code=cmd.plan_code,
            idempotency_key=str(ctx.message_id),
        )
    with uow:
        if not uow.claim_inbox(ctx.message_id, ctx.handler):
            return Outcome.DUPLICATE
        created = uow.session.execute(
            _PROVISION,
            {
                "service_id": cmd.service_id,
                "customer_id": cmd.customer_id,
                "account_id": cmd.account_id,
                "msisdn": cmd.msisdn,
                "iccid": cmd.iccid,
                "plan_code": cmd.plan_code,
                "state": ACTIVE,
            },
        ).first()
        if created is None:
            _check_same_service(uow.session.get_one(ProvisioningService, cmd.service_id), cmd)
            return commit_outcome(uow, ctx, Outcome.DUPLICATE)
        _queue_activation_follow_ups(cmd, ctx, uow)
        return commit_outcome(uow, ctx, Outcome.OK)


# Built once: the activation is the fleet's busiest one-message handler.
_READ_SERVICE = text(
    "SELECT state, customer_id, account_id, msisdn, iccid, plan_code FROM provisioning_services "
    "WHERE service_id = :service_id"
)
_PROVISION = text(
    "INSERT INTO provisioning_services (service_id, customer_id, account_id, msisdn, iccid, "
    "plan_code, state) VALUES (:service_id, :customer_id, :account_id, :msisdn, :iccid, "
    ":plan_code, :state) ON CONFLICT (service_id) DO NOTHING RETURNING service_id"
)


def _check_same_service(existing: ProvisioningService | Row[Any], cmd: ActivateService) -> None:
    if existing.state == TERMINATED:
        raise IllegalTransition("activate: service is terminated")
    differing = [name for name in _IDENTITY_FIELDS if getattr(existing, name) != getattr(cmd, name)]
    if differing:
        raise ServiceConflict(f"service already provisioned with other {', '.join(differing)}")


def _queue_activation_follow_ups(
    cmd: ActivateService, ctx: HandlerContext, uow: UnitOfWork
) -> None:
    now = datetime.now(UTC)
    if cmd.activation_fee.amount_minor > 0:
        charge = PostCharge(
            account_id=cmd.account_id,
            source_reference=activation_charge_reference(cmd.service_id),
            amount=cmd.activation_fee,
            description=f"Activation fee {cmd.plan_code}",
            charged_at=now,
            service_id=cmd.service_id,
        )
        uow.add_outbox(charge, ctx.follow_up_id(PostCharge.message_type), ctx.chain_id)
    interaction = LogInteraction(
        interaction_id=ctx.follow_up_id("crm.interaction"),
        customer_id=cmd.customer_id,
        channel=InteractionChannel.SYSTEM,
        topic="service activated",
        note=f"service {cmd.service_id} activated on plan {cmd.plan_code}",
        occurred_at=now,
    )
    uow.add_outbox(interaction, ctx.follow_up_id(LogInteraction.message_type), ctx.chain_id)


def suspend_service(
    cmd: SuspendService, ctx: HandlerContext, uow: UnitOfWork, network: NetworkElement
) -> Outcome:
    """active ▶ suspended (already suspended: ok, no-op).

    Raises:
        NotYet: the service is unknown (its activation may be in flight).
        IllegalTransition: the service is terminated.
    """

    def call() -> None:
        network.suspend(
            cmd.service_id, reason=cmd.reason.value, idempotency_key=str(ctx.message_id)
        )

    return _transition(cmd.service_id, SUSPENDED, cmd.reason.value, call, ctx, uow)


def resume_service(
    cmd: ResumeService, ctx: HandlerContext, uow: UnitOfWork, network: NetworkElement
) -> Outcome:
    """suspended ▶ active (already active: ok, no-op).

    Raises:
        NotYet: the service is unknown (its activation may be in flight).
        IllegalTransition: the service is terminated.
    """

    def call() -> None:
        network.resume(cmd.service_id, idempotency_key=str(ctx.message_id))

    return _transition(cmd.service_id, ACTIVE, None, call, ctx, uow)


def terminate_service(
    cmd: TerminateService, ctx: HandlerContext, uow: UnitOfWork, network: NetworkElement
) -> Outcome:
    """active or suspended ▶ terminated, for good (already terminated: ok, no-op).

    Raises:
        NotYet: the service is unknown (its activation may be in flight).
    """

    def call() -> None:
        network.terminate(
            cmd.service_id, reason=cmd.reason.value, idempotency_key=str(ctx.message_id)
        )

    return _transition(cmd.service_id, TERMINATED, cmd.reason.value, call, ctx, uow)


def _transition(
    service_id: uuid.UUID,
    target: str,
    reason: str | None,
    call_network: Callable[[], None],
    ctx: HandlerContext,
    uow: UnitOfWork,
) -> Outcome:
    with uow:
        if uow.already_processed(ctx.message_id, ctx.handler):
            return Outcome.DUPLICATE
        seen = uow.session.execute(
            select(ProvisioningService.state).where(ProvisioningService.service_id == service_id)
        ).scalar_one_or_none()
    _check_transition(seen, target)
    if seen != target:
        call_network()
    with uow:
        if not uow.claim_inbox(ctx.message_id, ctx.handler):
            return Outcome.DUPLICATE
        service = uow.session.execute(
            select(ProvisioningService)
            .where(ProvisioningService.service_id == service_id)
            .with_for_update()
        ).scalar_one_or_none()
        current = service.state if service is not None else None
        if current != seen:
            raise ConcurrentUpdate("service state changed while the network element was called")
        if service is not None and service.state != target:
            service.state = target
            service.state_reason = reason
            service.version += 1
            service.updated_at = datetime.now(UTC)
        return commit_outcome(uow, ctx, Outcome.OK)


def _check_transition(state: str | None, target: str) -> None:
    if state is None:
        raise NotYet("service not active yet")
    if state == TERMINATED and target != TERMINATED:
        raise IllegalTransition(f"{_VERB[target]}: service is terminated")


_VERB = {ACTIVE: "resume", SUSPENDED: "suspend", TERMINATED: "terminate"}
