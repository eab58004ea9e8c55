"""Money on the wire: integer minor units, an ISO-4217 currency and that currency's exponent.

The exponent is sent explicitly so that a producer who believes JPY has two decimals (and sends
1999 meaning 19.99) is refused as ``invalid_payload`` instead of charging a hundred times too much.
"""

from __future__ import annotations

from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

# ISO 4217 active codes with a minor unit other than 2 (List One, 2024 edition).
_EXPONENT_0 = "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF"
_EXPONENT_3 = "BHD IQD JOD KWD LYD OMR TND"
_EXPONENT_4 = "CLF UYW"
_EXPONENT_2 = (
    "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BOV BRL BSD BTN BWP BYN "
    "BZD CAD CDF CHE CHF CHW CNY COP COU CRC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP "
    "GEL GHS GIP GMD GTQ GYD HKD HNL HTG HUF IDR ILS INR IRR JMD KES KGS KHR KPW KYD KZT LAK LBP "
    "LKR LRD LSL MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MXV MYR MZN NAD NGN NIO NOK NPR "
    "NZD PAB PEN PGK PHP PKR PLN QAR RON RSD RUB SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN "
    "SVC SYP SZL THB TJS TMT TOP TRY TTD TWD TZS UAH USD USN UYU UZS VED VES WST XCD XCG YER ZAR "
    "ZMW ZWG"
)

CURRENCY_EXPONENTS: dict[str, int] = {
    code: exponent
    for exponent, codes in ((0, _EXPONENT_0), (2, _EXPONENT_2), (3, _EXPONENT_3), (4, _EXPONENT_4))
    for code in codes.split()
}

CurrencyCode = Annotated[
    str,
    Field(
        pattern=r"^[A-Z]{3}$",
        description="ISO-4217 alphabetic code of an active currency, e.g. EUR",
        examples=["EUR"],
    ),
]

# 10^15 minor units is beyond any single telecom charge in any currency; it bounds arithmetic.
MAX_MINOR_UNITS = 10**15


def currency_exponent(code: str) -> int:
    """The ISO-4217 minor unit of ``code``.

    Raises:
        ValueError: the code is not an active ISO-4217 currency.
    """
    try:
        return CURRENCY_EXPONENTS[code]
    except KeyError:
        raise ValueError("currency is not an active ISO-4217 code") from None


class Money(BaseModel):
    """An amount in integer minor units of an ISO-4217 currency, with that currency's exponent."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    amount_minor: int = Field(
        ge=0,
        le=MAX_MINOR_UNITS,
        description="Amount in minor units (cents for EUR, yen for JPY, fils/1000 for BHD)",
    )
    currency: CurrencyCode
    exponent: int = Field(
        ge=0,
        le=4,
        description="The currency's ISO-4217 minor unit (EUR 2, JPY 0, BHD 3); must match",
    )

    @model_validator(mode="after")
    def _exponent_matches_currency(self) -> Self:
        if self.exponent != currency_exponent(self.currency):
            raise ValueError("exponent does not match the currency's ISO-4217 minor unit")
        return self

    @classmethod
    def of(cls, amount_minor: int, currency: str) -> Money:
        """Build a Money with the currency's own exponent."""
        return cls(
            amount_minor=amount_minor, currency=currency, exponent=currency_exponent(currency)
        )
