"""Valid sample payloads for every catalogue entry, with random ids so runs never collide."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, date, datetime
from typing import Any

from queues.contracts import CATALOGUE, Contract
from queues.contracts.fields import luhn_check_digit
from queues.contracts.money import Money


def iccid() -> str:
    body = "8943" + "".join(random.choice("0123456789") for _ in range(14))
    return body + luhn_check_digit(body)


def msisdn() -> str:
    return "+43664" + "".join(random.choice("0123456789") for _ in range(7))


def sample_fields(message_type: str, schema_version: int = 1) -> dict[str, Any]:
    """Keyword arguments of a valid payload of this (type, version)."""
    now = datetime.now(UTC)
    fields: dict[str, Any]
    match message_type:
        case "crm.customer.upsert":
            fields = {
                "customer_id": uuid.uuid4(),
                "entity_version": random.randint(1, 1000),
                "name": "Anna Huber",
                "email": "anna.huber@example.at",
                "msisdn": msisdn(),
                "address": {
                    "street": "Mariahilfer Straße 1",
                    "postal_code": "1060",
                    "city": "Wien",
                    "country": "AT",
                },
            }
            if schema_version >= 2:
                fields["preferred_language"] = "de-AT"
        case "crm.interaction.log":
            fields = {
                "interaction_id": uuid.uuid4(),
                "customer_id": uuid.uuid4(),
                "channel": "call_center",
                "topic": "roaming question",
                "note": "explained EU roaming",
                "occurred_at": now,
            }
        case "billing.account.open":
            fields = {
                "account_id": uuid.uuid4(),
                "customer_id": uuid.uuid4(),
                "currency": "EUR",
                "cycle_day": 1,
                "payment_terms_days": 14,
            }
        case "billing.charge.post":
            fields = {
                "account_id": uuid.uuid4(),
                "source_reference": f"cdr-{uuid.uuid4().hex[:12]}",
                "amount": Money.of(1999, "EUR"),
                "description": "Monthly fee MOBILE_M",
                "charged_at": now,
            }
        case "billing.invoice.issue":
            fields = {
                "account_id": uuid.uuid4(),
                "period_start": date(2026, 10, 1),
                "period_end": date(2026, 10, 31),
            }
        case "billing.payment.record":
            fields = {
                "account_id": uuid.uuid4(),
                "gateway_reference": f"psp-{uuid.uuid4().hex[:16]}",
                "amount": Money.of(2399, "EUR"),
                "received_at": now,
            }
        case "provisioning.service.activate":
            fields = {
                "service_id": uuid.uuid4(),
                "customer_id": uuid.uuid4(),
                "account_id": uuid.uuid4(),
                "msisdn": msisdn(),
                "iccid": iccid(),
                "plan_code": "MOBILE_M",
                "activation_fee": Money.of(4900, "EUR"),
            }
        case "provisioning.service.suspend":
            fields = {"service_id": uuid.uuid4(), "reason": "customer_request"}
        case "provisioning.service.resume":
            fields = {"service_id": uuid.uuid4()}
        case "provisioning.service.terminate":
            fields = {"service_id": uuid.uuid4(), "reason": "port_out"}
        case _:
            raise KeyError(message_type)
    return fields


def sample(message_type: str, schema_version: int = 1, **overrides: Any) -> Contract:
    """A valid payload model of this (type, version)."""
    model = CATALOGUE[(message_type, schema_version)]
    return model.model_validate({**sample_fields(message_type, schema_version), **overrides})
