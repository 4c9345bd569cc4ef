"""Kubernetes resource quantities ("500m", "2Gi", "1e3") as exact decimals, for resourceFieldRef."""

from __future__ import annotations

import math
from decimal import Decimal, InvalidOperation

_SUFFIXES = {
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
    "Ei": Decimal(2) ** 60,
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
}


def parse_quantity(text: str | int | float) -> Decimal:
    """The value of a quantity; ValueError names the bad text."""
    stripped = str(text).strip()
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if stripped.endswith(suffix) and stripped[: -len(suffix)]:
            number, factor = stripped[: -len(suffix)], _SUFFIXES[suffix]
            break
    else:
        number, factor = stripped, Decimal(1)
    try:
        return Decimal(number) * factor
    except InvalidOperation:
        raise ValueError(f"invalid quantity {text!r}") from None


def resource_field_value(value: Decimal, divisor: str | None, resource: str) -> str:
    """What resourceFieldRef exposes: value/divisor rounded up (the kubelet rounds cpu and memory up)."""
    divisor_value = parse_quantity(divisor) if divisor else Decimal(1)
    if divisor_value == 0:
        raise ValueError(f"resourceFieldRef {resource}: divisor must not be zero")
    return str(math.ceil(value / divisor_value))
