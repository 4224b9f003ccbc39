"""Dollar amounts as people read them in check descriptions and alerts."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal


def usd(value: float | Decimal, signed: bool = False) -> str:
    """Cents, rounded half up, with thousands separators ("1,234.50"), unless the amount is under a cent:
    then to its first significant digits ("0.0008", not "0.00", so a day of small amounts still says what
    it compared)."""
    amount = Decimal(str(value))
    sign = "+" if signed else ""
    if amount == 0 or abs(amount) >= Decimal("0.01"):
        return f"{amount.quantize(Decimal('0.01'), ROUND_HALF_UP):{sign},.2f}"
    places = Decimal(1).scaleb(amount.adjusted() - 1)  # two significant digits
    return f"{amount.quantize(places, ROUND_HALF_UP):{sign}f}".rstrip("0")
