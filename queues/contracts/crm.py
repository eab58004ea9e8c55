"""CRM messages: the customer profile and its interaction history."""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from queues.contracts.base import Contract
from queues.contracts.fields import (
    CountryCode,
    EmailAddress,
    EntityVersion,
    LongText,
    Msisdn,
    ShortText,
)


class PostalAddress(BaseModel):
    """A postal address; billing prints it on invoices."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    street: ShortText
    postal_code: str = Field(pattern=r"^[A-Za-z0-9 -]{2,12}$")
    city: ShortText
    country: CountryCode


class UpsertCustomer(Contract):
    """Create or update a customer profile; billing mirrors the account holder (fan-out)."""

    message_type: ClassVar[str] = "crm.customer.upsert"
    schema_version: ClassVar[int] = 1
    entity_version_field: ClassVar[str | None] = "entity_version"

    customer_id: UUID
    entity_version: EntityVersion
    name: ShortText
    email: EmailAddress | None = None
    msisdn: Msisdn | None = None
    address: PostalAddress


class UpsertCustomerV2(UpsertCustomer):
    """Version 2 adds the customer's preferred language (additive change, see evolution policy)."""

    schema_version: ClassVar[int] = 2

    preferred_language: str | None = Field(
        default=None, pattern=r"^[a-z]{2}(-[A-Z]{2})?$", description="BCP 47, e.g. de-AT"
    )


class InteractionChannel(StrEnum):
    SHOP = "shop"
    CALL_CENTER = "call_center"
    SELF_CARE = "self_care"
    SYSTEM = "system"


class LogInteraction(Contract):
    """Append one entry to a customer's interaction history."""

    message_type: ClassVar[str] = "crm.interaction.log"
    schema_version: ClassVar[int] = 1

    interaction_id: UUID
    customer_id: UUID
    channel: InteractionChannel
    topic: ShortText
    note: LongText | None = None
    occurred_at: AwareDatetime
