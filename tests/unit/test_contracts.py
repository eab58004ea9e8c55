"""The catalogue: every type valid, money exponents respected, ids in their documented formats."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from queues.contracts import (
    CATALOGUE,
    MESSAGE_TYPES,
    ActivateService,
    PostCharge,
    latest_model,
    model_for,
    supported_versions,
)
from queues.contracts.money import CURRENCY_EXPONENTS, Money, currency_exponent
from queues.errors import UnknownSchemaVersion, UnknownType
from tests.support.factories import sample, sample_fields

DESIGN_CATALOGUE = {
    "crm.customer.upsert",
    "crm.interaction.log",
    "billing.account.open",
    "billing.charge.post",
    "billing.invoice.issue",
    "billing.payment.record",
    "provisioning.service.activate",
    "provisioning.service.suspend",
    "provisioning.service.resume",
    "provisioning.service.terminate",
}


def test_catalogue_covers_every_design_type() -> None:
    assert set(MESSAGE_TYPES) == DESIGN_CATALOGUE


@pytest.mark.parametrize(("message_type", "version"), sorted(CATALOGUE))
def test_every_model_is_frozen_and_forbids_extra_fields(message_type: str, version: int) -> None:
    payload = sample(message_type, version)
    with pytest.raises(ValidationError):
        payload.__class__.model_validate(
            {**json.loads(payload.model_dump_json()), "surprise": 1}, strict=True
        )
    with pytest.raises(ValidationError, match="frozen"):
        setattr(payload, next(iter(type(payload).model_fields)), None)


def test_registry_distinguishes_unknown_type_from_unknown_version() -> None:
    assert model_for("billing.charge.post", 1) is PostCharge
    with pytest.raises(UnknownType):
        model_for("billing.charge.refund", 1)
    with pytest.raises(UnknownSchemaVersion):
        model_for("billing.charge.post", 99)
    assert supported_versions("crm.customer.upsert") == [1, 2]
    assert latest_model("crm.customer.upsert").schema_version == 2


@pytest.mark.parametrize(("currency", "exponent"), [("EUR", 2), ("JPY", 0), ("BHD", 3), ("CLF", 4)])
def test_money_requires_the_iso_exponent_of_its_currency(currency: str, exponent: int) -> None:
    assert currency_exponent(currency) == exponent
    assert Money(amount_minor=100, currency=currency, exponent=exponent).exponent == exponent
    wrong = 2 if exponent != 2 else 0
    with pytest.raises(ValidationError, match="exponent does not match"):
        Money(amount_minor=100, currency=currency, exponent=wrong)


def test_money_refuses_unknown_currency_negative_and_fractional_amounts() -> None:
    with pytest.raises(ValidationError):
        Money(amount_minor=100, currency="XXX", exponent=2)
    with pytest.raises(ValidationError):
        Money(amount_minor=-1, currency="EUR", exponent=2)
    with pytest.raises(ValidationError):
        Money.model_validate_json('{"amount_minor": 19.99, "currency": "EUR", "exponent": 2}')
    with pytest.raises(ValidationError):
        Money.model_validate_json(
            '{"amount_minor": "1999", "currency": "EUR", "exponent": 2}', strict=True
        )


def test_currency_table_has_only_iso_shaped_codes() -> None:
    assert all(len(code) == 3 and code.isupper() for code in CURRENCY_EXPONENTS)
    assert len(CURRENCY_EXPONENTS) > 150


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("msisdn", "06641234567"),
        ("msisdn", "+0664123"),
        ("iccid", "8943102000000000007"),
        ("iccid", "1234567890123456789"),
        ("plan_code", "mobile m"),
    ],
)
def test_activation_ids_follow_their_documented_formats(field: str, value: str) -> None:
    fields = sample_fields("provisioning.service.activate")
    with pytest.raises(ValidationError):
        ActivateService.model_validate({**fields, field: value})


def test_charges_and_payments_must_be_positive() -> None:
    with pytest.raises(ValidationError, match="greater than zero"):
        sample("billing.charge.post", amount=Money.of(0, "EUR"))
    with pytest.raises(ValidationError, match="greater than zero"):
        sample("billing.payment.record", amount=Money.of(0, "EUR"))


def test_invoice_period_must_be_ordered() -> None:
    fields = sample_fields("billing.invoice.issue")
    with pytest.raises(ValidationError, match="before period_start"):
        sample(
            "billing.invoice.issue",
            period_start=fields["period_end"],
            period_end=fields["period_start"],
        )


def test_upsert_carries_an_entity_version_others_do_not() -> None:
    upsert = sample("crm.customer.upsert", entity_version=7)
    assert upsert.header_entity_version() == 7
    assert sample("crm.interaction.log").header_entity_version() is None
