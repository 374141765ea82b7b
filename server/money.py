"""Currencies and amounts: ISO 4217 minor-unit exponents from the `iso4217` package.

Amounts are int64 minor units everywhere. They are capped at MAX_AMOUNT_MINOR so
that sums computed by the Redis Functions (Lua numbers are doubles, exact to
2^53) stay exact.
"""

from __future__ import annotations

from iso4217 import Currency

MAX_AMOUNT_MINOR = 10**15

# Currencies that have a minor unit; ISO 4217 codes without one (gold, SDR,
# testing codes) are not transaction currencies.
CURRENCY_EXPONENTS: dict[str, int] = {
    c.code: c.exponent for c in Currency if c.exponent is not None
}


def format_minor(amount_minor: int, currency: str) -> str:
    """Render minor units in major units with the currency's own decimals: 12345 JPY
    -> '12345 JPY', 12345 USD -> '123.45 USD', 12345 BHD -> '12.345 BHD'."""
    exponent = CURRENCY_EXPONENTS[currency]
    sign = "-" if amount_minor < 0 else ""
    whole, frac = divmod(abs(amount_minor), 10**exponent)
    if exponent == 0:
        return f"{sign}{whole} {currency}"
    return f"{sign}{whole}.{frac:0{exponent}d} {currency}"
