"""The catalogue: one frozen pydantic model per (message type, schema version).

The routing key of a message is its type. ``CATALOGUE`` maps (type, version) to its model;
which queues a type reaches is topology (``queues.topology``: bindings and the fan-out).
"""

from __future__ import annotations

from queues.contracts.base import Contract
from queues.contracts.billing import IssueInvoice, OpenAccount, PostCharge, RecordPayment
from queues.contracts.crm import LogInteraction, UpsertCustomer, UpsertCustomerV2
from queues.contracts.money import Money
from queues.contracts.provisioning import (
    ActivateService,
    ResumeService,
    SuspendService,
    TerminateService,
)
from queues.errors import UnknownSchemaVersion, UnknownType

_MODELS: tuple[type[Contract], ...] = (
    UpsertCustomer,
    UpsertCustomerV2,
    LogInteraction,
    OpenAccount,
    PostCharge,
    IssueInvoice,
    RecordPayment,
    ActivateService,
    SuspendService,
    ResumeService,
    TerminateService,
)

CATALOGUE: dict[tuple[str, int], type[Contract]] = {
    (model.message_type, model.schema_version): model for model in _MODELS
}

MESSAGE_TYPES: tuple[str, ...] = tuple(sorted({t for t, _ in CATALOGUE}))


def model_for(message_type: str, schema_version: int) -> type[Contract]:
    """The model of one (type, schema version).

    Raises:
        UnknownType: the type is not in the catalogue.
        UnknownSchemaVersion: the type is known but not this version.
    """
    model = CATALOGUE.get((message_type, schema_version))
    if model is not None:
        return model
    if message_type not in MESSAGE_TYPES:
        raise UnknownType("message type is not in the catalogue")
    raise UnknownSchemaVersion("schema version is not supported for this message type")


def supported_versions(message_type: str) -> list[int]:
    """The schema versions accepted for a type, oldest first."""
    return sorted(v for t, v in CATALOGUE if t == message_type)


def latest_model(message_type: str) -> type[Contract]:
    """The newest schema version's model of a type.

    Raises:
        UnknownType: the type is not in the catalogue.
    """
    versions = supported_versions(message_type)
    if not versions:
        raise UnknownType("message type is not in the catalogue")
    return CATALOGUE[(message_type, versions[-1])]


__all__ = [
    "CATALOGUE",
    "MESSAGE_TYPES",
    "ActivateService",
    "Contract",
    "IssueInvoice",
    "LogInteraction",
    "Money",
    "OpenAccount",
    "PostCharge",
    "RecordPayment",
    "ResumeService",
    "SuspendService",
    "TerminateService",
    "UpsertCustomer",
    "UpsertCustomerV2",
    "latest_model",
    "model_for",
    "supported_versions",
]
