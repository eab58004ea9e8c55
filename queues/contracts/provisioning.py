"""Provisioning messages: the life of a subscriber service on the network."""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar
from uuid import UUID

from queues.contracts.base import Contract
from queues.contracts.fields import Iccid, Msisdn, PlanCode
from queues.contracts.money import Money


class ActivateService(Contract):
    """Activate a service on the network element; on success bill the fee and log it in CRM."""

    message_type: ClassVar[str] = "provisioning.service.activate"
    schema_version: ClassVar[int] = 1

    service_id: UUID
    customer_id: UUID
    account_id: UUID
    msisdn: Msisdn
    iccid: Iccid
    plan_code: PlanCode
    activation_fee: Money


class SuspendReason(StrEnum):
    NON_PAYMENT = "non_payment"
    CUSTOMER_REQUEST = "customer_request"
    FRAUD = "fraud"
    LOST_SIM = "lost_sim"


class SuspendService(Contract):
    """Suspend an active service."""

    message_type: ClassVar[str] = "provisioning.service.suspend"
    schema_version: ClassVar[int] = 1

    service_id: UUID
    reason: SuspendReason


class ResumeService(Contract):
    """Resume a suspended service."""

    message_type: ClassVar[str] = "provisioning.service.resume"
    schema_version: ClassVar[int] = 1

    service_id: UUID


class TerminationReason(StrEnum):
    CUSTOMER_REQUEST = "customer_request"
    PORT_OUT = "port_out"
    NON_PAYMENT = "non_payment"
    FRAUD = "fraud"


class TerminateService(Contract):
    """Terminate a service for good; nothing can follow a termination."""

    message_type: ClassVar[str] = "provisioning.service.terminate"
    schema_version: ClassVar[int] = 1

    service_id: UUID
    reason: TerminationReason
