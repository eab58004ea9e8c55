"""Shared field formats: identifiers as they travel on the wire (docs/wire-format.md)."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field, StringConstraints

Msisdn = Annotated[
    str,
    StringConstraints(pattern=r"^\+[1-9][0-9]{6,14}$"),
    Field(description="Subscriber number in E.164: '+', country code, 7-15 digits in all"),
]


def _luhn_sum(digits: str) -> int:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total


def luhn_check_digit(body: str) -> str:
    """The Luhn check digit that completes ``body`` (digits only)."""
    return str((10 - _luhn_sum(body + "0") % 10) % 10)


def _luhn_ok(digits: str) -> str:
    if _luhn_sum(digits) % 10 != 0:
        raise ValueError("ICCID check digit (Luhn) does not match")
    return digits


Iccid = Annotated[
    str,
    StringConstraints(pattern=r"^89[0-9]{17,18}$"),
    AfterValidator(_luhn_ok),
    Field(description="SIM card ICCID (ITU-T E.118): 19-20 digits starting 89, Luhn check digit"),
]

BusinessReference = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$"),
    Field(description="An upstream system's own unique reference (1-128 of A-Z a-z 0-9 . _ : / -)"),
]

PlanCode = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Z0-9][A-Z0-9_-]{1,31}$"),
    Field(description="Tariff plan code from the product catalogue, e.g. MOBILE_M"),
]

ShortText = Annotated[str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True)]
LongText = Annotated[str, StringConstraints(min_length=1, max_length=2000)]

CountryCode = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Z]{2}$"),
    Field(description="ISO 3166-1 alpha-2 country code, e.g. AT"),
]

EntityVersion = Annotated[
    int,
    Field(
        ge=1,
        le=2**53 - 1,
        description="Monotonic version of the entity at the source; older than stored = stale",
    ),
]

EmailAddress = Annotated[
    str,
    StringConstraints(pattern=r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$", max_length=254),
    Field(description="E-mail address (syntax checked loosely; CRM verifies it)"),
]
