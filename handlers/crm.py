"""CRM handlers: the customer profile and its interaction history."""

from __future__ import annotations

from sqlalchemy import func
from sqlalchemy.dialects.postgresql import insert

from handlers.context import HandlerContext, Outcome, commit_outcome
from handlers.store.models import CrmCustomer, CrmInteraction
from handlers.store.uow import UnitOfWork
from queues.contracts import LogInteraction, UpsertCustomer, UpsertCustomerV2


def upsert_customer(cmd: UpsertCustomer, ctx: HandlerContext, uow: UnitOfWork) -> Outcome:
    """Create or update the CRM profile; an entity version not newer than the stored one is stale.

    Equal versions count as stale too: the source already sent that state, so there is nothing
    to apply. A schema-1 message leaves ``preferred_language`` as stored (it cannot know it).
    """
    values = {
        "customer_id": cmd.customer_id,
        "entity_version": cmd.entity_version,
        "name": cmd.name,
        "email": cmd.email,
        "msisdn": cmd.msisdn,
        "street": cmd.address.street,
        "postal_code": cmd.address.postal_code,
        "city": cmd.address.city,
        "country": cmd.address.country,
    }
    if isinstance(cmd, UpsertCustomerV2):
        values["preferred_language"] = cmd.preferred_language
    with uow:
        if not uow.claim_inbox(ctx.message_id, ctx.handler):
            return Outcome.DUPLICATE
        statement = insert(CrmCustomer).values(**values)
        changes = {name: statement.excluded[name] for name in values if name != "customer_id"}
        applied = uow.session.execute(
            statement.on_conflict_do_update(
                index_elements=[CrmCustomer.customer_id],
                set_={**changes, "updated_at": func.now()},
                where=CrmCustomer.entity_version < statement.excluded.entity_version,
            ).returning(CrmCustomer.customer_id)
        ).first()
        return commit_outcome(uow, ctx, Outcome.OK if applied is not None else Outcome.STALE)


def log_interaction(cmd: LogInteraction, ctx: HandlerContext, uow: UnitOfWork) -> Outcome:
    """Append to the customer's history; an interaction id already logged is a duplicate."""
    with uow:
        if not uow.claim_inbox(ctx.message_id, ctx.handler):
            return Outcome.DUPLICATE
        appended = uow.session.execute(
            insert(CrmInteraction)
            .values(
                interaction_id=cmd.interaction_id,
                customer_id=cmd.customer_id,
                channel=cmd.channel.value,
                topic=cmd.topic,
                note=cmd.note,
                occurred_at=cmd.occurred_at,
                message_id=ctx.message_id,
            )
            .on_conflict_do_nothing(index_elements=[CrmInteraction.interaction_id])
            .returning(CrmInteraction.interaction_id)
        ).first()
        return commit_outcome(uow, ctx, Outcome.OK if appended is not None else Outcome.DUPLICATE)
